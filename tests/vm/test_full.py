"""The full profile (the Cowork set), built end to end on the stand-in: ./inv test --full.

Not in the default run: under TCG on two cores the build alone takes well over
an hour (docs/packages.md has the figures). One build per session: the mirror
serves the stand-in and the NodeSource stand-in, the build verifies every check
of full.checks (mapped for Debian 13), then the image is snapshotted and a
launch does real document work inside the sandbox, as the agent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from image import config
from image.build import packages, pipeline, trust
from image.runtime import snapshot
from image.source import mirror, standin, thirdparty
from tests.vm.conftest import attach_logs, qemu_processes

pytestmark = pytest.mark.full

# Distribution name -> the module a script imports (where they differ).
IMPORT_NAMES = {
    "pdfminer.six": "pdfminer", "pikepdf": "pikepdf", "python-docx": "docx",
    "python-pptx": "pptx", "odfpy": "odf", "markitdown": "markitdown", "pillow": "PIL",
    "opencv-python-headless": "cv2", "beautifulsoup4": "bs4", "camelot-py": "camelot",
    "tabula-py": "tabula", "imageio-ffmpeg": "imageio_ffmpeg", "wand": "wand.image",
    "freetype-py": "freetype", "pyyaml": "yaml", "python-dotenv": "dotenv",
    "pypdfium2": "pypdfium2", "xlsxwriter": "xlsxwriter",
}  # fmt: skip


def import_name(distribution: str) -> str:
    return IMPORT_NAMES.get(distribution, distribution.replace("-", "_"))


@pytest.fixture(scope="module")
def full_build(vm_config: config.BuildConfig) -> Iterator[dict[str, Any]]:
    user_cache = config.resolve({}, os.environ, {}).config.cache_dir
    repo = thirdparty.ensure(user_cache, ("amd64",))
    base = standin.ensure(vm_config.cache_dir, "amd64")
    out = vm_config.output_dir / "full"
    with mirror.serve_mirror({"amd64": base.path}, vm_config.cache_dir, repo=repo) as served:
        assert served.source_file is not None
        cfg = dataclasses.replace(
            vm_config, mirror=served.url, keyring=served.keyring,
            fingerprints=(served.fingerprint,), serial="latest", profile="full",
            memory=4 << 30, output_dir=out, provision_timeout=6 * 3600,
        )  # fmt: skip
        attach_logs(out / "logs" / "cloud-init-output.log", out / "logs" / "serial.log")
        result = pipeline.build_image(
            cfg, distro="debian", sources=(packages.load_source_file(served.source_file),),
            ca_certs=trust.host_cas(),
        )  # fmt: skip
    snapdir = vm_config.output_dir / "full-snapshot"
    _, meta = snapshot.snapshot(dataclasses.replace(vm_config, memory=4 << 30), result.image,
                                snapdir)  # fmt: skip
    yield {"result": result, "snapshot": snapdir, "meta": meta,
           "info": json.loads(result.build_info.read_text())}  # fmt: skip
    assert qemu_processes() == []


def test_every_check_of_the_full_profile_passed(full_build: dict[str, Any]) -> None:
    profile = packages.resolve_profile("full", distro="debian")
    verify = full_build["info"]["verify"]
    for check in profile.checks:
        assert verify[check.name]["ok"], (check.name, verify[check.name])
    low, high = profile.expected_range
    assert low <= verify["installed_count"]["count"] <= high
    assert verify["sandbox_self_test"]["ok"]
    manifest = json.loads(full_build["result"].manifest.read_text())
    pip = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in manifest["pip"]}  # PEP 503
    for entry in (e for g in profile.groups_of("pip") for e in g.entries):
        assert entry.key in pip, entry.name
    npm = {p["name"] for p in manifest["npm"]}
    assert {e.name for g in profile.groups_of("npm") for e in g.entries} <= npm


# The work an agent does, run inside the sandbox (bwrap, both filters) as the agent,
# one real task per skill, found through $SKILLS_DIR: a Markdown report to DOCX to PDF
# (LibreOffice headless), its text read back; that PDF as a scan, OCR'd back to
# text; a workbook with a formula error, recalculated and the error found by cell; a
# deck from an outline and its thumbnail grid; an HTML page rendered at 96 DPI. Then
# ImageMagick reads a PDF (its policy opened), Java, every pip module, every npm module.
WORK = r"""
set -eu
cd "$(mktemp -d)"
S="$SKILLS_DIR"
python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$S/index.json"
printf '# Report\n\nSandbox document 42\n\n- one\n- two\n' > in.md
python3 "$S/docx/scripts/md_to_docx.py" in.md in.docx
python3 "$S/docx/scripts/docx_to_pdf.py" in.docx in.pdf
python3 "$S/pdf/scripts/extract_text.py" in.pdf | grep -q "Sandbox document 42" && echo "docx ok"
python3 "$S/pdf/scripts/render_pages.py" in.pdf --out-dir pages --dpi 150
python3 -c 'import img2pdf, glob
open("scan.pdf", "wb").write(img2pdf.convert(sorted(glob.glob("pages/*.png"))))'
python3 "$S/pdf/scripts/ocr.py" scan.pdf -o ocr.pdf
pdftotext ocr.pdf - | grep -qi "document" && echo "pdf ok"
printf '{"sheets": {"Data": {"A1": 4, "A2": 0, "A3": "=A1/A2", "A4": "=SUM(A1:A2)"}}}' > book.json
python3 "$S/xlsx/scripts/create.py" book.json book.xlsx
set +e
python3 "$S/xlsx/scripts/recalc.py" book.xlsx > recalc.txt
status=$?
set -e
[ "$status" = 3 ] && grep -q 'Data!A3: #DIV/0!' recalc.txt && echo "xlsx ok"
printf '# Deck\n\n## First\n- alpha\n- beta\n\n## Second\n- gamma\n' > outline.md
python3 "$S/pptx/scripts/outline_to_pptx.py" outline.md deck.pptx
python3 "$S/pptx/scripts/thumbnails.py" deck.pptx grid.png --columns 3
test -s grid.png && echo "pptx ok"
printf '<html><body style="font-family: DejaVu Sans"><h1>Poster</h1></body></html>' > page.html
python3 "$S/design/scripts/render_html.py" page.html --pdf page.pdf --png page.png \
  --size 400x300px --dpi 96
python3 -c 'import struct; d = open("page.png", "rb").read(24)
print("design", *struct.unpack(">II", d[16:24]))'
$(command -v magick || command -v convert) -density 50 in.pdf page-im.png
test -s page-im.png && echo "imagemagick ok"
java -version 2>&1 | head -1
python3 -c "$PY_IMPORTS" && echo "pip imports ok"
node -e "$JS_REQUIRES" && echo "npm requires ok"
"""


def test_document_work_inside_the_sandbox_of_a_resumed_launch(
    full_build: dict[str, Any], vm_config: config.BuildConfig
) -> None:
    profile = packages.resolve_profile("full", distro="debian")
    modules = [import_name(e.name.lower()) for g in profile.groups_of("pip") for e in g.entries]
    requires = [e.name for g in profile.groups_of("npm") for e in g.entries
                if e.name not in ("typescript", "tsx", "ts-node", "markdown-toc")]  # fmt: skip
    script = (
        f"PY_IMPORTS={shlex.quote('; '.join(f'import {m}' for m in modules))}\n"
        f"JS_REQUIRES={shlex.quote('; '.join(f'require({json.dumps(r)})' for r in requires))}\n"
        + WORK
    )
    cfg = dataclasses.replace(vm_config, memory=4 << 30)
    with snapshot.launch(full_build["snapshot"], cfg, snapshot.LaunchOptions()) as sandbox:
        done = sandbox.sandboxed(["/bin/sh", "-c", script], timeout=1800)
        resume = sandbox.timings
        used = sandbox.exec(["df", "-B1", "--output=used", "/"]).stdout.decode().split()[-1]
    out = done.stdout.decode(errors="replace")
    assert done.exit_code == 0, out + done.stderr.decode(errors="replace")
    for line in ("docx ok", "pdf ok", "xlsx ok", "pptx ok", "imagemagick ok", "pip imports ok",
                 "npm requires ok"):  # fmt: skip
        assert line in out, out
    assert "design 400 300" in out  # 400x300 CSS px at 96 DPI
    assert 'version "21.' in out
    print(
        f"resume to ready {resume['ready']:.2f} s; cold boot to ready "
        f"{full_build['meta'].ready_seconds:.1f} s; root fs used {int(used) >> 20} MiB"
    )


def test_figures_for_the_docs(full_build: dict[str, Any]) -> None:
    """Prints what docs/packages.md records: step times, count, sizes."""
    info, result = full_build["info"], full_build["result"]
    snapdir: Path = full_build["snapshot"]
    figures = {
        "steps": dict(info["steps"]),
        "installed": info["verify"]["installed_count"]["count"],
        "qcow2_bytes": result.image.stat().st_size,
        "snapshot_bytes": sum(p.stat().st_blocks * 512 for p in snapdir.iterdir()),
        "cold_ready_s": full_build["meta"].ready_seconds,
        "cloud_init": info["guest"]["cloud_init"],
    }
    print(json.dumps(figures))
    assert figures["installed"] > 0
