"""./inv render and ./inv seed render what build-image renders: one builder of inputs."""

from __future__ import annotations

import dataclasses

from image import config
from image.build import cloudinit, inputs
from image.egress import guestnet
from image.sandbox import guestfiles
from image.vm import ssh


def test_render_inputs_are_a_builds_but_for_the_per_build_keys() -> None:
    cfg = config.resolve({"arch": "amd64", "profile": "smoke"}, {}, {}).config
    rendered = inputs.render_inputs(cfg, "debian", None, "sandbox", None, None, None, None, None)
    built = inputs.build_inputs(cfg, "debian", host_key=ssh.KeyPair.generate("host@x"))
    assert rendered.guest_files == guestfiles.guest_files("amd64")
    assert rendered.apt_proxy == guestnet.GUEST_HTTP_PROXY
    assert rendered.ssh_host_ed25519 is not None
    assert dataclasses.replace(rendered, ssh_host_ed25519=None) == dataclasses.replace(
        built, ssh_host_ed25519=None
    )
    # The launcher is written by the "config" stage (and by a standalone seed).
    config_stage = cloudinit.render_stages(rendered)[-1]
    assert guestfiles.LAUNCHER in config_stage.script.decode()
    assert config_stage.script in cloudinit.render(rendered, standalone=True).values()
