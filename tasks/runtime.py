"""Using an image: snapshot it, run the egress proxy, launch, the demo, the resume bench."""

from __future__ import annotations

import dataclasses
import logging
import sys

from invoke.context import Context
from invoke.exceptions import Exit

from image import console, run
from image.errors import ImageError
from tasks._common import (
    CONFIG_HELP,
    EGRESS_HELP,
    ROOT,
    _config,
    _count,
    _debug,
    _out_path,
    _policy_choice,
    _port,
    _remainder,
    _seconds,
    _user_errors,
    _user_path,
    task,
)

# What snapshot() reads of the config; nothing a build alone needs can fail it.
SNAPSHOT_FIELDS = ("cpus", "memory", "arch", "accel", "cache_dir", "boot_timeout")


@task(
    positional=["image"],
    help={
        "image": "the built image (qcow2) to snapshot",
        "out": "the snapshot directory to create (must not exist)",
        "cpus": CONFIG_HELP["cpus"],
        "memory": CONFIG_HELP["memory"],
        "arch": CONFIG_HELP["arch"],
        "accel": CONFIG_HELP["accel"],
        "cache_dir": CONFIG_HELP["cache_dir"],
        "timeout": "seconds until the guest must be ready",
        "exec_transport": "how launches reach the exec agent: auto (vsock where this host "
        "has /dev/vhost-vsock, else virtio-serial), vsock or virtio-serial",
        "json": CONFIG_HELP["json"],
    },
)
def snapshot(
    c: Context, image: str, out: str | None = None, cpus: str | None = None,
    memory: str | None = None,
    arch: str | None = None, accel: str | None = None, cache_dir: str | None = None,
    timeout: str | None = None, exec_transport: str = "auto", json: bool = False,
) -> None:  # fmt: skip
    """Boot a built image in the runtime shape until ready, and save the VM."""
    from image.runtime import snapshot as snap

    with _user_errors():
        resolved = _config(c, only=SNAPSHOT_FIELDS, cpus=cpus, memory=memory, arch=arch,
                           accel=accel, cache_dir=cache_dir)  # fmt: skip
        seconds = _seconds(timeout, "--timeout") if timeout is not None else None
        image_path = _user_path(image)
        if not out:
            raise ImageError("snapshot needs --out DIR (a directory that does not exist yet)",
                             hint=f"./inv snapshot {image} --out snap/")  # fmt: skip
        target = _out_path(out, "--out", directory=True)
        # The image's own build output says its architecture; checked before any boot.
        built_for = snap.image_arch(image_path, resolved.config.arch,
                                    explicit=resolved.sources["arch"] != "default")  # fmt: skip
        cfg = dataclasses.replace(resolved.config, arch=built_for)
        path, meta = snap.snapshot(cfg, image_path, target, timeout=seconds,
                                   transport=exec_transport)  # fmt: skip
        console.log.info("snapshot: %s", snap.format_meta(meta))
        if json:
            console.print_json({"snapshot": str(path), **meta.__dict__})
        else:
            print(path)


@task(
    iterable=["allow", "deny", "allow_address", "allow_port"],
    help={
        "policy": "policy file (see proxy-policies/build.policy); flags add to it",
        "allow": "allow this name or *.suffix (repeatable)",
        "deny": "deny this name or *.suffix, checked before allow (repeatable)",
        "allow_address": "allow this address or CIDR, literal or resolved (repeatable)",
        "allow_port": "allow this port besides 80 and 443 (repeatable)",
        "http_port": "HTTP proxy port on 127.0.0.1 (0: any free port)",
        "socks_port": "SOCKS5 proxy port on 127.0.0.1 (0: any free port)",
        "audit_log": "append the JSON-lines audit log here (default: stderr)",
        "upstream_proxy": EGRESS_HELP["upstream_proxy"],
    },
)
def proxy(
    c: Context, policy: str | None = None, allow: list[str] | None = None,
    deny: list[str] | None = None, allow_address: list[str] | None = None,
    allow_port: list[str] | None = None, http_port: str = "3128", socks_port: str = "1080",
    audit_log: str | None = None, upstream_proxy: str | None = None,
) -> None:  # fmt: skip
    """Run the egress proxy (HTTP + SOCKS5) with a domain allowlist until SIGTERM/Ctrl-C."""
    from image.egress import proxy as egress
    from image.source import mirror as local_mirror

    with _user_errors():
        rules = egress.load_policy(_user_path(policy)) if policy else egress.Policy()
        rules = rules.extended(
            allow or (), deny or (), allow_address or (), allow_port or (), upstream_proxy
        )
        with egress.serve_proxy(
            rules, _port(http_port, "--http-port"), _port(socks_port, "--socks-port"),
            _out_path(audit_log, "--audit-log", directory=False) if audit_log else None,
            audit_stream=None if audit_log else sys.stderr,
        ) as served:  # fmt: skip
            print(f"http {served.http_url.removeprefix('http://')}", flush=True)
            print(f"socks5 {served.socks_url.removeprefix('socks5h://')}", flush=True)
            local_mirror.wait_for_stop_signal()


@task(
    iterable=["allow", "deny", "allow_address", "allow_port"],
    help={
        "snapshot": "the snapshot directory (from ./inv snapshot)",
        "share": "HOSTDIR[:ro] to mount at /mnt/share in the guest",
        "session_disk": "size of this launch's session disk at /sessions (default 10G)",
        "hostname": "the launch's host name (default: sandbox-<random>)",
        "timeout": "seconds the command may run",
        "cache_dir": CONFIG_HELP["cache_dir"],
        "json": "print timings and the exit status as JSON (last line)",
        "shell": "an interactive shell in the sandbox on this terminal (with -- CMD: CMD on it)",
        "verbose": "the launch's own progress on stderr (without: only the command's output)",
        **EGRESS_HELP,
    },
)
def launch(
    c: Context, snapshot: str, share: str | None = None, session_disk: str = "10G",
    hostname: str | None = None, timeout: str = "3600", cache_dir: str | None = None,
    json: bool = False, policy: str | None = None, allow: list[str] | None = None,
    deny: list[str] | None = None, allow_address: list[str] | None = None,
    allow_port: list[str] | None = None, audit_log: str | None = None,
    upstream_proxy: str | None = None, shell: bool = False, verbose: bool = False,
) -> None:  # fmt: skip
    """Resume a sandbox VM from a snapshot; with -- CMD, run it sandboxed as the agent user.

    The VM's only network is the egress proxy this launch runs (default policy:
    proxy-policies/launch.policy); every connection is logged to --audit-log.
    Only the command's output is printed (its progress too with --verbose).
    """
    from image.egress import guestnet
    from image.runtime import launchcli
    from image.runtime import snapshot as snap

    with _user_errors():
        if not (verbose or _debug()):  # an agent harness reads the command's output only
            logging.getLogger("image").setLevel(logging.WARNING)
        cfg = _config(c, only=("cache_dir",), cache_dir=cache_dir).config
        choice = _policy_choice(
            policy, guestnet.LAUNCH_POLICY, allow, deny, allow_address, allow_port, upstream_proxy
        )
        if share:  # HOSTDIR[:ro|:rw], HOSTDIR relative to where ./inv was run
            folder, suffix = share, ""
            if share.endswith((":ro", ":rw")):
                folder, suffix = share[:-3], share[-3:]
            share = f"{_user_path(folder)}{suffix}"
        options = snap.parse_launch_options(
            share,
            session_disk,
            hostname,
            _remainder(c),
            _seconds(timeout, "--timeout"),
            choice,
            audit_log,
        )
        code = launchcli.launch_and_run(
            _user_path(snapshot), cfg, options, json_result=json, shell=shell
        )
    raise Exit(code=code)


@task(
    help={
        "arch": "stand-in architecture (default amd64: fast under TCG)",
        "out": "where the demo's outputs go (default: out/demo)",
        "json": "print each step's seconds and the output paths as JSON (last line)",
    }
)
def demo(c: Context, arch: str = "amd64", out: str | None = None, json: bool = False) -> None:
    """The whole pipeline, offline: stand-in -> mirror -> build-image -> snapshot -> launch."""
    from image.runtime import demo as demo_module

    with _user_errors():
        where = _out_path(out or "out/demo", "--out", directory=True)
        cfg = _config(c, arch=arch, profile="smoke", output_dir=str(where)).config
        result = demo_module.run_demo(cfg)
        console.print_summary("demo", result["timings"])
        if json:
            console.print_json(result)


@task(
    name="bench-resume",
    help={
        "image": "a built image (default: the demo's; built through ./inv demo if missing)",
        "runs": "cold boots and resumes to measure (each at least 3)",
    },
)
def bench_resume(c: Context, image: str | None = None, runs: str = "3") -> None:
    """Measure cold boot vs a launch (first byte, end), streaming, RAM size, PSS, tb-size,
    8 launches at once, and a plain migrate beside ours."""
    from image.runtime import demo as demo_module

    with _user_errors():
        count = _count(runs, "--runs")
        path = (
            _user_path(image)
            if image
            else ROOT / "out" / "demo" / "image" / ("sandbox-image-jammy-amd64-smoke.qcow2")
        )
        if not path.is_file():
            if image:
                raise ImageError(f"no image at {path}", hint="build one with ./inv build-image")
            cfg = _config(c, arch="amd64", profile="smoke", output_dir="out/demo").config
            demo_module.run_demo(cfg)
        argv = [sys.executable, str(ROOT / "bench" / "resume.py"), "--image", str(path),
                "--runs", str(max(count, 3))]  # fmt: skip
        result = run.run(argv, check=False, capture=False, cwd=ROOT)
    raise Exit(code=result.returncode)
