"""Package caches: keys, what the guest is given, fill-back, use stamps, stats and pruning."""

from __future__ import annotations

import dataclasses
import errno
import os
import resource
import signal
import socket
import stat
from pathlib import Path

import pytest
import yaml

from image.build import cloudinit, manifest, packagecache
from image.build.packagecache import Item
from tests.fixtures.stagescripts import commands, stage

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ1aWxkLWtleS1mb3ItdGVzdHM build@host"
DAY = 86400.0


def test_key_is_distro_release_arch_and_refuses_anything_else() -> None:
    assert packagecache.key("ubuntu", "jammy", "arm64") == "ubuntu-jammy-arm64"
    for bad in (("ubuntu", "../x", "arm64"), ("", "jammy", "amd64"), ("ubuntu", "jammy", "a/b")):
        with pytest.raises(ValueError):
            packagecache.key(*bad)


def test_prepare_makes_the_key_dirs_and_a_read_only_cache_share(tmp_path: Path) -> None:
    shares = packagecache.prepare(tmp_path / "cache", "debian-jammy-amd64", tmp_path / "work")
    root = tmp_path / "cache" / "packages" / "debian-jammy-amd64"
    assert shares.cache.path == root and shares.cache.readonly
    assert shares.cache.tag == "pkgcache"
    assert shares.new.path == tmp_path / "work" / "package-cache-new" and not shares.new.readonly
    assert shares.new.tag == "pkgnew"
    for kind in ("apt", "pip", "npm"):
        assert (root / kind).is_dir() and (shares.new_dir / kind).is_dir()


def _outbox(tmp_path: Path) -> Path:
    new = tmp_path / "new"
    for kind in ("apt", "pip", "npm"):
        (new / kind).mkdir(parents=True)
    return new


def test_fill_back_adds_files_atomically_and_only_what_it_expects(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    new = _outbox(tmp_path)
    (new / "apt" / "jq_1.6-2.1+deb12u3_amd64.deb").write_bytes(b"deb1")
    (new / "apt" / "bsdutils_1%3a2.38.1-5_amd64.deb").write_bytes(b"deb2")
    (new / "apt" / "notes.txt").write_text("not a deb")
    (new / "pip" / "pypdf-7.1.1-py3-none-any.whl").write_bytes(b"wheel")
    result = packagecache.fill_back(cache, "debian-jammy-amd64", new)
    apt = cache / "packages" / "debian-jammy-amd64" / "apt"
    assert sorted(p.name for p in apt.iterdir()) == [
        "bsdutils_1%3a2.38.1-5_amd64.deb", "jq_1.6-2.1+deb12u3_amd64.deb"]  # fmt: skip
    assert (apt / "jq_1.6-2.1+deb12u3_amd64.deb").read_bytes() == b"deb1"
    assert not (apt / "jq_1.6-2.1+deb12u3_amd64.deb").is_symlink()
    assert result.added == {"apt": 2, "pip": 1, "npm": 0}
    assert result.bytes_added == 4 + 4 + 5
    assert result.ignored == ("apt/notes.txt",)


def test_fill_back_keeps_what_is_there(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    new = _outbox(tmp_path)
    (new / "apt" / "jq_1_amd64.deb").write_bytes(b"same")
    packagecache.fill_back(cache, "k", new)
    again = packagecache.fill_back(cache, "k", new)
    assert again.added["apt"] == 0 and again.bytes_added == 0


def test_fill_back_replaces_the_npm_cache_whole(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old = cache / "packages" / "k" / "npm"
    (old / "content-v2").mkdir(parents=True)
    (old / "content-v2" / "old").write_text("old")
    new = _outbox(tmp_path)
    (new / "npm" / "content-v2" / "sha512").mkdir(parents=True)
    (new / "npm" / "content-v2" / "sha512" / "ab").write_text("tarball")
    (new / "npm" / "index-v5").mkdir()
    result = packagecache.fill_back(cache, "k", new)
    assert result.added["npm"] == 1
    assert sorted(str(p.relative_to(old)) for p in old.rglob("*")) == [
        "content-v2", "content-v2/sha512", "content-v2/sha512/ab", "index-v5"]  # fmt: skip
    assert (old / "content-v2" / "sha512" / "ab").read_text() == "tarball"
    assert [p.name for p in old.parent.iterdir() if p.name.startswith(".")] == []


def test_deb_file_name_writes_the_epoch_as_apt_does() -> None:
    assert packagecache.deb_filename(manifest.Package("bsdutils", "1:2.38.1-5", "amd64")) == (
        "bsdutils_1%3a2.38.1-5_amd64.deb"
    )


def test_mark_used_touches_what_the_build_installed(tmp_path: Path) -> None:
    root = tmp_path / "packages" / "k"
    (root / "apt").mkdir(parents=True)
    (root / "pip").mkdir()
    used = root / "apt" / "jq_1.6_amd64.deb"
    unused = root / "apt" / "curl_7_amd64.deb"
    wheel = root / "pip" / "pdfminer_six-20260107-py3-none-any.whl"
    other_wheel = root / "pip" / "pdfminer_six-20250101-py3-none-any.whl"
    for path in (used, unused, wheel, other_wheel):
        path.write_bytes(b"x")
        os.utime(path, (1000.0, 1000.0))
    found = manifest.Manifest("debian", "amd64", (manifest.Package("jq", "1.6", "amd64"),),
                              (manifest.Package("pdfminer.six", "20260107"),), ())  # fmt: skip
    assert packagecache.mark_used(tmp_path, "k", found, now=5000.0) == 2
    assert used.stat().st_mtime == 5000.0 and wheel.stat().st_mtime == 5000.0
    assert unused.stat().st_mtime == 1000.0 and other_wheel.stat().st_mtime == 1000.0


def test_items_and_stats(tmp_path: Path) -> None:
    root = tmp_path / "packages" / "debian-jammy-amd64"
    (root / "apt").mkdir(parents=True)
    (root / "npm" / "content-v2").mkdir(parents=True)
    for name, size, mtime in (("a_1_all.deb", 10, 100.0), ("b_1_all.deb", 30, 300.0),
                              (".b_1_all.deb.x.tmp", 99, 50.0)):  # fmt: skip
        path = root / "apt" / name
        path.write_bytes(b"x" * size)
        os.utime(path, (mtime, mtime))
    (root / "npm" / "content-v2" / "blob").write_bytes(b"y" * 7)
    found = packagecache.items(tmp_path)
    assert [(i.kind, i.size) for i in found] == [("apt", 10), ("apt", 30), ("npm", 7)]
    rows = packagecache.stats(found)
    assert [(r.key, r.kind, r.files, r.bytes) for r in rows] == [
        ("debian-jammy-amd64", "apt", 2, 40), ("debian-jammy-amd64", "npm", 1, 7)]  # fmt: skip
    assert (rows[0].oldest, rows[0].newest) == (100.0, 300.0)
    assert packagecache.items(tmp_path / "nothing") == []


def _item(name: str, size: int, age_days: float, now: float = 100 * DAY) -> Item:
    return Item(Path(name), "k", "apt", size, now - age_days * DAY)


ITEMS = [_item("old", 10, 40), _item("mid", 20, 10), _item("new", 30, 1), _item("newest", 40, 0)]


def test_prune_older_than() -> None:
    chosen = packagecache.select_prune(ITEMS, older_than=30 * DAY, now=100 * DAY)
    assert [i.path.name for i in chosen] == ["old"]


def test_prune_to_a_size_drops_the_least_recently_used_first() -> None:
    chosen = packagecache.select_prune(ITEMS, max_size=70, now=100 * DAY)
    assert [i.path.name for i in chosen] == ["old", "mid"]  # 100 -> 70
    assert packagecache.select_prune(ITEMS, max_size=100, now=100 * DAY) == []
    assert len(packagecache.select_prune(ITEMS, max_size=0, now=100 * DAY)) == 4


def test_prune_both_limits() -> None:
    chosen = packagecache.select_prune(ITEMS, older_than=5 * DAY, max_size=40, now=100 * DAY)
    assert [i.path.name for i in chosen] == ["old", "mid", "new"]


def test_prune_deletes_files_and_npm_dirs(tmp_path: Path) -> None:
    deb = tmp_path / "x.deb"
    deb.write_bytes(b"12345")
    npm = tmp_path / "npm"
    (npm / "a").mkdir(parents=True)
    freed = packagecache.prune(tmp_path, [Item(deb, "k", "apt", 5, 0.0),
                                          Item(npm, "k", "npm", 3, 0.0)])  # fmt: skip
    assert freed == 8 and not deb.exists() and not npm.exists()


DURATIONS = [("30d", 30 * DAY), ("12h", 43200.0), ("2w", 14 * DAY), ("90m", 5400.0),
             ("45s", 45.0), ("7", 7 * DAY)]  # fmt: skip


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_durations(text: str, seconds: float) -> None:
    assert packagecache.parse_duration(text) == seconds


def test_a_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration: '3 days'"):
        packagecache.parse_duration("3 days")


# --- what the guest is told ---------------------------------------------------------


SMOKE = cloudinit.RenderInputs(profile="smoke", arch="amd64", distro="debian",
                               build_ssh_public_key=KEY)  # fmt: skip
FULL = cloudinit.RenderInputs(profile="full", arch="arm64", build_ssh_public_key=KEY)


def _user_data(inputs: cloudinit.RenderInputs) -> dict[str, object]:
    doc = yaml.safe_load(cloudinit.render(inputs)["user-data"])
    assert isinstance(doc, dict)
    return doc


def test_without_the_cache_the_document_is_as_before() -> None:
    doc = _user_data(SMOKE)
    assert "bootcmd" not in doc
    assert "package-cache" not in cloudinit.render(SMOKE)["user-data"].decode()


def test_with_the_cache_the_shares_are_mounted_before_packages_install() -> None:
    doc = _user_data(dataclasses.replace(SMOKE, package_cache=True))
    assert doc["bootcmd"] == [
        ["mkdir", "-p", packagecache.GUEST_CACHE, packagecache.GUEST_NEW,
         "/var/cache/apt/archives"],
        ["mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=262144,ro",
         "pkgcache", packagecache.GUEST_CACHE],
        ["mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,msize=262144",
         "pkgnew", packagecache.GUEST_NEW],
        ["find", f"{packagecache.GUEST_CACHE}/apt", "-maxdepth", "1", "-name", "*.deb", "-exec",
         "ln", "-sf", "-t", "/var/cache/apt/archives", "{}", "+"],
    ]  # fmt: skip
    runcmd = doc["runcmd"]
    assert isinstance(runcmd, list)
    copy_out = ["find", "/var/cache/apt/archives", "-maxdepth", "1", "-type", "f", "-name", "*.deb",
                "-exec", "cp", "-t", f"{packagecache.GUEST_NEW}/apt", "{}", "+"]  # fmt: skip
    verify = runcmd.index(cloudinit.verify_packages_command())
    # Right after apt is done (the package check), before pip or npm (a later
    # stage) could put anything else there.
    assert runcmd.index(copy_out) == verify + 1
    umount = ["umount", packagecache.GUEST_CACHE, packagecache.GUEST_NEW]
    # Unmounted before the marker: QEMU will not save a VM with a mounted 9p share.
    assert runcmd.index(umount) < len(runcmd) - 1
    apt = doc["apt"]
    assert isinstance(apt, dict)
    assert 'APT::Keep-Downloaded-Packages "true";' in apt["conf"]


def test_with_the_cache_pip_installs_offline_from_what_it_gathered() -> None:
    lists = commands(stage(dataclasses.replace(FULL, package_cache=True), "libraries"))
    # The "libraries" stage mounts the shares itself and unmounts them at its end.
    mounts = [c for c in lists if c[0] == "mount"]
    assert [c[-2:] for c in mounts] == [["pkgcache", packagecache.GUEST_CACHE],
                                        ["pkgnew", packagecache.GUEST_NEW]]  # fmt: skip
    assert lists[-2:] == [["umount", packagecache.GUEST_CACHE, packagecache.GUEST_NEW], ["sync"]]
    assert not any(c[0] == "mount" for c in commands(stage(FULL, "libraries")))
    # pip wheel, not download: an allowed sdist becomes a wheel while the index is
    # at hand, so the offline install never needs a build backend it cannot fetch.
    download = next(i for i in lists if i[:4] == ["python3", "-m", "pip", "wheel"])
    install = next(i for i in lists if i[:4] == ["python3", "-m", "pip", "install"])
    assert download[4:8] == ["--wheel-dir", cloudinit.PIP_DOWNLOAD_DIR, "--find-links",
                             f"{packagecache.GUEST_CACHE}/pip"]  # fmt: skip
    assert install[4:8] == ["--ignore-installed", "--no-index", "--find-links",
                            cloudinit.PIP_DOWNLOAD_DIR]  # fmt: skip
    assert download[download.index("--constraint") :] == install[install.index("--constraint") :]
    npm = next(i for i in lists if i[:2] == ["npm", "install"])
    assert npm[npm.index("--cache") + 1] == cloudinit.NPM_CACHE_DIR
    assert "--prefer-offline" in npm
    assert ["cp", "-R", f"{cloudinit.NPM_CACHE_DIR}/.", f"{packagecache.GUEST_NEW}/npm"] in lists


# --- what a hostile guest may leave in its outbox (pkgnew is guest-writable) --------

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- host secret"


def _host_secrets(tmp_path: Path) -> Path:
    """A host folder a guest would like copied into the cache (like /root)."""
    home = tmp_path / "host-root"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_bytes(SECRET)
    # Names fill_back would take, should it look inside.
    (home / "jq_1_amd64.deb").write_bytes(SECRET)
    (home / "evil-1-py3-none-any.whl").write_bytes(SECRET)
    return home


def _seeded_cache(tmp_path: Path) -> Path:
    """A cache with a file of each kind already in it: a refusal must leave it as it is."""
    root = tmp_path / "cache" / "packages" / "k"
    for kind in ("apt", "pip", "npm"):
        (root / kind).mkdir(parents=True)
    (root / "apt" / "old_1_amd64.deb").write_bytes(b"old deb")
    (root / "npm" / "old-index").write_bytes(b"old npm")
    return tmp_path / "cache"


def _snapshot(tree: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(tree)): None if p.is_dir() else p.read_bytes()
        for p in sorted(tree.rglob("*"))
        if p.name != ".lock"
    }


def _refused(tmp_path: Path, new: Path, what: str) -> None:
    """fill_back refuses the whole outbox, and the cache holds exactly what it held."""
    cache = _seeded_cache(tmp_path)
    before = _snapshot(cache)
    # Good files beside the bad one: they are refused too (nothing of this outbox).
    (new / "apt").mkdir(exist_ok=True)
    (new / "apt" / "good_1_amd64.deb").write_bytes(b"deb")
    with pytest.raises(packagecache.RefusedOutbox, match=what):
        packagecache.fill_back(cache, "k", new)
    assert _snapshot(cache) == before
    for path in cache.rglob("*"):
        assert SECRET not in (b"" if path.is_dir() else path.read_bytes()), path


@pytest.mark.parametrize("kind", ["apt", "pip", "npm"])
def test_a_symlinked_kind_folder_is_refused(tmp_path: Path, kind: str) -> None:
    # The reported attack: `ln -s /root pkgnew/npm` in the build VM.
    new = tmp_path / "new"
    new.mkdir()
    (new / kind).symlink_to(_host_secrets(tmp_path))
    _refused(tmp_path, new, rf"^{kind}: a symlink \(only")


def test_a_symlinked_folder_below_a_kind_is_refused(tmp_path: Path) -> None:
    new = _outbox(tmp_path)
    (new / "npm" / "content-v2").mkdir()
    (new / "npm" / "content-v2" / "sha512").symlink_to(_host_secrets(tmp_path))
    _refused(tmp_path, new, r"^npm/content-v2/sha512: a symlink \(only")


def test_a_symlinked_outbox_is_refused(tmp_path: Path) -> None:
    new = tmp_path / "new"
    new.symlink_to(_host_secrets(tmp_path))
    cache = _seeded_cache(tmp_path)
    before = _snapshot(cache)
    with pytest.raises(packagecache.RefusedOutbox, match=r"a symlink \(only"):
        packagecache.fill_back(cache, "k", new)
    assert _snapshot(cache) == before


@pytest.mark.parametrize("where", ["apt/jq_1_amd64.deb", "pip/evil-1-py3-none-any.whl",
                                   "npm/index-v5/entry"])  # fmt: skip
def test_a_symlink_to_a_file_is_refused(tmp_path: Path, where: str) -> None:
    new = _outbox(tmp_path)
    link = new / where
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(_host_secrets(tmp_path) / ".ssh" / "id_ed25519")
    _refused(tmp_path, new, rf"^{where}: a symlink \(only")


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    new = _outbox(tmp_path)
    os.mkfifo(new / "apt" / "fifo_1_amd64.deb")  # opening it to read would hang
    _refused(tmp_path, new, r"^apt/fifo_1_amd64.deb: a FIFO \(only")


def test_a_socket_is_refused(tmp_path: Path) -> None:
    new = _outbox(tmp_path)
    (new / "npm" / "s").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(new / "npm" / "s" / "sock"))
        _refused(tmp_path, new, r"^npm/s/sock: a socket \(only")


def test_a_device_node_is_refused(tmp_path: Path) -> None:
    new = _outbox(tmp_path)
    try:
        os.mknod(new / "pip" / "null-1-py3-none-any.whl", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod needs root (CAP_MKNOD); the unit tier runs as root in CI")
    _refused(tmp_path, new, r"^pip/null-1-py3-none-any.whl: a character device \(only")


def test_a_hardlink_to_a_host_file_is_refused(tmp_path: Path) -> None:
    # A guest can only link inside its share; a second name is refused all the same.
    new = _outbox(tmp_path)
    os.link(_host_secrets(tmp_path) / ".ssh" / "id_ed25519", new / "apt" / "key_1_amd64.deb")
    _refused(tmp_path, new, "^apt/key_1_amd64.deb: a file with 2 names")


def test_a_too_deep_tree_is_refused(tmp_path: Path) -> None:
    new = _outbox(tmp_path)
    deep = new / "npm" / "/".join(["d"] * 40)
    deep.mkdir(parents=True)
    _refused(tmp_path, new, "deeper than 32 levels")


def test_set_id_bits_and_odd_modes_are_not_copied(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    new = _outbox(tmp_path)
    deb = new / "apt" / "suid_1_amd64.deb"
    deb.write_bytes(b"deb")
    deb.chmod(0o6755)
    (new / "npm" / "content-v2").mkdir()
    (new / "npm" / "content-v2").chmod(0o3777)
    blob = new / "npm" / "content-v2" / "blob"
    blob.write_bytes(b"npm")
    blob.chmod(0o4700)
    packagecache.fill_back(cache, "k", new)
    root = cache / "packages" / "k"
    assert stat.S_IMODE((root / "apt" / "suid_1_amd64.deb").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "npm" / "content-v2").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "npm" / "content-v2" / "blob").stat().st_mode) == 0o644
    assert (root / "npm" / "content-v2" / "blob").read_bytes() == b"npm"


def _fill_with_a_size_limit(cache: Path, new: Path, limit: int) -> int:
    """fill_back in a forked child whose file size limit makes a write fail (EFBIG)."""
    pid = os.fork()
    if pid == 0:  # the child: no return from here, whatever happens
        code = 0
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            packagecache.fill_back(cache, "k", new)
        except OSError as exc:
            code = exc.errno or 1
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.allow_subprocess  # a fork, no exec: the child sets its own file size limit
def test_a_fill_back_that_fails_half_way_leaves_no_partial_file(tmp_path: Path) -> None:
    # A real write failure mid-copy (past the file size limit).
    cache = _seeded_cache(tmp_path)
    new = _outbox(tmp_path)
    (new / "apt" / "a_1_amd64.deb").write_bytes(b"a" * 100)
    (new / "apt" / "b_1_amd64.deb").write_bytes(b"b" * 10000)  # past the limit
    assert _fill_with_a_size_limit(cache, new, 4096) == errno.EFBIG
    apt = cache / "packages" / "k" / "apt"
    # Each file is whole or absent: the first one landed, the second left nothing.
    assert sorted(p.name for p in apt.iterdir()) == ["a_1_amd64.deb", "old_1_amd64.deb"]
    # The npm cache is replaced whole or not at all.
    (new / "apt" / "b_1_amd64.deb").unlink()
    (new / "npm" / "content-v2").mkdir()
    (new / "npm" / "content-v2" / "big").write_bytes(b"n" * 10000)
    assert _fill_with_a_size_limit(cache, new, 4096) == errno.EFBIG
    npm = cache / "packages" / "k" / "npm"
    assert [p.name for p in npm.iterdir()] == ["old-index"]
    assert sorted(p.name for p in npm.parent.iterdir()) == ["apt", "npm", "pip"]
