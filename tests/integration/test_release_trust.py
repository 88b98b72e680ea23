"""Release trust against real gpg keys and a real OCI registry: sign, provenance, verify.

A good artifact verifies; each way of passing off something else fails, names
what failed, and (through pull) leaves nothing in --out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from image.errors import ImageError
from image.release import oci, provenance, signatures, verify
from tests.fixtures.buildoutput import IMAGE, SOURCE, make_output, make_snapshot
from tests.fixtures.registry import LocalRegistry
from tests.fixtures.releasekeys import ReleaseKey, make_release_key

ROOT = Path(__file__).resolve().parents[2]


def _verify_dir(out: Path, key: ReleaseKey, **expect: Any) -> verify.Verified:
    with signatures.keyring(key.public) as keys:
        return verify.verify_output(out, keys, **expect)


def _refused(out: Path, key: ReleaseKey, pattern: str, **expect: Any) -> ImageError:
    with pytest.raises(ImageError, match=pattern) as caught:
        _verify_dir(out, key, **expect)
    return caught.value


def _pull(registry: LocalRegistry, ref: str, out: Path, key: ReleaseKey) -> oci.Pulled:
    with signatures.keyring(key.public) as keys:
        return oci.pull(f"{registry.host}/{ref}", out, keys=keys)


def _pull_refused(
    registry: LocalRegistry, ref: str, out: Path, key: ReleaseKey, pattern: str
) -> None:
    with pytest.raises(ImageError, match=pattern):
        _pull(registry, ref, out, key)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.pull-")] == []


def _inv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "inv"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, check=False)  # fmt: skip


# --- a build output on disk ---


def _tamper_sbom(out: Path, *, rewrite_sums: bool) -> Path:
    """Hide a package from the SPDX SBOM; with ``rewrite_sums``, make SHA256SUMS agree."""
    sbom = out / "sbom.spdx.json"
    sbom.write_text(sbom.read_text().replace('"jq"', '"jq-backdoored"'))
    if rewrite_sums:
        digest = hashlib.sha256(sbom.read_bytes()).hexdigest()
        lines = (out / "SHA256SUMS").read_text().splitlines()
        (out / "SHA256SUMS").write_text("".join(
            f"{digest} *{sbom.name}\n" if line.endswith(f" *{sbom.name}") else f"{line}\n"
            for line in lines))  # fmt: skip
    return out


def test_a_signed_build_verifies_and_says_who_built_it_from_what(
    tmp_path: Path, release_key: ReleaseKey
) -> None:
    out = make_output(tmp_path / "out", pip=[("pypdf", "4.0.1")], sign_key=str(release_key.secret))
    assert {"SHA256SUMS.gpg", "provenance.intoto.json.gpg"} <= {p.name for p in out.iterdir()}
    found = _verify_dir(out, release_key, expect_source="https://GIT.example.org/sandbox-image/",
                        expect_revision=SOURCE.commit[:12])  # fmt: skip
    assert found.signer == release_key.fingerprint
    summary = found.to_json()
    assert summary["revision"] == SOURCE.commit and summary["modified_checkout"] is False
    assert summary["builder"] == "urn:sandbox-image:host:test"
    assert found.files == 5  # image, manifest, both SBOMs, report


def test_the_cli_signs_after_the_fact_and_verifies(
    tmp_path: Path, release_key: ReleaseKey, stranger_key: ReleaseKey
) -> None:
    out = make_output(tmp_path / "out")
    unsigned = _inv("verify", str(out), "--key", str(release_key.public))
    assert unsigned.returncode == 1
    assert "SHA256SUMS is not signed (no SHA256SUMS.gpg)" in unsigned.stderr
    signed = _inv("sign", str(out), "--key", str(release_key.secret), "--json")
    assert signed.returncode == 0, signed.stderr
    assert json.loads(signed.stdout.splitlines()[-1])["signer"] == release_key.fingerprint
    good = _inv("verify", str(out), "--key", str(release_key.public), "--expect-revision",
                SOURCE.commit)  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"verified: signed by {release_key.fingerprint}; built by ")
    other = _inv("verify", str(out), "--key", str(stranger_key.public))
    assert other.returncode == 1
    assert "no good signature on SHA256SUMS (ERRSIG" in other.stderr
    assert "hint:" in other.stderr


def test_a_key_in_the_users_own_keyring_signs_too(tmp_path: Path, release_key: ReleaseKey) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(release_key.secret)],
                   check=True, capture_output=True)  # fmt: skip
    out = make_output(tmp_path / "out")
    env = {**os.environ, "GNUPGHOME": str(home)}
    try:
        done = subprocess.run(
            [str(ROOT / "inv"), "sign", str(out), "--key", release_key.fingerprint],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    assert done.returncode == 0, done.stderr
    assert _verify_dir(out, release_key).signer == release_key.fingerprint
    unknown = _inv("sign", str(out), "--key", "0" * 40)
    assert unknown.returncode == 1
    assert "is neither a key file nor a secret key in your GnuPG keyring" in unknown.stderr


def test_a_passphrase_comes_from_the_environment_and_a_wrong_one_fails_early(
    tmp_path: Path,
) -> None:
    key = make_release_key(tmp_path / "k", "guarded", passphrase="correct horse")
    env = os.environ.get(signatures.PASSPHRASE_ENV)
    try:
        os.environ[signatures.PASSPHRASE_ENV] = "wrong"
        with pytest.raises(ImageError, match="gpg") as caught:
            signatures.try_key(str(key.secret))
        assert signatures.PASSPHRASE_ENV in (caught.value.hint or "")
        os.environ[signatures.PASSPHRASE_ENV] = "correct horse"
        assert signatures.try_key(str(key.secret)) == key.fingerprint
    finally:
        os.environ.pop(signatures.PASSPHRASE_ENV, None)
        if env is not None:
            os.environ[signatures.PASSPHRASE_ENV] = env


def test_every_alteration_of_a_signed_build_is_named(
    tmp_path: Path, release_key: ReleaseKey
) -> None:
    good = make_output(tmp_path / "good", sign_key=str(release_key.secret))

    def copy(name: str) -> Path:
        return Path(shutil.copytree(good, tmp_path / name))

    sbom = _tamper_sbom(copy("sbom"), rewrite_sums=False)
    _refused(sbom, release_key, r"sbom\.spdx\.json: sha256 \w+ does not match SHA256SUMS")
    # ... and with SHA256SUMS rewritten to match, its signature no longer holds.
    _tamper_sbom(sbom, rewrite_sums=True)
    _refused(sbom, release_key, "BAD signature on SHA256SUMS")

    info = copy("info")
    (info / "build-info.json").write_text(
        (info / "build-info.json").read_text().replace("20990101", "20990102")
    )
    _refused(info, release_key, r"build-info\.json: sha256 \w+ does not match the provenance")

    prov = copy("prov")
    (prov / provenance.FILE).write_text((prov / provenance.FILE).read_text().replace(
        "urn:sandbox-image:host:test", "urn:sandbox-image:host:trusted"))  # fmt: skip
    _refused(prov, release_key, "BAD signature on provenance.intoto.json")

    planted = copy("planted")
    (planted / "logs" / "extra.sh").write_text("not signed by anyone")
    _verify_dir(planted, release_key)  # a local output may share its directory...
    with (
        signatures.keyring(release_key.public) as keys,
        pytest.raises(ImageError, match=r"logs/extra\.sh is not covered by the signatures"),
    ):
        verify.verify_output(planted, keys, exclusive=True)  # ...a pulled artifact may not

    gone = copy("gone")
    (gone / provenance.FILE).unlink()
    _refused(gone, release_key, "has no provenance.intoto.json")

    _refused(good, release_key, "built from revision 0123456789abcdef", expect_revision="fedcba98")
    fork = "https://git.example.org/fork"
    _refused(good, release_key, rf"built from {SOURCE.url}, not {fork}", expect_source=fork)


def test_a_provenance_from_a_modified_checkout_fails_an_expected_revision(
    tmp_path: Path, release_key: ReleaseKey
) -> None:
    dirty = provenance.Source(SOURCE.url, SOURCE.commit, dirty=True)
    out = make_output(tmp_path / "out", sign_key=str(release_key.secret), source=dirty)
    assert _verify_dir(out, release_key).provenance.source() == dirty  # fine unless asked
    _refused(out, release_key, "built from a modified checkout", expect_revision=SOURCE.commit)


def test_a_signed_snapshot_covers_every_file_and_its_image(
    tmp_path: Path, release_key: ReleaseKey
) -> None:
    out = make_output(tmp_path / "out", sign_key=str(release_key.secret))
    snap = make_snapshot(tmp_path / "snap", out / IMAGE)
    signed = _inv("sign", str(snap), "--key", str(release_key.secret))
    assert signed.returncode == 0, signed.stderr
    listed = (snap / "SHA256SUMS").read_text()
    assert " *memory\n" in listed and " *base.qcow2\n" in listed  # the RAM is covered too
    done = _inv("verify", str(snap), "--key", str(release_key.public))
    assert done.returncode == 0, done.stderr
    with signatures.keyring(release_key.public) as keys:
        (snap / "memory").chmod(0o644)
        with (snap / "memory").open("r+b") as f:
            f.seek(1 << 20)
            f.write(b"injected")
        with pytest.raises(ImageError, match=r"snapshot/memory: sha256 \w+ does not match"):
            verify.verify_snapshot(snap, keys)
        other = make_snapshot(tmp_path / "other", out / "manifest.json")
        with signatures.signer(str(release_key.secret)) as who:
            verify.sign_snapshot(other, who)
        (other / "planted.so").write_text("after signing")
        with pytest.raises(ImageError, match=r"snapshot/planted\.so is not listed"):
            verify.verify_snapshot(other, keys)
        (other / "planted.so").unlink()
        with pytest.raises(ImageError, match=r"the snapshot resumes image sha256 .* not this"):
            verify.verify_snapshot(other, keys, image_sha256="ab" * 32)


# --- through the registry ---


def _two_signed_builds(tmp_path: Path, key: ReleaseKey) -> tuple[Path, Path]:
    a = make_output(tmp_path / "a", sign_key=str(key.secret))
    b = make_output(tmp_path / "b", sign_key=str(key.secret), build_id="20261201T000000-0b",
                    image_bytes=b"QFI\xfb another disk")  # fmt: skip
    return a, b


def _index(registry: LocalRegistry, repo: str, tag: str) -> dict[str, Any]:
    answer = requests.get(f"http://{registry.host}/v2/{repo}/manifests/{tag}",
                          headers={"Accept": oci.OCI_INDEX}, timeout=10)  # fmt: skip
    answer.raise_for_status()
    doc: dict[str, Any] = answer.json()
    return doc


def test_a_published_signed_artifact_carries_its_provenance_as_a_referrer(
    registry: LocalRegistry, tmp_path: Path, release_key: ReleaseKey
) -> None:
    out = make_output(tmp_path / "out", sign_key=str(release_key.secret))
    published = oci.publish(out, f"{registry.host}/trust/good:v1")
    assert "SHA256SUMS.gpg" in {layer.title for layer in published.layers}
    # distribution 2.x has no referrers API: OCI 1.1's tag schema lists the referrer.
    index = _index(registry, "trust/good", oci.referrers_tag(published.digest))
    [entry] = index["manifests"]
    assert entry["artifactType"] == provenance.MEDIA_TYPE
    referrer = requests.get(
        f"http://{registry.host}/v2/trust/good/manifests/{entry['digest']}",
        headers={"Accept": oci.OCI_MANIFEST}, timeout=10,
    ).json()  # fmt: skip
    assert referrer["subject"]["digest"] == published.digest
    assert [layer["mediaType"] for layer in referrer["layers"]] == [
        provenance.MEDIA_TYPE, oci.PGP_SIGNATURE]  # fmt: skip
    pulled = _pull(registry, f"trust/good@{published.digest}", tmp_path / "back", release_key)
    assert pulled.verified is not None and pulled.verified.signer == release_key.fingerprint
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == sorted(
        p.name for p in out.iterdir())  # fmt: skip
    # The CLI: verify REF pulls to a scratch place, checks, and leaves nothing behind.
    cache = tmp_path / "cache"
    done = _inv("verify", f"{registry.host}/trust/good:v1", "--key", str(release_key.public),
                "--expect-revision", SOURCE.commit, "--cache-dir", str(cache),
                "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["reference"].endswith(f"@{published.digest}")
    assert list((cache / "verify").iterdir()) == []
    pulled_cli = _inv("pull", f"{registry.host}/trust/good:v1", "--out", str(tmp_path / "cli"),
                      "--verify-key", str(release_key.public))  # fmt: skip
    assert pulled_cli.returncode == 0, pulled_cli.stderr
    assert "verified: signed by" in pulled_cli.stderr


def test_a_re_signed_artifact_is_refused(
    registry: LocalRegistry, tmp_path: Path, release_key: ReleaseKey, stranger_key: ReleaseKey
) -> None:
    out = make_output(tmp_path / "out", sign_key=str(stranger_key.secret))
    oci.publish(out, f"{registry.host}/trust/resigned:v1")
    _pull_refused(registry, "trust/resigned:v1", tmp_path / "pulled", release_key,
                  r"no good signature on SHA256SUMS \(ERRSIG")  # fmt: skip
    # Without --verify-key the pull itself is fine: the bytes are what the manifest names.
    assert oci.pull(f"{registry.host}/trust/resigned:v1", tmp_path / "plain").verified is None


def test_a_swapped_provenance_is_refused(
    registry: LocalRegistry, tmp_path: Path, release_key: ReleaseKey
) -> None:
    a, b = _two_signed_builds(tmp_path, release_key)
    for name in oci.PROVENANCE_FILES:  # B's provenance, validly signed, beside A's files
        shutil.copyfile(b / name, a / name)
    oci.publish(a, f"{registry.host}/trust/swapped:v1")
    swapped = r"provenance\.intoto\.json is for other files: subject \S+ has sha256"
    _pull_refused(registry, "trust/swapped:v1", tmp_path / "pulled", release_key, swapped)


def test_a_provenance_for_another_digest_is_refused(
    registry: LocalRegistry, tmp_path: Path, release_key: ReleaseKey
) -> None:
    a, b = _two_signed_builds(tmp_path, release_key)
    pub_a = oci.publish(a, f"{registry.host}/trust/other:a")
    pub_b = oci.publish(b, f"{registry.host}/trust/other:b")
    # B's referrer, listed as if it referred to A (what a registry or an attacker could do).
    index_b = _index(registry, "trust/other", oci.referrers_tag(pub_b.digest))
    answer = requests.put(
        f"http://{registry.host}/v2/trust/other/manifests/{oci.referrers_tag(pub_a.digest)}",
        data=json.dumps(index_b).encode(), headers={"Content-Type": oci.OCI_INDEX}, timeout=10,
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    elsewhere = f"the provenance referrer sha256:\\w+ is for {pub_b.digest}, not this artifact"
    _pull_refused(registry, "trust/other:a", tmp_path / "pulled", release_key, elsewhere)


def test_a_tampered_sbom_in_the_registry_is_refused(
    registry: LocalRegistry, tmp_path: Path, release_key: ReleaseKey
) -> None:
    # The SBOM edited and SHA256SUMS rewritten to match: consistent bytes, broken signature.
    out = _tamper_sbom(make_output(tmp_path / "out", sign_key=str(release_key.secret)),
                       rewrite_sums=True)  # fmt: skip
    oci.publish(out, f"{registry.host}/trust/sbom:v1")
    _pull_refused(registry, "trust/sbom:v1", tmp_path / "pulled", release_key,
                  "BAD signature on SHA256SUMS")  # fmt: skip


def test_a_published_snapshot_must_be_signed_too(
    registry: LocalRegistry, tmp_path: Path, release_key: ReleaseKey
) -> None:
    out = make_output(tmp_path / "out", sign_key=str(release_key.secret))
    snap = make_snapshot(tmp_path / "snap", out / IMAGE)
    oci.publish(out, f"{registry.host}/trust/snap:unsigned", snapshot=snap)
    _pull_refused(registry, "trust/snap:unsigned", tmp_path / "p1", release_key,
                  r"the snapshot in .* is not signed \(no snapshot/SHA256SUMS\)")  # fmt: skip
    with signatures.signer(str(release_key.secret)) as who:
        verify.sign_snapshot(snap, who)
    oci.publish(out, f"{registry.host}/trust/snap:signed", snapshot=snap)
    pulled = _pull(registry, "trust/snap:signed", tmp_path / "p2", release_key)
    assert pulled.verified is not None and pulled.verified.snapshot
    assert (tmp_path / "p2" / "snapshot" / "SHA256SUMS.gpg").is_file()
