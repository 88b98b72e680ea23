"""Releasing: publish and pull OCI artifacts, compare builds, report, a local registry."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

from invoke.context import Context
from invoke.exceptions import Exit

from image import console
from image.errors import ImageError
from tasks._common import (
    CONFIG_HELP,
    _config,
    _key_spec,
    _out_path,
    _port,
    _user_errors,
    _user_path,
    task,
)


@task(
    positional=["build"],
    help={
        "build": "the build output to publish (build-image's --out)",
        "to": "REGISTRY/REPOSITORY:TAG to push to",
        "snapshot": "also push this snapshot directory (./inv snapshot's --out)",
        "insecure": "allow plain HTTP to a registry that is not on this machine",
        "source": "org.opencontainers.image.source annotation (e.g. the repository URL)",
        "revision": "org.opencontainers.image.revision annotation (e.g. the commit)",
        "json": CONFIG_HELP["json"],
    },
)
def publish(
    c: Context, build: str, to: str | None = None, snapshot: str | None = None,
    insecure: bool = False, source: str | None = None, revision: str | None = None,
    json: bool = False,
) -> None:  # fmt: skip
    """Push a build output (and optionally its snapshot) to an OCI registry as one artifact."""
    from image.release import oci

    with _user_errors():
        if not to:
            raise ImageError("no destination", hint="./inv publish BUILD --to REGISTRY/REPO:TAG")
        snap = _user_path(snapshot) if snapshot else None
        result = oci.publish(_user_path(build), to, snapshot=snap, insecure=insecure,
                             source=source, revision=revision)  # fmt: skip
        if json:
            console.print_json(result.to_json())
        else:
            print(f"{result.reference}@{result.digest}")


VERIFY_HELP = {
    "expect_source": "also require the toolkit's repository to be this URL",
    "expect_revision": "also require the toolkit's commit to be this one (and unmodified)",
}


@task(
    positional=["ref"],
    help={
        "ref": "REGISTRY/REPOSITORY:TAG (or @sha256:...) to pull",
        "out": "directory to create with the verified build output",
        "insecure": "allow plain HTTP to a registry that is not on this machine",
        "verify_key": "verify signatures and provenance against this public key file before "
        "OUT appears (as ./inv verify)",
        **VERIFY_HELP,
        "json": CONFIG_HELP["json"],
    },
)
def pull(
    c: Context,
    ref: str,
    out: str | None = None,
    insecure: bool = False,
    verify_key: str | None = None,
    expect_source: str | None = None,
    expect_revision: str | None = None,
    json: bool = False,
) -> None:
    """Pull a published build output; every file is checked before OUT appears."""
    from image.release import oci, signatures

    with _user_errors():
        if not out:
            raise ImageError("pull needs --out DIR", hint=f"./inv pull {ref} --out pulled/")
        if (expect_source or expect_revision) and not verify_key:
            raise ImageError(
                "--expect-source/--expect-revision need --verify-key KEY",
                hint="an unsigned provenance proves nothing",
            )
        where = _out_path(out, "--out", directory=True)
        with contextlib.ExitStack() as stack:
            keys = (
                stack.enter_context(signatures.keyring(_user_path(verify_key), "--verify-key"))
                if verify_key
                else None
            )
            result = oci.pull(
                ref,
                where,
                insecure=insecure,
                keys=keys,
                expect_source=expect_source,
                expect_revision=expect_revision,
            )
        if json:
            console.print_json(result.to_json())
        else:
            if result.verified is not None:
                print(_verified_line(result.verified.to_json()), file=sys.stderr)
            print(result.out)


def _verified_line(found: dict[str, Any]) -> str:
    source = f"{found['source']}@{found['revision']}" if found.get("source") else "(no source)"
    return (
        f"verified: signed by {found['signer']}; built by {found['builder']} "
        f"(build {found['build_id']}) from {source}; {found['files_checked']} files checked"
    )


@task(
    positional=["target"],
    help={
        "target": "a build output or snapshot directory, or a REGISTRY/REPOSITORY:TAG to pull "
        "and check",
        "key": "the publisher's OpenPGP public key file (armored or binary)",
        **VERIFY_HELP,
        "insecure": "allow plain HTTP to a registry that is not on this machine",
        "cache_dir": CONFIG_HELP["cache_dir"],
        "json": CONFIG_HELP["json"],
    },
)
def verify(
    c: Context,
    target: str,
    key: str | None = None,
    expect_source: str | None = None,
    expect_revision: str | None = None,
    insecure: bool = False,
    cache_dir: str | None = None,
    json: bool = False,
) -> None:
    """Check a build's signatures, every file's hash and its provenance; exit 1 naming the
    first thing that does not hold."""
    from image.release import oci, signatures
    from image.release import verify as verifying

    with _user_errors():
        if not key:
            raise ImageError(
                "verify needs --key KEY",
                hint="the publisher's public key: gpg --export --armor KEYID",
            )
        path = _user_path(target)
        with signatures.keyring(_user_path(key)) as keys:
            if path.is_dir():
                if (path / verifying.SNAPSHOT_META).is_file():
                    if expect_source or expect_revision:
                        raise ImageError(
                            "a snapshot has no provenance: --expect-source/--expect-revision "
                            "apply to its build output",
                            hint="verify the build output (or the pulled artifact) instead",
                        )
                    files = verifying.verify_snapshot(path, keys)
                    found: dict[str, Any] = {
                        "out": str(path),
                        "snapshot": True,
                        "files_checked": files,
                    }
                else:
                    found = verifying.verify_output(
                        path, keys, expect_source=expect_source, expect_revision=expect_revision
                    ).to_json()
            elif path.exists() or "/" not in target:
                raise ImageError(
                    f"{target} is neither a directory nor a registry reference",
                    hint="pass a build output directory or REGISTRY/REPO:TAG",
                )
            else:
                cfg = _config(c, only=("cache_dir",), cache_dir=cache_dir).config
                work = cfg.cache_dir / "verify"
                work.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory(prefix="pull-", dir=work) as tmp:
                    pulled = oci.pull(
                        target,
                        Path(tmp) / "out",
                        insecure=insecure,
                        keys=keys,
                        expect_source=expect_source,
                        expect_revision=expect_revision,
                    )
                    assert pulled.verified is not None
                    found = {
                        "reference": f"{pulled.reference}@{pulled.digest}",
                        **pulled.verified.to_json(),
                    }
                    found.pop("out")
        if json:
            console.print_json(found)
        elif "signer" in found:
            print(_verified_line(found))
        else:
            print(f"verified: snapshot {found['out']}; {found['files_checked']} files checked")


@task(
    positional=["target"],
    help={
        "target": "a build output (signs SHA256SUMS and the provenance) or a snapshot "
        "directory (writes its SHA256SUMS, every file, and signs it)",
        "key": "the OpenPGP secret key: a key file, or a key id in your GnuPG keyring",
        "json": CONFIG_HELP["json"],
    },
)
def sign(c: Context, target: str, key: str | None = None, json: bool = False) -> None:
    """Sign a build output or a snapshot after the fact (detached OpenPGP signatures)."""
    from image.release import signatures
    from image.release import verify as verifying

    with _user_errors():
        if not key:
            raise ImageError(
                "sign needs --key KEY",
                hint="a secret-key file, or a fingerprint gpg --list-secret-keys shows",
            )
        path = _user_path(target)
        if not path.is_dir():
            raise ImageError(
                f"{target} is not a directory", hint="pass a build-image --out or a snapshot --out"
            )
        with signatures.signer(_key_spec(key), flag="--key") as who:
            if (path / verifying.SNAPSHOT_META).is_file():
                written = verifying.sign_snapshot(path, who)
            else:
                written = verifying.sign_output(path, who)
        if json:
            console.print_json({"signer": who.fingerprint, "files": [str(p) for p in written]})
        else:
            print(f"signed by {who.fingerprint}: " + ", ".join(p.name for p in written))


@task(
    positional=["old", "new"],
    help={
        "old": "the older build output",
        "new": "the newer build output",
        "exit_code": "exit 1 when a dpkg, pip or npm package was added, removed or changed "
        "(0 when not), as git diff --exit-code: for CI",
        "json": CONFIG_HELP["json"],
    },
)
def diff(c: Context, old: str, new: str, exit_code: bool = False, json: bool = False) -> None:
    """Compare two build outputs: packages, image size, step times."""
    from image.release import builddiff

    with _user_errors():
        result = builddiff.diff_outputs(_user_path(old), _user_path(new))
        if json:
            console.print_json(result.to_json())
        else:
            print(builddiff.format_text(result))
    if exit_code and result.differs:
        raise Exit(code=1)


@task(
    positional=["build"],
    help={
        "build": "the build output to report on",
        "out": "where to write the page (default: BUILD/report.html)",
        "json": CONFIG_HELP["json"],
    },
)
def report(c: Context, build: str, out: str | None = None, json: bool = False) -> None:
    """Write the build's self-contained HTML report (inputs, checks, packages, timeline)."""
    from image.release import report as build_report

    with _user_errors():
        page = _out_path(out, "--out", directory=False) if out else None
        path = build_report.write_report(_user_path(build), page)
        if json:
            console.print_json({"report": str(path)})
        else:
            print(path)


@task(
    help={
        "port": "port on 127.0.0.1 (0: any free port)",
        "storage": "directory for the registry's blobs, config and log (default: CACHE/registry)",
        "cache_dir": CONFIG_HELP["cache_dir"],
    }
)
def registry(
    c: Context, port: str = "5000", storage: str | None = None, cache_dir: str | None = None
) -> None:
    """Serve a local OCI registry on 127.0.0.1 (for publish/pull), until Ctrl-C."""
    from image.release import localregistry
    from image.source import mirror as local_mirror

    with _user_errors():
        cfg = _config(c, only=("cache_dir",), cache_dir=cache_dir).config
        where = _out_path(storage, "--storage", directory=True) if storage else None
        with localregistry.serve_registry(
            where or cfg.cache_dir / "registry", _port(port, "--port")
        ) as served:
            print(served.host, flush=True)
            local_mirror.wait_for_stop_signal()
