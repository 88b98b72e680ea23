"""The pure parts of fetch: URL layout, SHA256SUMS, gpgv status lines, resume decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from image.errors import ImageError
from image.source import checksums, download
from image.source.checksums import Signature
from image.source.download import Action, Validator
from image.source.fetch import FetchResult, Source, build_info_url, image_name, parse_build_info
from image.source.imagecache import ImageCache, mirror_key

M = "https://cloud-images.ubuntu.com/releases"
H1, H2 = "a" * 64, "b" * 64
FPR = "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81"
SUB = "0123456789ABCDEF0123456789ABCDEF01234567"
OTHER = "4A3CE3CD565D7EB5C810E2B97FF3F408476CF100"

# --- layout ---


def test_serial_layout() -> None:
    s = Source(M, "jammy", "20240912", "arm64")
    assert s.sums_url == f"{M}/jammy/release-20240912/SHA256SUMS"
    assert s.signature_url == f"{M}/jammy/release-20240912/SHA256SUMS.gpg"
    assert s.image_url == f"{M}/jammy/release-20240912/ubuntu-22.04-server-cloudimg-arm64.img"


def test_latest_layout_and_build_info() -> None:
    s = Source(M + "/", "jammy", "latest", "amd64")
    assert s.directory == "release"
    assert s.image_url == f"{M}/jammy/release/ubuntu-22.04-server-cloudimg-amd64.img"
    assert build_info_url(M, "jammy") == f"{M}/jammy/release/unpacked/build-info.txt"


def test_file_mirror_layout() -> None:
    s = Source("file:///srv/mirror", "noble", "20250101.1", "arm64")
    assert s.image_url == (
        "file:///srv/mirror/noble/release-20250101.1/ubuntu-24.04-server-cloudimg-arm64.img"
    )
    assert download.file_url_path(s.image_url) == Path(
        "/srv/mirror/noble/release-20250101.1/ubuntu-24.04-server-cloudimg-arm64.img"
    )


def test_file_url_must_be_local() -> None:
    with pytest.raises(ImageError, match="must be local"):
        download.file_url_path("file://otherhost/x")


def test_unknown_release_has_a_hint() -> None:
    with pytest.raises(ImageError) as info:
        image_name("bionic", "arm64")
    assert info.value.hint == "known releases: focal, jammy, noble"


@pytest.mark.parametrize(
    ("text", "serial"),
    [
        ("serial=20240912\norig_prefix=jammy-server-cloudimg\n", "20240912"),
        ("build_name=server\nserial=20250101.1\n", "20250101.1"),
        ("serial = '20240912'\n", "20240912"),
        ("serial=latest\n", None),
        ("serial=2024091\n", None),
        ("serial=20240912; rm -rf /\n", None),
        ("orig_prefix=x\n", None),
        ("", None),
    ],
)
def test_parse_build_info(text: str, serial: str | None) -> None:
    assert parse_build_info(text) == serial


def test_fetch_result_json() -> None:
    r = FetchResult(Path("/c/x.img"), H1, "20240912", "http://m/x.img", 5, False, FPR)
    assert r.to_json() == {
        "path": "/c/x.img",
        "sha256": H1,
        "serial": "20240912",
        "url": "http://m/x.img",
        "bytes_downloaded": 5,
        "from_cache": False,
        "signer": FPR,
    }


def test_cache_layout(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    assert cache.image_path(H1) == tmp_path / "images" / "sha256" / f"{H1}.img"
    assert cache.provenance_path(H1) == tmp_path / "images" / "sha256" / f"{H1}.json"
    with pytest.raises(ValueError, match="not a sha256"):
        cache.image_path("../../etc/passwd")


def test_mirror_key_is_readable_and_distinct() -> None:
    assert mirror_key(M).startswith("cloud-images.ubuntu.com_releases-")
    assert mirror_key(M) != mirror_key(M + "2")
    assert "/" not in mirror_key("file:///srv/a/b")


# --- SHA256SUMS ---


def test_parse_sums_binary_and_text_mode() -> None:
    text = f"{H1} *ubuntu-22.04-server-cloudimg-arm64.img\n{H2.upper()}  a file.txt\n\n"
    assert checksums.parse_sha256sums(text) == {
        "ubuntu-22.04-server-cloudimg-arm64.img": H1,
        "a file.txt": H2,
    }


@pytest.mark.parametrize(
    "text",
    [f"{H1[:-1]} *x.img\n", f"{H1}*x.img\n", "hello\n", f"{H1} *x\n{H2} *x\n"],
)
def test_parse_sums_is_strict(text: str) -> None:
    with pytest.raises(ValueError):
        checksums.parse_sha256sums(text)


def test_same_name_same_hash_twice_is_fine() -> None:
    assert checksums.parse_sha256sums(f"{H1} *x\n{H1} *x\n") == {"x": H1}


def test_lookup_names_the_missing_file() -> None:
    with pytest.raises(ImageError, match=r"b.img is not listed in URL \(it lists a.img\)"):
        checksums.lookup({"a.img": H1}, "b.img", "URL")
    assert checksums.lookup({"./a.img": H1}, "a.img", "URL") == H1


# --- gpgv status ---

GOOD = f"""[GNUPG:] NEWSIG
[GNUPG:] KEY_CONSIDERED {FPR} 0
[GNUPG:] SIG_ID p8hqnBz 2026-11-30 1796007452
[GNUPG:] GOODSIG 1A5D6C4C7DB87C81 UEC Image Automatic Signing Key <cdimage@ubuntu.com>
[GNUPG:] VALIDSIG {FPR} 2026-11-30 1796007452 0 4 0 1 10 00 {FPR}
"""
BY_SUBKEY = f"""[GNUPG:] NEWSIG
[GNUPG:] GOODSIG 0123456789ABCDEF someone
[GNUPG:] VALIDSIG {SUB} 2026-11-30 1796007452 0 4 0 1 10 00 {FPR}
"""
NO_PUBKEY = """[GNUPG:] NEWSIG
[GNUPG:] ERRSIG C8EAEB0AE53961AB 22 8 00 1796007452 9 784089D0F598D5EF9AD741AAC8EAEB0AE53961AB
[GNUPG:] NO_PUBKEY C8EAEB0AE53961AB
"""
BAD = """[GNUPG:] NEWSIG
[GNUPG:] BADSIG 1A5D6C4C7DB87C81 UEC Image Automatic Signing Key
"""
EXPIRED_KEY = f"""[GNUPG:] NEWSIG
[GNUPG:] EXPKEYSIG 1A5D6C4C7DB87C81 UEC
[GNUPG:] VALIDSIG {FPR} 2026-11-30 1796007452 0 4 0 1 10 00 {FPR}
"""
NODATA = "[GNUPG:] NODATA 1\n[GNUPG:] NODATA 2\n"


def test_parse_good_signature() -> None:
    assert checksums.parse_gpgv_status("gpgv: noise\n" + GOOD) == (
        Signature("GOODSIG", "1A5D6C4C7DB87C81", FPR, FPR),
    )


def test_subkey_signature_is_attributed_to_its_primary_key() -> None:
    (sig,) = checksums.parse_gpgv_status(BY_SUBKEY)
    assert (sig.fingerprint, sig.primary_fingerprint) == (SUB, FPR)
    assert checksums.accepted_signer([sig], [FPR]) == FPR
    with pytest.raises(ImageError, match="not an accepted signer"):
        checksums.accepted_signer([sig], [SUB])  # pins name primary keys


def test_old_gpg_without_primary_field() -> None:
    (sig,) = checksums.parse_gpgv_status(
        f"[GNUPG:] GOODSIG 1A5D6C4C7DB87C81 x\n[GNUPG:] VALIDSIG {FPR} 2026-11-30 1 0 4 0 1 10 00\n"
    )
    assert sig.primary_fingerprint == FPR


def test_good_plus_unknown_signature_is_accepted() -> None:
    sigs = checksums.parse_gpgv_status(GOOD + NO_PUBKEY)
    assert [s.outcome for s in sigs] == ["GOODSIG", "ERRSIG"]
    assert checksums.accepted_signer(sigs, [FPR.lower()]) == FPR


def test_any_bad_signature_rejects() -> None:
    sigs = checksums.parse_gpgv_status(GOOD + BAD)
    with pytest.raises(ImageError, match="BAD signature"):
        checksums.accepted_signer(sigs, [FPR])


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (GOOD, rf"signed by {FPR}, which is not an accepted signer \({OTHER}\)"),
        (NO_PUBKEY, "no good signature on SHA256SUMS .ERRSIG C8EAEB0AE53961AB"),
        (EXPIRED_KEY, "no good signature on SHA256SUMS .EXPKEYSIG"),
        (NODATA, "holds no OpenPGP signature"),
        ("", "holds no OpenPGP signature"),
    ],
)
def test_rejections_say_why(status: str, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        checksums.accepted_signer(checksums.parse_gpgv_status(status), [OTHER])


# --- resume decisions ---

V = Validator("http://m/x.img", '"abc"', "Mon, 02 Sep 2024 10:00:00 GMT")


def test_fresh_request_has_no_range() -> None:
    plan = download.plan_request("http://m/x.img", 0, V)
    assert plan.offset == 0 and "Range" not in plan.headers
    assert plan.headers["Accept-Encoding"] == "identity"


def test_resume_prefers_the_etag() -> None:
    plan = download.plan_request("http://m/x.img", 100, V)
    assert plan.offset == 100
    assert (plan.headers["Range"], plan.headers["If-Range"]) == ("bytes=100-", '"abc"')


def test_resume_with_last_modified_only() -> None:
    v = Validator("http://m/x.img", None, "Mon, 02 Sep 2024 10:00:00 GMT")
    assert download.plan_request(v.url, 7, v).headers["If-Range"] == v.last_modified


@pytest.mark.parametrize(
    "saved",
    [None, Validator("http://m/x.img"), Validator("http://other/x.img", '"abc"')],
)
def test_no_resume_without_a_matching_validator(saved: Validator | None) -> None:
    plan = download.plan_request("http://m/x.img", 100, saved)
    assert plan.offset == 0 and "Range" not in plan.headers


def test_weak_etag_is_not_a_validator() -> None:
    v = Validator.from_headers("u", {"ETag": 'W/"abc"', "Last-Modified": "LM"})
    assert (v.etag, v.if_range) == (None, "LM")
    assert Validator.from_json(v.to_json()) == v
    assert Validator.from_json({"nope": 1}) is None


def _decide(status: int, offset: int = 100, **headers: str) -> download.Decision:
    return download.decide(status, {k.replace("_", "-"): v for k, v in headers.items()}, offset, V)


def test_206_for_our_range_appends() -> None:
    d = _decide(206, Content_Range="bytes 100-199/200", ETag='"abc"')
    assert d.action is Action.APPEND


def test_206_with_other_validator_discards() -> None:
    d = _decide(206, Content_Range="bytes 100-199/200", ETag='"new"')
    assert d.action is Action.DISCARD and "changed" in d.reason


def test_206_for_another_range_discards() -> None:
    assert _decide(206, Content_Range="bytes 0-199/200").action is Action.DISCARD
    assert _decide(206, offset=0, Content_Range="bytes 0-199/200").action is Action.DISCARD


def test_200_restarts_from_zero() -> None:
    assert _decide(200).action is Action.FULL
    assert _decide(200, offset=0).action is Action.FULL


def test_416_complete_or_discard() -> None:
    assert _decide(416, offset=200, Content_Range="bytes */200").action is Action.COMPLETE
    assert _decide(416, offset=300, Content_Range="bytes */200").action is Action.DISCARD


@pytest.mark.parametrize("status", [404, 410, 403, 401, 400, 418])
def test_final_statuses(status: int) -> None:
    assert _decide(status).action is Action.FAIL


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_transient_statuses(status: int) -> None:
    assert _decide(status).action is Action.RETRY


def test_retry_after_is_honoured_and_capped() -> None:
    assert _decide(503, Retry_After="3").retry_after == 3.0
    policy = download.RetryPolicy()
    assert policy.delay(1, 3.0) == 3.0
    assert policy.delay(1, 10_000.0) == policy.max_retry_after
    assert download.parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert download.parse_retry_after("soon") is None


def test_backoff_doubles_up_to_a_cap() -> None:
    policy = download.RetryPolicy(first_delay=0.5, max_delay=4.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("bytes 5-9/10", (5, 9, 10)),
        ("bytes */10", (None, None, 10)),
        ("bytes 0-9/*", (0, 9, None)),
        ("items 1-2/3", (None, None, None)),
        (None, (None, None, None)),
    ],
)
def test_parse_content_range(
    value: str | None, parsed: tuple[int | None, int | None, int | None]
) -> None:
    assert download.parse_content_range(value) == parsed
