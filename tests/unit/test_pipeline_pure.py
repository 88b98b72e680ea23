from __future__ import annotations

from pathlib import Path

from image.build import pipeline


def test_failing_modules_from_status_json() -> None:
    status = {"v1": {
        "init": {"errors": []},
        "modules-final": {"errors": [
            "('scripts_user', RuntimeError('Runparts: 1 failures (runcmd)'))",
            "('package_update_upgrade_install', ProcessExecutionError(...))",
        ]},
        "stage": None,
    }}  # fmt: skip
    assert pipeline.failing_modules(status) == ["scripts_user", "package_update_upgrade_install"]
    assert pipeline.failing_modules({}) == []


def test_parse_self_test_takes_the_last_json_line() -> None:
    assert pipeline.parse_self_test('noise\n{"ok": true, "arch": "x86_64"}\n') == {
        "ok": True, "arch": "x86_64"}  # fmt: skip
    assert pipeline.parse_self_test("Traceback ...")["ok"] is False
    assert pipeline.parse_self_test("")["ok"] is False


def test_generalize_removes_the_build_user_last_and_host_keys() -> None:
    steps = list(pipeline.GENERALIZE)
    userdel = next(i for i, s in enumerate(steps) if s.startswith("userdel"))
    # After the build user goes, only its sudo rule and the final sync remain.
    assert steps[userdel + 1 :] == ["rm -f /etc/sudoers.d/90-cloud-init-users", "sync"]
    assert "rm -f /etc/ssh/ssh_host_*" in steps
    assert "truncate -s 0 /etc/machine-id" in steps
    assert steps.index("cloud-init clean --logs") < userdel


def test_compaction_writes_one_zstd_compressed_qcow2() -> None:
    assert pipeline.compact_argv(Path("/w/disk.qcow2"), Path("/o/image.qcow2")) == [
        "convert", "-c", "-o", "compression_type=zstd", "-O", "qcow2",
        "/w/disk.qcow2", "/o/image.qcow2",
    ]  # fmt: skip
