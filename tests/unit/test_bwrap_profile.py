"""bwrap profiles: typed options render exact argv; the shipped profile is valid."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

from image.errors import ImageError
from image.guest import bwrap_profile, sandbox_exec, sandbox_inner
from image.guest.bwrap_profile import Bind, Bridge, CapDrop, Flag, Mount, ProfileError, Symlink
from image.sandbox import bwrap

# Every option bubblewrap 0.6.1 (Ubuntu 22.04) accepts that a profile or the launcher uses.
BWRAP_061_OPTIONS = {
    "--unshare-all",
    "--unshare-user",
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-net",
    "--unshare-uts",
    "--unshare-cgroup",
    "--die-with-parent",
    "--new-session",
    "--cap-drop",
    "--bind",
    "--ro-bind",
    "--dev-bind",
    "--bind-try",
    "--ro-bind-try",
    "--dev-bind-try",
    "--symlink",
    "--tmpfs",
    "--proc",
    "--dev",
    "--dir",
    "--remount-ro",
    "--hostname",
    "--clearenv",
    "--setenv",
    "--chdir",
    "--seccomp",
}


def _minimal(**more: Any) -> dict[str, Any]:
    return {"options": ["unshare-all", {"type": "tmpfs", "dest": "/tmp"}], **more}


def test_each_option_renders_its_own_arguments() -> None:
    assert Flag("unshare-all").to_args() == ["--unshare-all"]
    assert CapDrop("ALL").to_args() == ["--cap-drop", "ALL"]
    assert Bind("ro-bind-try", "/opt", "/opt").to_args() == ["--ro-bind-try", "/opt", "/opt"]
    assert Symlink("usr/bin", "/bin").to_args() == ["--symlink", "usr/bin", "/bin"]
    assert Mount("proc", "/proc").to_args() == ["--proc", "/proc"]


def test_bridge_targets_map_to_socat_addresses() -> None:
    assert Bridge("http", 3128, "tcp:10.0.2.2:3128").outside_address() == "TCP:10.0.2.2:3128"
    assert Bridge("h", 1, "tcp:[fd00::2]:3128").outside_address() == "TCP6:[fd00::2]:3128"
    assert (
        Bridge("h", 1, "unix:/run/proxy.sock").outside_address() == "UNIX-CONNECT:/run/proxy.sock"
    )


def test_shipped_agent_profile_loads_and_round_trips_through_its_json_form() -> None:
    profile = bwrap.load(bwrap.shipped()["agent"])
    again = bwrap_profile.load_document("agent", profile.to_document())
    assert again == profile
    assert profile.seccomp_bwrap == ("agent",)
    assert profile.seccomp_launcher == ("unix-block",)
    assert [(b.name, b.port) for b in profile.bridges] == [("http", 3128), ("socks", 1080)]
    assert profile.options[:4] == (
        Flag("unshare-all"),
        Flag("die-with-parent"),
        Flag("new-session"),
        CapDrop("ALL"),
    )


def test_shipped_profile_json_is_deterministic() -> None:
    assert bwrap.compile_named("agent") == bwrap.compile_named("agent")


def test_launcher_argv_for_the_agent_profile_uses_only_bwrap_061_options() -> None:
    profile = bwrap.load(bwrap.shipped()["agent"])
    argv = sandbox_exec.bwrap_argv(
        profile,
        bwrap="bwrap",
        workspace=Path("/w"),
        launcher_dir=Path("/l"),
        session_dir=Path("/s"),
        seccomp_fd=5,
        inner=[],
        cmd=["true"],
        environ={},
    )
    options = {a for a in argv[: argv.index("--")] if a.startswith("--")}
    assert options <= BWRAP_061_OPTIONS


def test_bwrap_argv_is_exact() -> None:
    profile = bwrap_profile.load_document(
        "t",
        _minimal(
            env={"PATH": "/usr/bin"},
            pass_env=["TERM", "ABSENT"],
            hostname="box",
            bridges=[{"name": "http", "port": 3128, "connect": "tcp:10.0.2.2:3128"}],
            seccomp={"bwrap": ["agent"], "launcher": ["unix-block"]},
        ),
    )
    argv = sandbox_exec.bwrap_argv(
        profile,
        bwrap="/usr/bin/bwrap",
        workspace=Path("/home/me/ws"),
        launcher_dir=Path("/opt/launcher"),
        session_dir=Path("/tmp/sandbox-exec.x"),
        seccomp_fd=7,
        inner=["--bridge", "3128:/x.sock"],
        cmd=["sh", "-c", "echo hi"],
        environ={"TERM": "xterm", "SECRET": "s3cr3t"},
    )
    assert argv == [
        "/usr/bin/bwrap",
        "--unshare-all",
        "--tmpfs",
        "/tmp",
        "--hostname",
        "box",
        "--clearenv",
        "--setenv",
        "HOME",
        "/home/sandbox",
        "--setenv",
        "PATH",
        "/usr/bin",
        "--setenv",
        "TERM",
        "xterm",
        "--bind",
        "/home/me/ws",
        "/workspace",
        "--chdir",
        "/workspace",
        "--ro-bind",
        "/opt/launcher",
        "/run/sandbox-exec",
        "--ro-bind",
        "/tmp/sandbox-exec.x",
        "/run/sandbox-bridge",
        "--seccomp",
        "7",
        "--",
        "/usr/bin/python3",
        "-I",
        "-S",
        "/run/sandbox-exec/sandbox_inner.py",
        "--bridge",
        "3128:/x.sock",
        "--",
        "sh",
        "-c",
        "echo hi",
    ]
    assert "s3cr3t" not in argv


def test_inner_args_name_the_bound_sockets_and_carry_the_second_filter() -> None:
    profile = bwrap_profile.load_document(
        "t", _minimal(bridges=[{"name": "http", "port": 3128, "connect": "tcp:10.0.2.2:3128"}])
    )
    bpf = b"\x06\x00\x00\x00\x00\x00\xff\x7f"
    args = sandbox_exec.inner_args(profile, [bpf])
    assert args == [
        "--bridge", "3128:/run/sandbox-bridge/http.sock", "--filter", "060000000000ff7f",
    ]  # fmt: skip
    # and the inner stage reads back exactly that, the command untouched
    parsed = sandbox_inner.parse_args([*args, "--", "sh", "-c", "--filter x"])
    assert parsed.bridges == [(3128, "/run/sandbox-bridge/http.sock")]
    assert parsed.filters == [bpf]
    assert parsed.ready_fd is None
    assert parsed.cmd == ["sh", "-c", "--filter x"]
    ready = sandbox_exec.inner_args(profile, [], ready_fd=9)
    assert ready[-2:] == ["--ready-fd", "9"]
    assert sandbox_inner.parse_args([*ready, "--", "true"]).ready_fd == 9
    standby = sandbox_exec.inner_args(profile, [], ready_fd=9, claim_fd=3)
    assert standby[-2:] == ["--claim-fd", "3"]
    parsed = sandbox_inner.parse_args([*standby, "--"])  # its command comes later
    assert (parsed.claim_fd, parsed.cmd) == (3, [])


def test_a_standby_is_claimed_with_what_bwrap_would_have_set() -> None:
    profile = bwrap_profile.load_document("t", _minimal())
    argv = ["sh", "-c", "echo $1", "", "a b=c"]
    data = sandbox_exec.standby_command(profile, argv, {"TERM": "xterm", "SECRET": "x"})
    cwd, back, env = sandbox_inner.decode_command(data)
    assert (cwd, back) == (profile.workspace, argv)
    assert sorted(env.items()) == sandbox_exec.sandbox_env(profile, {"TERM": "xterm"})


@pytest.mark.parametrize(
    "data",
    [b"", b"/workspace", b"/workspace\x000", b"/workspace\x002\x00true",
     b"workspace\x001\x00true", b"/workspace\x001\x00true\x00NOVALUE",
     b"/workspace\x001\x00true\x00=x", b"/workspace\x00x\x00true"],
)  # fmt: skip
def test_a_malformed_claim_is_the_inner_stages_error(data: bytes) -> None:
    with pytest.raises(sandbox_inner.LauncherError, match="malformed command"):
        sandbox_inner.decode_command(data)


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--bridge", "http:/x.sock", "--", "true"], "bad argument --bridge 'http:/x.sock'"),
        (["--filter", "zz", "--", "true"], "bad argument --filter 'zz'"),
        (["--config", "{}", "--", "true"], "bad argument --config"),
        (["--ready-fd", "x", "--", "true"], "bad argument --ready-fd 'x'"),
        (["--ready-fd", "3", "--ready-fd", "4", "--", "true"], "bad argument --ready-fd '4'"),
        (["--filter", "00"], "no command given"),
        (["--"], "no command given"),
        (["--claim-fd", "3", "--", "true"], "a standby (--claim-fd) takes its command later"),
    ],
)
def test_the_inner_stage_refuses_arguments_it_did_not_get_from_the_launcher(
    argv: list[str], problem: str
) -> None:
    with pytest.raises(sandbox_inner.LauncherError, match=re.escape(problem)):
        sandbox_inner.parse_args(argv)


def test_a_unix_socket_counts_as_listening_from_listen_not_from_bind(tmp_path: Path) -> None:
    path = str(tmp_path / "b.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)  # the file exists from here on
        assert Path(path).exists()
        assert sandbox_exec.unix_listening({path}) == set()
        server.listen()
        assert sandbox_exec.unix_listening({path, str(tmp_path / "other.sock")}) == {path}


def test_bridge_argv_on_both_sides() -> None:
    bridge = Bridge("socks", 1080, "tcp:10.0.2.2:1080")
    assert sandbox_exec.outer_bridge_argv("socat", bridge, Path("/tmp/s")) == [
        "socat",
        "UNIX-LISTEN:/tmp/s/socks.sock,fork,unlink-early",
        "TCP:10.0.2.2:1080",
    ]
    assert sandbox_inner.bridge_argv("socat", 1080, "/run/sandbox-bridge/socks.sock") == [
        "socat",
        "TCP-LISTEN:1080,bind=127.0.0.1,reuseaddr,fork",
        "UNIX-CONNECT:/run/sandbox-bridge/socks.sock",
    ]


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (_minimal(options=["disable-userns"]), "unknown option 'disable-userns' (bubblewrap 0.6.1"),
        (
            _minimal(options=[{"type": "ro-bind", "src": "usr", "dest": "/usr"}]),
            "options[0]: 'usr' is not an absolute path",
        ),
        (
            _minimal(options=[{"type": "tmpfs", "dest": "/tmp", "size": 1}]),
            "options[0] (tmpfs): expects keys ['dest']",
        ),
        (_minimal(options=[]), "options must be a non-empty list"),
        (
            _minimal(bridges=[{"name": "h", "port": 3128, "connect": "http://proxy"}]),
            "bridges[0]: connect 'http://proxy' is not tcp:HOST:PORT",
        ),
        (
            _minimal(
                bridges=[
                    {"name": "a", "port": 1, "connect": "tcp:h:1"},
                    {"name": "b", "port": 1, "connect": "tcp:h:1"},
                ]
            ),
            "bridge names and ports must be unique",
        ),
        (_minimal(seccomp={"bwrap": ["a", "b"]}), "seccomp.bwrap takes at most one filter"),
        (_minimal(env={"BAD-NAME": "x"}), "env must map NAME to a string"),
        (_minimal(hostname="Not_A_Host"), "bad hostname"),
        (_minimal(format=2), "format 2 is not 1"),
        (_minimal(extra=1), "unknown keys ['extra']"),
    ],
)
def test_bad_profiles_name_the_profile_and_the_entry(
    document: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ProfileError) as caught:
        bwrap_profile.load_document("broken", document)
    assert str(caught.value).startswith("bwrap profile 'broken'")
    assert problem in str(caught.value)


def test_yaml_source_errors_carry_a_hint(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("options: [unshare-everything]\n")
    with pytest.raises(ImageError) as caught:
        bwrap.load(bad)
    assert "unknown option 'unshare-everything'" in caught.value.message
    assert caught.value.hint == f"fix {bad}"
