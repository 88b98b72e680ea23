"""LibreOffice headless for the skills' scripts: one private profile per run, a hard timeout.

soffice keeps one profile (and a lock in it) per user: two conversions started at
once by the same user would collide, and the second would hand its work to the
first and exit 0 having written nothing. Each run here gets a profile of its own
in a temporary folder (``-env:UserInstallation``), so runs never share state, and
runs in a process group of its own, so a conversion that hangs (a broken file, a
dialog headless mode still waits for) is killed whole when the timeout ends.

Standard library only; imported by the skills' scripts from ``../_lib``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

DEFAULT_TIMEOUT = 300.0


class OfficeError(Exception):
    """A conversion that failed, timed out, or wrote nothing; the message says which."""


def soffice_binary() -> str:
    for name in ("soffice", "libreoffice"):
        found = shutil.which(name)
        if found:
            return found
    raise OfficeError("LibreOffice (soffice) is not installed")


def convert(
    source: Path,
    target_format: str,
    out_dir: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    filter_options: str | None = None,
) -> Path:
    """Convert ``source`` with ``soffice --convert-to``; return the file it wrote.

    ``target_format`` is what --convert-to takes (``pdf``, ``xlsx``, ``csv``...);
    ``filter_options``, when given, follows it after a colon (e.g.
    ``csv:Text - txt - csv (StarCalc):44,34,76,1,,0,false,true,false,false,false,-1``).
    """
    if not source.is_file():
        raise OfficeError(f"{source}: no such file")
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{target_format}:{filter_options}" if filter_options else target_format
    with tempfile.TemporaryDirectory(prefix="soffice-profile-") as profile:
        argv = [
            soffice_binary(),
            f"-env:UserInstallation={Path(profile).as_uri()}",
            "--headless",
            "--invisible",
            "--nologo",
            "--norestore",
            "--nodefault",
            "--nolockcheck",
            "--convert-to",
            spec,
            "--outdir",
            str(out_dir),
            str(source),
        ]
        env = {**os.environ, "HOME": profile}
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
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
    extension = target_format.split(":", 1)[0]
    written = out_dir / f"{source.stem}.{extension}"
    if proc.returncode != 0 or not written.is_file():
        detail = (err or out).decode(errors="replace").strip().splitlines()
        reason = detail[-1] if detail else f"exit code {proc.returncode}"
        raise OfficeError(f"LibreOffice could not convert {source.name} to {extension}: {reason}")
    return written
