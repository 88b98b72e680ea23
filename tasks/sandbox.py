"""The in-guest sandbox: compile its filters, or run it on this host."""

from __future__ import annotations

import shlex

from invoke.context import Context
from invoke.exceptions import Exit

from image import console, run
from image.errors import ImageError
from tasks._common import (
    CONFIG_HELP,
    _config,
    _out_path,
    _remainder,
    _user_errors,
    _user_path,
    task,
)


@task(
    name="compile-seccomp",
    help={
        "out": "output directory (default: <output_dir>/seccomp); writes <out>/<arch>/<name>.bpf",
        "arch": "x86_64, aarch64 (or amd64, arm64); comma-separated; default both",
        "profile": "only these seccomp profiles, comma-separated (default: all shipped)",
        "json": CONFIG_HELP["json"],
    },
)
def compile_seccomp(
    c: Context,
    out: str | None = None,
    arch: str | None = None,
    profile: str | None = None,
    json: bool = False,
) -> None:
    """Compile the seccomp profiles to BPF (+ PFC dump, sha256) for x86_64 and aarch64."""
    from image.sandbox import seccomp

    with _user_errors():
        default = _config(c, only=("output_dir",)).config.output_dir / "seccomp"
        out_dir = _out_path(out or str(default), "--out", directory=True)
        arches = [seccomp.target_arch(a) for a in arch.split(",")] if arch else seccomp.ARCHES
        names = profile.split(",") if profile else None
        results = seccomp.write_all(out_dir, names, arches)
        rows = [
            {
                "profile": r.profile,
                "arch": r.arch,
                "instructions": len(r.bpf) // 8,
                "sha256": r.sha256,
                "skipped": list(r.skipped),
                "bpf": str(out_dir / r.arch / f"{r.profile}.bpf"),
            }
            for r in results
        ]
        if json:
            console.print_json({"out": str(out_dir), "filters": rows})
            return
        for r in results:
            print(
                f"{out_dir / r.arch / r.profile}.bpf  {len(r.bpf) // 8:>4} insns  "
                f"sha256 {r.sha256[:16]}"
            )


@task(
    name="sandbox-run",
    help={
        "profile": "bwrap profile (default: agent)",
        "workspace": "directory bound read-write at /workspace (default: current directory)",
        "self_test": "run the launcher's self-test instead of a command (prints one JSON line)",
        "policy": "egress policy of the proxy the bridges lead to "
        "(default: proxy-policies/launch.policy)",
        "user": "started as root: run the sandbox as this user "
        "(default: the workspace's owner, or nobody)",
        "audit_log": "append the proxy's audit records here "
        "(default: out/sandbox-run/egress.jsonl)",
    },
)
def sandbox_run(
    c: Context, profile: str = "agent", workspace: str | None = None, self_test: bool = False,
    policy: str | None = None, user: str | None = None, audit_log: str | None = None,
) -> None:  # fmt: skip
    """Run a command under the in-guest sandbox launcher on this host: -- CMD [ARG...].

    The bridges lead to an egress proxy this task starts on 127.0.0.1, never to the
    VM-only 10.0.2.100 the shipped profile names: on a host that can be a real machine.
    """
    from image.egress import guestnet
    from image.egress import proxy as egress
    from image.sandbox import hostrun

    with _user_errors():
        cmd = _remainder(c)
        if not cmd and not self_test:
            raise ImageError("no command given", hint="./inv sandbox-run -- CMD [ARG...]")
        where = _user_path(".")  # ./inv runs in the checkout; this is where the user was
        bound = _user_path(workspace) if workspace else where
        if not bound.is_dir():
            raise ImageError(f"--workspace {workspace}: not a directory",
                             hint="name an existing directory to bind at /workspace")  # fmt: skip
        rules = egress.load_policy(_user_path(policy) if policy else guestnet.LAUNCH_POLICY)
        base = _config(c, only=("output_dir",)).config.output_dir / "sandbox-run"
        log = _out_path(audit_log, "--audit-log", directory=False) if audit_log else None
        prepared = hostrun.prepare(base, profile)
        log = log or base / "egress.jsonl"
        with egress.serve_proxy(rules, 0, 0, log) as served:
            ports = {
                "http": served.http_url.rpartition(":")[2],
                "socks": served.socks_url.rpartition(":")[2],
            }
            argv = hostrun.launcher_argv(
                prepared, bound, ports,
                user=user, self_test=self_test, cmd=cmd,
            )  # fmt: skip
            console.log.info("+ %s", shlex.join(argv))
            console.log.info("egress audit log: %s", log)
            code = run.run(argv, check=False, capture=False).returncode
    raise Exit(code=code)
