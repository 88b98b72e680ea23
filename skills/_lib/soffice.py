"""LibreOffice for the skills' scripts: through LibreOfficeKit, a private profile, a timeout.

Why not ``soffice --headless --convert-to``: at start-up the desktop application
always creates its single-instance pipe, a Unix socket, and gives up (exit 1,
nothing written, nothing said) when it cannot. The sandbox refuses Unix sockets
to the commands it runs (its second seccomp filter), so there the command line
can never convert. LibreOfficeKit, the library LibreOffice ships for embedding it
(``libreofficekit_hook_2`` in ``libmergedlo.so`` / ``libsofficeapp.so``), starts
without that pipe. Python has no binding for it in the image, so its C entry
points are called with ctypes: only the first members of its two function tables
(``documentLoad``, ``getError``; ``saveAs``), which LibreOffice keeps stable
(each table starts with its size; new members are only appended).

Each conversion runs in a child process of its own (LibreOfficeKit starts once
per process and does not stop cleanly), in a session of its own so a conversion
that hangs (a broken file) is killed whole when the timeout ends, with a profile
of its own in a temporary folder so concurrent runs never share state.

Standard library only; imported by the skills' scripts from ``../_lib``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_TIMEOUT = 300.0
LIBRARIES = ("libmergedlo.so", "libsofficeapp.so")


class OfficeError(Exception):
    """A conversion that failed, timed out, or wrote nothing; the message says which."""


def program_dir() -> Path:
    """LibreOffice's program folder (where soffice really lives)."""
    for name in ("soffice", "libreoffice"):
        found = shutil.which(name)
        if found:
            folder = Path(os.path.realpath(found)).parent
            if any((folder / lib).is_file() for lib in LIBRARIES):
                return folder
    for folder in (Path("/usr/lib/libreoffice/program"), Path("/opt/libreoffice/program")):
        if any((folder / lib).is_file() for lib in LIBRARIES):
            return folder
    raise OfficeError("LibreOffice is not installed (no libmergedlo.so or libsofficeapp.so)")


def convert(
    source: Path, target_format: str, out_dir: Path, *, timeout: float = DEFAULT_TIMEOUT
) -> Path:
    """Convert ``source`` to ``target_format`` (``pdf``, ``xlsx``, ``docx``...); return
    the file written, ``out_dir/<source stem>.<format>``."""
    if not source.is_file():
        raise OfficeError(f"{source}: no such file")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = out_dir / f"{source.stem}.{target_format}"
    with tempfile.TemporaryDirectory(prefix="lok-profile-") as profile:
        argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            str(program_dir()),
            profile,
            str(source.resolve()),
            str(written.resolve()),
            target_format,
        ]
        # HOME: fontconfig and friends write caches; the profile folder takes them.
        env = {**os.environ, "HOME": profile, "SAL_USE_VCLPLUGIN": "svp"}
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise OfficeError(
                f"LibreOffice did not finish converting {source.name} within {timeout:.0f} s"
            ) from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if proc.returncode != 0 or not written.is_file():
        lines = err.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise OfficeError(
            f"LibreOffice could not convert {source.name} to {target_format}: {reason}"
        )
    return written


# --- the child: LibreOfficeKit's C API through ctypes ------------------------------


class _DocumentClass(ctypes.Structure):
    pass


class _Document(ctypes.Structure):
    _fields_ = [("pClass", ctypes.POINTER(_DocumentClass))]


_DocumentClass._fields_ = [
    ("nSize", ctypes.c_size_t),
    ("destroy", ctypes.CFUNCTYPE(None, ctypes.POINTER(_Document))),
    (
        "saveAs",
        ctypes.CFUNCTYPE(
            ctypes.c_int,
            ctypes.POINTER(_Document),
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
        ),
    ),
]


class _KitClass(ctypes.Structure):
    pass


class _Kit(ctypes.Structure):
    _fields_ = [("pClass", ctypes.POINTER(_KitClass))]


_KitClass._fields_ = [
    ("nSize", ctypes.c_size_t),
    ("destroy", ctypes.CFUNCTYPE(None, ctypes.POINTER(_Kit))),
    (
        "documentLoad",
        ctypes.CFUNCTYPE(ctypes.POINTER(_Document), ctypes.POINTER(_Kit), ctypes.c_char_p),
    ),
    ("getError", ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.POINTER(_Kit))),
]


def _child(program: str, profile: str, source: str, target: str, target_format: str) -> int:
    library = next(Path(program, n) for n in LIBRARIES if Path(program, n).is_file())
    hook = ctypes.CDLL(str(library)).libreofficekit_hook_2
    hook.restype = ctypes.POINTER(_Kit)
    hook.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    kit = hook(program.encode(), Path(profile).as_uri().encode())
    if not kit:
        print("LibreOfficeKit did not start", file=sys.stderr)
        return 1
    document = kit.contents.pClass.contents.documentLoad(kit, Path(source).as_uri().encode())
    if not document:
        error = kit.contents.pClass.contents.getError(kit)
        print(
            (error or b"the document did not load").decode(errors="replace").strip(),
            file=sys.stderr,
        )
        return 1
    saved = document.contents.pClass.contents.saveAs(
        document, Path(target).as_uri().encode(), target_format.encode(), None
    )
    if not saved:
        error = kit.contents.pClass.contents.getError(kit)
        print((error or b"saving failed").decode(errors="replace").strip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    code = _child(*sys.argv[1:6])
    sys.stderr.flush()
    # os._exit: LibreOfficeKit's threads do not stop cleanly; the file is written and closed.
    os._exit(code)
