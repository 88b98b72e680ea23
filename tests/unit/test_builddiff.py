from __future__ import annotations

from pathlib import Path

import pytest

from image.errors import ImageError
from image.release import builddiff
from tests.fixtures.buildoutput import TIMINGS, make_output


def _two(tmp_path: Path) -> builddiff.BuildDiff:
    a = make_output(
        tmp_path / "a", build_id="20261101T000000-aaaaaa",
        dpkg=[("bash", "5.2", "amd64"), ("jq", "1.6", "amd64"), ("libc6", "2.36", "amd64"),
              ("libc6", "2.36", "i386"), ("gone", "1", "all")],
        pip=[("pypdf", "4.0.1")], npm=[("docx", "8.5.0")],
        image_bytes=b"x" * 3 * (1 << 20), timings=TIMINGS,
    )  # fmt: skip
    b = make_output(
        tmp_path / "b", build_id="20261102T000000-bbbbbb",
        dpkg=[("bash", "5.2", "amd64"), ("jq", "1.7", "amd64"), ("libc6", "2.36", "amd64"),
              ("libc6", "2.37", "i386"), ("new", "2", "amd64")],
        pip=[("pypdf", "4.0.1"), ("openpyxl", "3.1")], npm=[],
        image_bytes=b"x" * 5 * (1 << 20),
        timings={**TIMINGS, "boot": 60.6, "extra-step": 1.0},
    )  # fmt: skip
    return builddiff.diff_outputs(a, b)


def test_packages_added_removed_changed(tmp_path: Path) -> None:
    diff = _two(tmp_path)
    assert diff.added == [("dpkg", "new", "2"), ("pip", "openpyxl", "3.1")]
    assert diff.removed == [("dpkg", "gone", "1"), ("npm", "docx", "8.5.0")]
    assert diff.changed == [("dpkg", "jq", "1.6", "1.7"), ("dpkg", "libc6:i386", "2.36", "2.37")]


def test_size_and_steps(tmp_path: Path) -> None:
    diff = _two(tmp_path)
    assert diff.size_change == 2 << 20
    assert diff.steps[:5] == [
        ("fetch", 0.5, 0.5), ("render", 0.7, 0.7), ("disk", 0.01, 0.01), ("layer", 0.01, 0.01),
        ("boot", 70.6, 60.6),
    ]  # fmt: skip
    assert diff.steps[-1] == ("extra-step", None, 1.0)  # unknown steps last, only in b


def test_json_shape(tmp_path: Path) -> None:
    doc = _two(tmp_path).to_json()
    assert doc["a"]["build_id"] == "20261101T000000-aaaaaa"
    assert doc["packages"]["changed"][0] == {"type": "dpkg", "name": "jq", "old": "1.6",
                                             "new": "1.7"}  # fmt: skip
    assert doc["image"]["change_bytes"] == 2 << 20
    boot = next(s for s in doc["steps"] if s["step"] == "boot")
    assert boot == {"step": "boot", "a": 70.6, "b": 60.6, "change": -10.0}
    assert doc["steps"][-1] == {"step": "extra-step", "a": None, "b": 1.0, "change": None}


def test_text(tmp_path: Path) -> None:
    text = builddiff.format_text(_two(tmp_path))
    assert "packages: 2 added, 2 removed, 2 changed" in text
    assert "  ~ dpkg jq 1.6 -> 1.7" in text
    assert "  + pip  openpyxl 3.1" in text
    assert "  - npm  docx 8.5.0" in text
    assert "image: 3.0 MiB -> 5.0 MiB (+2.0 MiB)" in text
    assert "  boot             70.6 ->     60.6  (-10.0 s)" in text


def test_same_build_has_no_changes(tmp_path: Path) -> None:
    a = make_output(tmp_path / "a")
    diff = builddiff.diff_outputs(a, a)
    assert (diff.added, diff.removed, diff.changed, diff.size_change) == ([], [], [], 0)


def test_dpkg_names_compare_across_architectures() -> None:
    amd = {"dpkg": [{"name": "bash", "version": "5.2", "arch": "amd64"}]}
    arm = {"dpkg": [{"name": "bash", "version": "5.2", "arch": "arm64"}]}
    assert builddiff.package_index(amd) == builddiff.package_index(arm)


def test_not_a_build_output(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"build-info\.json is missing"):
        builddiff.load(tmp_path)
