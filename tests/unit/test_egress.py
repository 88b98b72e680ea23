from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from image.egress import guestnet, proxy
from image.errors import ImageError
from image.vm import qemu


def test_guest_forwards_go_to_the_proxy_sockets_through_socat(tmp_path: Path) -> None:
    assert guestnet.guest_forwards(tmp_path) == (
        ("10.0.2.100:3128", f"cmd:socat - UNIX-CONNECT:{tmp_path}/http.sock"),
        ("10.0.2.100:1080", f"cmd:socat - UNIX-CONNECT:{tmp_path}/socks.sock"),
    )


@pytest.mark.parametrize("name", ["a,b", "a b"])
def test_a_socket_dir_qemu_would_misparse_is_refused(tmp_path: Path, name: str) -> None:
    # A comma would end the guestfwd option and start another one.
    with pytest.raises(ImageError, match="comma or a space") as err:
        guestnet.guest_forwards(tmp_path / name)
    assert err.value.hint and "TMPDIR" in err.value.hint


def test_a_socket_path_too_long_for_af_unix_is_refused() -> None:
    with pytest.raises(ImageError, match="longer than a Unix socket path") as err:
        guestnet.guest_forwards(Path("/tmp/" + "d" * 100))
    assert err.value.hint and "TMPDIR" in err.value.hint


def test_socket_dir_is_short_private_and_found_again_in_the_rules() -> None:
    directory = guestnet.make_socket_dir()
    try:
        assert directory.stat().st_mode & 0o777 == 0o700
        assert all(
            len(str(p)) <= guestnet.SOCKET_PATH_MAX for p in guestnet.socket_paths(directory)
        )
        rules = (*guestnet.guest_forwards(directory), ("10.0.2.100:9", "tcp:127.0.0.1:9"))
        assert guestnet.forwarded_sockets(rules) == list(guestnet.socket_paths(directory))
    finally:
        directory.rmdir()


def test_the_guest_is_told_the_forwarded_addresses() -> None:
    env = guestnet.guest_environment()
    assert "http_proxy=http://10.0.2.100:3128" in env
    assert "ALL_PROXY=socks5h://10.0.2.100:1080" in env
    assert "no_proxy=localhost,127.0.0.1,::1" in env


def test_shipped_policies_load_and_allow_the_package_registries() -> None:
    for choice in (guestnet.DEFAULT_BUILD, guestnet.DEFAULT_LAUNCH):
        policy = choice.load()
        for name in ("deb.debian.org", "pypi.org", "files.pythonhosted.org", "registry.npmjs.org"):
            assert proxy.check_name(policy, name, 443).allowed, (choice.file, name)
        assert not proxy.check_name(policy, "example.com", 443).allowed
    build = guestnet.DEFAULT_BUILD.load()
    for name in ("snapshot.ubuntu.com", "deb.nodesource.com"):
        assert proxy.check_name(build, name, 443).allowed, name


def test_command_line_additions_extend_the_file(tmp_path: Path) -> None:
    policy_file = tmp_path / "p.policy"
    policy_file.write_text("allow example.com\n")
    choice = guestnet.PolicyChoice(
        policy_file, allow=("*.corp.test",), deny=("bad.corp.test",),
        allow_addresses=("192.0.2.0/24",), allow_ports=("8443",),
    )  # fmt: skip
    policy = choice.load()
    assert proxy.check_name(policy, "x.corp.test", 8443).allowed
    assert not proxy.check_name(policy, "bad.corp.test", 443).allowed
    with pytest.raises(ImageError, match="--allow-port"):
        guestnet.PolicyChoice(policy_file, allow_ports=("https",)).load()


def test_summary_counts_decisions_and_lists_denials_once(tmp_path: Path) -> None:
    log = tmp_path / "egress.jsonl"
    records: list[dict[str, Any]] = [
        {"decision": "allow", "host": "deb.debian.org", "port": 80},
        {"decision": "deny", "host": "evil.test", "port": 443, "rule": "not-allowed"},
        {"decision": "deny", "host": "evil.test", "port": 443, "rule": "not-allowed"},
        {"decision": "allow", "host": "deb.debian.org", "port": 80},
        {"decision": "error", "host": None, "port": None},
    ]
    records = [{"event": "open", **r} for r in records]
    # Close records repeat the connection's fields; the decision was counted at open.
    records += [{**r, "event": "close", "rule": None} for r in records]
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"decision": "al')
    summary = guestnet.summarize(log)
    assert summary.connections == {"allow": 2, "deny": 2, "error": 1}
    assert summary.hosts == ["deb.debian.org:80"]
    assert summary.denied == ["evil.test:443 (not-allowed)"]
    assert guestnet.summarize(tmp_path / "missing").connections == {}


def test_build_vm_network_is_restricted_to_the_proxy(tmp_path: Path) -> None:
    spec = qemu.VMSpec(
        arch="amd64", cpus=2, memory=1 << 30, disk=tmp_path / "d", firmware_code=tmp_path / "c",
        firmware_vars=tmp_path / "v", accel=("-accel", "tcg"), serial_log=tmp_path / "s",
        qmp_socket=tmp_path / "q", ssh_port=2222, net_restrict=True,
        guestfwd=guestnet.guest_forwards(tmp_path),
    )  # fmt: skip
    assert qemu.netdev_arg(spec) == (
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,"
        f"guestfwd=tcp:10.0.2.100:3128-cmd:socat - UNIX-CONNECT:{tmp_path}/http.sock,"
        f"guestfwd=tcp:10.0.2.100:1080-cmd:socat - UNIX-CONNECT:{tmp_path}/socks.sock"
    )


def test_source_urls_add_exactly_their_hosts_and_ports(tmp_path: Path) -> None:
    choice = guestnet.with_urls(guestnet.DEFAULT_BUILD, [
        "http://127.0.0.1:38519/nodesource/node_22.x",
        "http://127.0.0.1:38519/nodesource/gpgkey/nodesource-repo.gpg.key",
        "https://apt.corp.test/repo", "http://[::1]:8080/x",
    ])  # fmt: skip
    assert choice.allow[-1:] == ("apt.corp.test",)
    assert choice.allow_addresses == ("127.0.0.1/32", "::1/128")
    assert choice.allow_ports == ("38519", "8080")
    policy = choice.load()
    assert proxy.decide(policy, "127.0.0.1", 38519, []).allowed
    assert not proxy.decide(policy, "127.0.0.2", 38519, []).allowed
    assert proxy.check_name(policy, "apt.corp.test", 443).allowed
