"""The offline mirror's pure parts: Canonical's layout, SHA256SUMS, Range parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from image.errors import ImageError
from image.source import fetch, mirror
from image.source.mirror import ByteRange, RangeNotSatisfiable, parse_range


def test_image_name_is_canonicals() -> None:
    # One naming for what the pipeline fetches and what the stand-in mirror serves.
    assert fetch.image_name("jammy", "amd64") == "ubuntu-22.04-server-cloudimg-amd64.img"
    assert fetch.image_name("jammy", "arm64") == "ubuntu-22.04-server-cloudimg-arm64.img"
    with pytest.raises(ImageError, match="bionic"):
        fetch.image_name("bionic", "amd64")


def test_sha256sums_is_sorted_binary_mode_lines() -> None:
    sums = mirror.sha256sums({"b.img": "22" * 32, "a.img": "11" * 32})
    assert sums == f"{'11' * 32} *a.img\n{'22' * 32} *b.img\n".encode()


def test_mirror_files_lay_out_the_serial_and_the_release_folder() -> None:
    amd64, arm64 = Path("/c/amd64.qcow2"), Path("/c/arm64.qcow2")
    files = mirror.mirror_files(
        "jammy", "20990101", {"arm64": arm64, "amd64": amd64}, b"SUMS", b"SIG"
    )
    assert files == {
        "jammy/release-20990101/ubuntu-22.04-server-cloudimg-amd64.img": amd64,
        "jammy/release-20990101/ubuntu-22.04-server-cloudimg-arm64.img": arm64,
        "jammy/release-20990101/SHA256SUMS": b"SUMS",
        "jammy/release-20990101/SHA256SUMS.gpg": b"SIG",
        "jammy/release-20990101/unpacked/build-info.txt": b"serial=20990101\n",
        "jammy/release/ubuntu-22.04-server-cloudimg-amd64.img": amd64,
        "jammy/release/ubuntu-22.04-server-cloudimg-arm64.img": arm64,
        "jammy/release/SHA256SUMS": b"SUMS",
        "jammy/release/SHA256SUMS.gpg": b"SIG",
        "jammy/release/unpacked/build-info.txt": b"serial=20990101\n",
    }


def test_listing_names_files_and_folders_directly_below() -> None:
    files = mirror.mirror_files("jammy", "20990101", {"amd64": Path("/x")}, b"", b"")
    assert mirror.listing(files, "") == ["jammy/"]
    assert mirror.listing(files, "jammy") == ["release-20990101/", "release/"]
    assert mirror.listing(files, "jammy/release") == [
        "SHA256SUMS",
        "SHA256SUMS.gpg",
        "ubuntu-22.04-server-cloudimg-amd64.img",
        "unpacked/",
    ]
    assert mirror.listing(files, "jammy/rel") is None
    assert mirror.listing(files, "focal") is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=100-", ByteRange(100, 999)),
        ("bytes=990-5000", ByteRange(990, 999)),  # clipped to the end
        ("bytes=-10", ByteRange(990, 999)),  # the last ten
        ("bytes=-5000", ByteRange(0, 999)),
        ("bytes=999-999", ByteRange(999, 999)),
        ("bytes=0-9,20-29", None),  # several ranges: whole file, allowed by RFC 9110
        ("items=0-9", None),
        ("bytes=9-0", None),  # malformed: ignored
        ("bytes=x-9", None),
        ("bytes=5", None),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=1000-2000", "bytes=-0"])
def test_range_past_the_end_is_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)


def test_byte_range_length_is_inclusive() -> None:
    assert ByteRange(10, 19).length == 10


def test_mirror_cli_args_are_one_pasteable_line() -> None:
    served = mirror.Mirror("http://127.0.0.1:8080", Path("/c/k.gpg"), "AB" * 20, "jammy", "1")
    assert served.cli_args() == (
        f"--mirror http://127.0.0.1:8080 --keyring /c/k.gpg --fingerprint {'AB' * 20}"
    )
    # What ./inv mirror prints: pasted after build-image it builds the Debian stand-in.
    assert served.build_args() == f"{served.cli_args()} --distro debian"
