"""The VM's network is the egress proxy and nothing else (launch and build).

An upstream HTTP server listens on the host's 127.0.0.1. Without restrict=on a
guest would reach it directly at 10.0.2.2 (QEMU's user network maps that to the
host's loopback); with it, only the guestfwd to the launch's proxy leads out,
and the proxy decides by name (the test's resolver maps the names).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from image import config
from image.build import pipeline
from image.egress import guestnet, proxy
from image.runtime import snapshot
from tests.fixtures.httpserver import FileServer

ALLOWED = "upstream.sandbox-image.test"
DENIED = "elsewhere.sandbox-image.test"


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[FileServer]:
    root = tmp_path / "upstream"
    root.mkdir()
    for name in ("vm", "sandbox", "no"):
        (root / name).write_text(f"upstream served /{name}")
    with FileServer(root) as server:
        yield server


def _fetch(url: str) -> str:
    """A guest-side Python one-liner: print the status and body, or the error."""
    code = (
        "import urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen({url!r}, timeout=20)\n"
        "    print(r.status, r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.headers.get('X-Proxy-Error'))\n"
    )
    return f"python3 -c {shlex.quote(code)}"


def test_launch_reaches_the_network_only_through_its_proxy(
    built: dict[str, Path], vm_config: config.BuildConfig, upstream: FileServer, tmp_path: Path
) -> None:
    port = int(urlsplit(upstream.base_url).port or 0)
    policy_file = tmp_path / "test.policy"
    policy_file.write_text(f"allow {ALLOWED}\nallow-address 127.0.0.1/32\nallow-port {port}\n")
    audit = tmp_path / "audit.jsonl"
    options = snapshot.LaunchOptions(policy=guestnet.PolicyChoice(policy_file), audit_log=audit)
    resolver = proxy.mapping_resolver({ALLOWED: ["127.0.0.1"], DENIED: ["127.0.0.1"]})
    with snapshot.launch(built["snapshot"], vm_config, options, resolver=resolver) as sandbox:
        # Direct: 10.0.2.2 is the host's loopback, where the upstream listens.
        direct = sandbox.exec(["python3", "-c", (
            "import socket\n"
            f"for target in [('10.0.2.2', {port}), ('10.0.2.100', 22), ('1.1.1.1', 80)]:\n"
            "    try:\n"
            "        socket.create_connection(target, timeout=5).close(); print('connected')\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__)\n")], timeout=120)  # fmt: skip
        outcomes = direct.stdout.decode().split()
        assert len(outcomes) == 3 and "connected" not in outcomes, outcomes
        # The VM's own processes: /etc/environment names the forwarded proxy.
        env_fetch = f"set -a; . /etc/environment; set +a; {_fetch(f'http://{ALLOWED}:{port}/vm')}"
        vm_level = sandbox.exec(["/bin/sh", "-c", env_fetch], timeout=120)
        assert vm_level.stdout.decode().strip() == "200 upstream served /vm", vm_level.stderr
        # The sandboxed agent: its bridge on 127.0.0.1:3128 -> 10.0.2.100:3128 -> host.
        inside = sandbox.sandboxed(["/bin/sh", "-c", _fetch(f"http://{ALLOWED}:{port}/sandbox")])
        assert inside.stdout.decode().strip() == "200 upstream served /sandbox", inside.stderr
        refused = sandbox.sandboxed(["/bin/sh", "-c", _fetch(f"http://{DENIED}:{port}/no")])
        assert refused.stdout.decode().strip() == "403 blocked-by-allowlist", refused.stderr
    # Nothing arrived any other way.
    assert [r.path for r in upstream.state.requests] == ["/vm", "/sandbox"]
    every = [json.loads(line) for line in audit.read_text().splitlines()]
    records = [r for r in every if r["event"] == "open"]
    assert [(r["client"], r["host"], r["port"], r["decision"]) for r in records] == [
        ("guest", ALLOWED, port, "allow"),
        ("guest", ALLOWED, port, "allow"),
        ("guest", DENIED, port, "deny"),
    ]
    assert all(r["address"] == "127.0.0.1" for r in records[:2])


def test_the_build_downloaded_only_through_its_proxy(built: dict[str, Path]) -> None:
    out = built["image"].parent
    log = out / pipeline.EGRESS_LOG
    assert f" *{pipeline.EGRESS_LOG}" in (out / "SHA256SUMS").read_text()
    every = [json.loads(line) for line in log.read_text().splitlines()]
    records = [r for r in every if r["event"] == "open"]
    closes = {r["id"]: r for r in every if r["event"] == "close"}
    # apt fetched the stand-in's packages from Debian's archive, by name, via the proxy.
    assert any(r["host"] == "deb.debian.org" and r["decision"] == "allow" for r in records)
    # ... and every download was answered 200 (the close record says what the guest got).
    assert {closes[r["id"]]["status"] for r in records if r["decision"] == "allow"} == {200}
    assert {r["client"] for r in records} == {"guest"}
    # Besides downloads: the launcher's self-test checks that its bridge listens by
    # connecting and closing at once, which the proxy logs as an empty request.
    others = [r for r in records if r["decision"] != "allow"]
    assert all(
        r["rule"] == "incomplete-request" and closes[r["id"]]["bytes_up"] == 0 for r in others
    ), others
    info = json.loads(built["build_info"].read_text())
    assert info["egress"]["denied"] == []
    assert info["egress"]["connections"]["allow"] == len(records) - len(others)
    assert info["egress_policy"]["file"].endswith("proxy-policies/build.policy")
