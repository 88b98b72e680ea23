"""Release engineering on the demo's real build: report, publish, pull, launch, diff.

No extra build: the second build for ``diff`` is a copy of the demo's output
with an edited manifest (the unit tier covers the diff logic itself).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from image import config, run
from image.build import output
from image.release import oci, report, signatures
from image.runtime import snapshot
from image.source.checksums import parse_sha256sums
from tests.fixtures.registry import LocalRegistry
from tests.fixtures.releasekeys import ReleaseKey
from tests.integration.test_report_chromium import rendered_dom

ROOT = Path(__file__).resolve().parents[2]


def _digests(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            found[str(path.relative_to(root))] = digest.hexdigest()
    return found


def test_build_writes_a_listed_reproducible_report(built: dict[str, Path]) -> None:
    out = built["image"].parent
    page = out / report.REPORT
    listed = parse_sha256sums((out / "SHA256SUMS").read_text())[report.REPORT]
    assert hashlib.sha256(page.read_bytes()).hexdigest() == listed
    assert report.write_report(out) == page  # ./inv report: same bytes, SHA256SUMS holds
    assert hashlib.sha256(page.read_bytes()).hexdigest() == listed


def test_report_renders_in_chromium_with_every_step(built: dict[str, Path]) -> None:
    info = output.BuildInfo(json.loads(built["build_info"].read_text()))
    timings = info.raw["timings"]
    dom = rendered_dom(built["image"].parent / report.REPORT)
    steps = re.findall(r'<g class="bar" data-step="([^"]+)"', dom)
    # The timeline is in run order (build-info's `steps`); `timings` holds the same steps.
    assert steps == [s for s, _ in info.steps]
    assert sorted(steps) == sorted(timings)
    assert len(re.findall(r'<rect class="step"', dom)) == len(timings)
    assert 'class="ok">passed' in dom


def _linked_copy(src: Path, dest: Path) -> Path:
    """``src`` as new links (the build's files are never written again; signing adds files)."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return dest


def _head() -> tuple[str, bool]:
    """The checkout's commit, and whether tracked files were changed on top of it."""
    git = ["git", "-C", str(ROOT)]
    commit = run.run([*git, "rev-parse", "HEAD"]).stdout.decode().strip()
    changed = run.run([*git, "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return commit, bool(changed)


def test_sign_publish_verify_pull_and_launch_the_pulled_snapshot(
    built: dict[str, Path], registry: LocalRegistry, vm_config: config.BuildConfig,
    tmp_path: Path, release_key: ReleaseKey,
) -> None:  # fmt: skip
    out = _linked_copy(built["image"].parent, tmp_path / "out")
    snapdir = _linked_copy(built["snapshot"], tmp_path / "snapshot")
    for signed in (out, snapdir):
        run.run([str(ROOT / "inv"), "sign", str(signed), "--key", str(release_key.secret)])
    ref = f"{registry.host}/sandbox-image:demo"
    published = oci.publish(out, ref, snapshot=snapdir)
    commit, modified = _head()
    with signatures.keyring(release_key.public) as keys:
        pulled = oci.pull(f"{registry.host}/sandbox-image@{published.digest}",
                          tmp_path / "pulled", keys=keys,
                          expect_revision=None if modified else commit)  # fmt: skip
    print(f"push {published.seconds:.1f} s, pull + verify {pulled.seconds:.1f} s, "
          f"{sum(x.size for x in pulled.layers) / (1 << 20):.0f} MiB")  # fmt: skip
    assert pulled.verified is not None and pulled.verified.snapshot
    source = pulled.verified.provenance.source()
    assert source is not None and (source.commit, source.dirty) == (commit, modified)
    got = _digests(pulled.out)
    assert {k: v for k, v in got.items() if not k.startswith("snapshot/")} == _digests(out)
    assert {k.removeprefix("snapshot/"): v for k, v in got.items()
            if k.startswith("snapshot/")} == _digests(snapdir)  # fmt: skip
    # The pulled snapshot is a working one, not just the same bytes.
    with snapshot.launch(pulled.out / "snapshot", vm_config, snapshot.LaunchOptions()) as vm:
        result = vm.sandboxed(["echo", "pulled and resumed"], timeout=300)
    assert result.exit_code == 0
    assert result.stdout.decode().strip() == "pulled and resumed"


def test_diff_against_an_edited_copy(built: dict[str, Path], tmp_path: Path) -> None:
    a = built["image"].parent
    b = tmp_path / "b"
    b.mkdir()
    for path in a.iterdir():
        if path.suffix == ".qcow2":
            os.link(path, b / path.name)  # 300 MB the diff only measures
        elif path.is_file():
            shutil.copy(path, b)
    manifest = json.loads((b / "manifest.json").read_text())
    first, second = manifest["dpkg"][0], manifest["dpkg"][1]
    manifest["dpkg"] = [
        *manifest["dpkg"][2:],
        {"name": "zz-new-tool", "version": "1.0", "arch": "amd64"},
        {**second, "version": second["version"] + "+rebuilt"},
    ]
    (b / "manifest.json").write_text(json.dumps(manifest))
    info = json.loads((b / "build-info.json").read_text())
    info["timings"]["boot"] += 10
    info["steps"] = [[s, t + 10 if s == "boot" else t] for s, t in info["steps"]]
    (b / "build-info.json").write_text(json.dumps(info))
    proc = run.run([str(ROOT / "inv"), "diff", str(a), str(b), "--json"],
                   env={"HOME": os.environ.get("HOME", "/root")})  # fmt: skip
    doc = json.loads(proc.stdout.decode().splitlines()[-1])
    packages = doc["packages"]
    assert packages["added"] == [{"type": "dpkg", "name": "zz-new-tool", "version": "1.0"}]
    assert packages["removed"] == [{"type": "dpkg", "name": first["name"],
                                    "version": first["version"]}]  # fmt: skip
    assert [c["name"] for c in packages["changed"]] == [second["name"]]
    assert doc["image"]["change_bytes"] == 0
    boot = next(s for s in doc["steps"] if s["step"] == "boot")
    assert boot["change"] == pytest.approx(10.0)
