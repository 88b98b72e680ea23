from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image import run
from image.run import CommandError


def test_subprocess_is_forbidden_in_unit_tests() -> None:
    with pytest.raises(AssertionError, match="allow_subprocess"):
        subprocess.run(["true"], check=False)


@pytest.mark.allow_subprocess
def test_success_returns_output() -> None:
    result = run.run([sys.executable, "-c", "print('hi')"])
    assert result.stdout == b"hi\n"


@pytest.mark.allow_subprocess
def test_failure_names_command_exit_code_and_stderr_tail() -> None:
    script = "import sys\nfor i in range(100): print('line', i, file=sys.stderr)\nsys.exit(3)"
    with pytest.raises(CommandError) as info:
        run.run([sys.executable, "-c", script])
    err = info.value
    assert err.returncode == 3
    assert "failed with exit code 3" in err.message
    assert sys.executable in err.message
    assert "line 99" in err.message
    assert "line 50" not in err.message  # only the tail
    assert err.message.count("\n") <= run.STDERR_TAIL_LINES + 3


@pytest.mark.allow_subprocess
def test_redaction_reaches_log_and_error(caplog: pytest.LogCaptureFixture) -> None:
    secret = "hunter2-secret"
    script = "import sys; print('token=' + sys.argv[1], file=sys.stderr); sys.exit(1)"
    with caplog.at_level("INFO", logger="image.run"), pytest.raises(CommandError) as info:
        run.run([sys.executable, "-c", script, secret], redact=[secret])
    assert secret not in info.value.message
    assert secret not in caplog.text
    assert "***" in info.value.message
    assert "+ " in caplog.text


@pytest.mark.allow_subprocess
def test_stdin_is_dev_null() -> None:
    result = run.run([sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"])
    assert result.stdout == b"''\n"


@pytest.mark.allow_subprocess
def test_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_LEAKY_TOKEN", "x")
    result = run.run([sys.executable, "-c", "import os; print(sorted(os.environ))"])
    assert "SOME_LEAKY_TOKEN" not in result.stdout.decode()
    assert "LC_ALL" in result.stdout.decode()


@pytest.mark.allow_subprocess
def test_timeout_kills_the_whole_group() -> None:
    # The child forks a grandchild that would outlive a plain kill of the child.
    script = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(60)\n"
        "else:\n"
        "    print(pid, flush=True); time.sleep(60)\n"
    )
    start = time.monotonic()
    with pytest.raises(CommandError) as info:
        run.run([sys.executable, "-c", script], timeout=1)
    assert info.value.returncode is None
    assert "timed out" in info.value.message
    assert time.monotonic() - start < 30


@pytest.mark.allow_subprocess
def test_background_leaves_no_process(tmp_path: object) -> None:
    with run.background([sys.executable, "-c", "import time; time.sleep(60)"]) as proc:
        pid = proc.pid
        assert proc.poll() is None
    assert proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.allow_subprocess
def test_background_child_dies_with_its_parent(tmp_path: Path) -> None:
    """Even a SIGKILLed toolkit process leaves no child (QEMU) behind."""
    pidfile = tmp_path / "child.pid"
    parent = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from image import run\n"
        "with run.background([sys.executable, '-c', 'import time; time.sleep(60)']) as p:\n"
        f"    Path({str(pidfile)!r}).write_text(str(p.pid))\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=Path(__file__).parents[2])
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child, 9)
    pytest.fail("the background child outlived its SIGKILLed parent")
