"""The skills: folders of instructions and scripts the agent reads at /opt/skills.

Every build ships the project's ``skills/``; ``--skills DIR`` adds a folder of
one's own (a skill of the same name replaces the project's), and
``--no-default-skills`` leaves the project's out. ``pack()`` merges them into
one deterministic tar.gz (sorted, mtime 0, root-owned, directories and
executables 0755, files 0644) holding, besides the skills, ``index.json`` and
``INDEX.md``: each skill's name, description and path, so an agent finds them
from ``$SKILLS_DIR`` alone. The archive travels as its own file on the seed
medium (not inside user-data), so its size is no seed limit.

A skill is a top-level folder with a ``SKILL.md`` whose YAML front matter
names it (``name`` equal to the folder's name) and says when to use it
(``description``). Folders whose name starts with ``_`` hold what several
skills share (``_lib/soffice.py``) and are shipped but not indexed. ``fetch()``
turns a published tarball (URL + SHA-256) into such a folder, cached by its
checksum.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from image.contract import guest
from image.errors import ImageError

log = logging.getLogger(__name__)

PROJECT_SKILLS = Path(__file__).resolve().parents[2] / "skills"
GUEST_DIR = guest.SKILLS_DIR
ENV_VAR = guest.SKILLS_ENV
INDEX_JSON = "index.json"
INDEX_MD = "INDEX.md"
# Carried as its own file on the seed ISO, not inside user-data: generous, but
# bounded so a wrong folder (a home directory) fails here, not in the guest.
MAX_ARCHIVE = 512 << 20
MAX_DOWNLOAD = 512 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Skill:
    name: str
    description: str
    folder: Path  # where it comes from on the host
    sha256: str  # of its files: names, executable bits and contents
    files: int

    @property
    def path(self) -> str:
        return f"{GUEST_DIR}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "path": self.path,
                "sha256": self.sha256, "files": self.files}  # fmt: skip


def merged(dirs: Sequence[Path]) -> dict[str, Path]:
    """Top-level name -> folder, the later ``dirs`` winning for a name they share."""
    entries: dict[str, Path] = {}
    for root in dirs:
        if not root.is_dir():
            raise ImageError(f"skills folder {root} is not a directory",
                             hint="pass --skills DIR with an existing folder")  # fmt: skip
        for child in sorted(root.iterdir(), key=lambda p: p.name):
            if child.name.startswith("."):
                continue
            if not child.is_dir() or child.is_symlink():
                raise ImageError(
                    f"{child}: a skills folder holds only folders (one per skill, or "
                    "_name for what skills share)",
                    hint="move the file into the skill it belongs to",
                )  # fmt: skip
            if not _NAME.fullmatch(child.name.lstrip("_")):
                raise ImageError(f"{child}: not a skill name (a-z, 0-9, - and _)")
            if child.name in entries:
                log.info("skill %s: %s replaces %s", child.name, child, entries[child.name])
            entries[child.name] = child
    return entries


def front_matter(skill_md: Path) -> dict[str, Any]:
    """The YAML between the first two ``---`` lines of a SKILL.md."""
    try:
        text = skill_md.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImageError(f"{skill_md}: {exc.strerror}",
                         hint="every skill folder needs a SKILL.md") from None  # fmt: skip
    m = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    if not m:
        raise ImageError(
            f"{skill_md}: no front matter",
            hint="start it with ---, name: and description: lines, then ---",
        )
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        raise ImageError(f"{skill_md}: front matter is not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ImageError(f"{skill_md}: front matter is not a mapping")
    return data


def tree_sha256(folder: Path) -> tuple[str, int]:
    """SHA-256 over each file's relative path, executable bit and content; file count."""
    digest = hashlib.sha256()
    count = 0
    for path in _walk_sorted(folder):
        if path.is_file() and not path.is_symlink():
            content = hashlib.sha256(path.read_bytes()).hexdigest()
            mode = "x" if path.stat().st_mode & 0o111 else "-"
            digest.update(f"{path.relative_to(folder).as_posix()}\0{mode}\0{content}\n".encode())
            count += 1
    return digest.hexdigest(), count


def describe(dirs: Sequence[Path]) -> list[Skill]:
    """The skills the merged folders hold, checked: each has its SKILL.md, named right."""
    found = []
    for name, folder in merged(dirs).items():
        if name.startswith("_"):
            continue
        meta = front_matter(folder / "SKILL.md")
        if meta.get("name") != name:
            raise ImageError(
                f"{folder}/SKILL.md: name is {meta.get('name')!r}, the folder {name!r}",
                hint="the front matter's name is the folder's name",
            )
        description = meta.get("description")
        if not isinstance(description, str) or not description.strip():
            raise ImageError(
                f"{folder}/SKILL.md: no description",
                hint="say in a sentence what the skill does and when to use it",
            )
        sha, count = tree_sha256(folder)
        found.append(Skill(name, " ".join(description.split()), folder, sha, count))
    return found


def index_files(found: Sequence[Skill]) -> dict[str, bytes]:
    """index.json and INDEX.md, as the guest sees them at the top of GUEST_DIR."""
    doc = {"skills_dir": GUEST_DIR, "skills": [
        {"name": s.name, "description": s.description, "path": s.path,
         "skill_md": f"{s.path}/SKILL.md"} for s in found]}  # fmt: skip
    lines = [
        "# Skills", "",
        f"Each folder under {GUEST_DIR} (also ${ENV_VAR}) is a skill: read its SKILL.md,",
        "then run the scripts it names. Read-only; write your files in the workspace.", "",
        *(f"- **{s.name}** ({s.path}/SKILL.md): {s.description}" for s in found), "",
    ]  # fmt: skip
    return {
        INDEX_JSON: (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(),
        INDEX_MD: "\n".join(lines).encode(),
    }


def pack(dirs: Path | Sequence[Path], limit: int = MAX_ARCHIVE) -> bytes:
    """The deterministic tar.gz of the merged skills folders plus their index.

    Symlinks and special files are refused: the folder is data the sandbox
    reads, and a link could point it anywhere in the guest.
    """
    roots = [dirs] if isinstance(dirs, Path) else list(dirs)
    found = describe(roots)
    buffer = io.BytesIO()
    # mtime=0 and no file name in the gzip header: same input, same bytes.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        for name, content in index_files(found).items():
            tar.addfile(_info(name, 0o644, len(content)), io.BytesIO(content))
        for name, folder in merged(roots).items():
            tar.addfile(_info(name, 0o755))
            for path in _walk_sorted(folder):
                _add(tar, path, f"{name}/{path.relative_to(folder).as_posix()}")
                if buffer.tell() > limit:
                    raise _too_large(roots, f"more than {limit} bytes compressed")
    data = buffer.getvalue()
    if len(data) > limit:
        raise _too_large(roots, f"{len(data)} bytes compressed, limit {limit}")
    return data


def _info(name: str, mode: int, size: int | None = None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    info.mode = mode
    if size is None:
        info.type = tarfile.DIRTYPE
    else:
        info.size = size
    return info


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode):
        tar.addfile(_info(name, 0o755))
    elif stat.S_ISREG(st.st_mode):
        with path.open("rb") as f:
            tar.addfile(_info(name, 0o755 if st.st_mode & 0o111 else 0o644, st.st_size), f)
    else:
        raise ImageError(
            f"skills folder holds something that is not a file or directory: {path}",
            hint="replace symlinks and special files by plain files",
        )


def _too_large(roots: Sequence[Path], detail: str) -> ImageError:
    return ImageError(
        f"skills folder(s) {', '.join(map(str, roots))} too large ({detail})",
        hint="keep large assets out of the skills folder, or install them from a package",
    )


def _walk_sorted(root: Path) -> Iterator[Path]:
    for child in sorted(root.iterdir(), key=lambda p: p.name):
        if child.name == "__pycache__" or child.name.startswith("."):
            continue  # what running the scripts here left behind
        yield child
        if child.is_dir() and not child.is_symlink():
            yield from _walk_sorted(child)


def fetch(url: str, sha256: str, cache_dir: Path, timeout: float = 60.0) -> Path:
    """Download a skills tarball, check its SHA-256, unpack it; return the folder.

    Cached under ``cache_dir/skills/<sha256>``: the same checksum is never
    downloaded twice. The folder appears only complete (unpacked next to it,
    then renamed), so an interrupted run leaves no half folder in the cache.
    """
    want = sha256.strip().lower()
    if not _SHA256.fullmatch(want):
        raise ImageError(
            f"not a SHA-256 checksum: {sha256!r}", hint="give the 64 hex digits of sha256sum"
        )
    if not re.fullmatch(r"https?://\S+", url):
        raise ImageError(
            f"skills URL must be http:// or https://, got {url!r}",
            hint="for a local folder use --skills DIR",
        )
    target = cache_dir / "skills" / want
    if target.is_dir():
        return target
    data = _download(url, timeout)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ImageError(
            f"skills tarball from {url} has SHA-256 {got}, expected {want}",
            hint="the file changed or the checksum is wrong; check where it is published",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{want[:12]}.", dir=target.parent))
    try:
        _unpack(data, url, staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _download(url: str, timeout: float) -> bytes:
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            response.raise_for_status()
            chunks, size = [], 0
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > MAX_DOWNLOAD:
                    raise ImageError(
                        f"skills tarball at {url} is larger than {MAX_DOWNLOAD} bytes",
                        hint="a skills folder travels in the seed; keep it small",
                    )
                chunks.append(chunk)
    except requests.RequestException as exc:
        raise ImageError(
            f"cannot download the skills tarball {url}: {exc}",
            hint="check the URL and the network (or proxy) of this host",
        ) from None
    return b"".join(chunks)


def _unpack(data: bytes, url: str, into: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        raise ImageError(
            "this Python cannot unpack archives safely (tarfile has no 'data' filter)",
            hint="use Python 3.10.12, 3.11.4 or newer",
        )
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            # The 'data' filter refuses absolute paths, '..', links leaving the
            # folder and device files: a tarball from a URL is untrusted.
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ImageError(
            f"cannot unpack the skills tarball from {url}: {exc}",
            hint="publish a .tar.gz (or .tar) holding the skills folder's contents",
        ) from None
