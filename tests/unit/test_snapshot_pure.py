from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from image.contract import vmstate
from image.errors import ImageError
from image.runtime import snapshot
from image.vm import qemu


def _spec(tmp: Path, **kw: object) -> qemu.VMSpec:
    spec = snapshot.runtime_spec(
        "amd64", 4, 4 << 30, ["-accel", "tcg,thread=multi"], tmp / "work", tmp / "snap",
        share=qemu.Share(tmp / "share", "share"), session_disk=tmp / "session.raw",
        disk=tmp / "disk.qcow2", vars_file=tmp / "vars.fd", firmware_code=Path("/fw/CODE.fd"),
        memory_private=False, sockets=tmp / "egress",
    )  # fmt: skip
    return replace(spec, **kw)  # type: ignore[arg-type]


def test_runtime_shape_is_restricted_with_agent_share_and_session_slot(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(_spec(tmp_path))
    sockets = tmp_path / "egress"
    # No network but the host proxy: restrict=on, and exactly two guestfwd rules.
    assert (
        "user,id=net0,restrict=on,"
        f"guestfwd=tcp:10.0.2.100:3128-cmd:socat - UNIX-CONNECT:{sockets}/http.sock,"
        f"guestfwd=tcp:10.0.2.100:1080-cmd:socat - UNIX-CONNECT:{sockets}/socks.sock"
    ) in argv
    assert not any("hostfwd" in a for a in argv)
    assert any("org.qemu.guest_agent.0" in a for a in argv)
    assert any(a.startswith("virtio-9p-pci") for a in argv)
    assert "virtio-blk-pci,drive=session,serial=session" in argv
    assert any("memory-backend-file" in a and "share=on" in a for a in argv)
    assert "vmgenid,guid=auto" in argv


def test_device_hash_ignores_paths_and_launch_only_options(tmp_path: Path) -> None:
    snap = _spec(tmp_path)
    launch = _spec(tmp_path / "elsewhere", memory_private=True, incoming="defer",
                   share=qemu.Share(tmp_path / "other", "share", readonly=True),
                   accel=snapshot.with_tb_size(snap.accel, 64))  # fmt: skip
    assert launch.accel == ("-accel", "tcg,thread=multi,tb-size=64")
    assert "tcg,thread=multi,tb-size=64" in qemu.qemu_argv(launch)
    assert vmstate.device_hash(snap) == vmstate.device_hash(launch)


def test_loadvm_is_a_launch_option_but_qcow2_disks_are_another_device_set(
    tmp_path: Path,
) -> None:
    saved = _spec(tmp_path, memory_file=None, internal_snapshots=True)
    assert vmstate.device_hash(saved) == vmstate.device_hash(replace(saved, loadvm="ready"))
    assert vmstate.device_hash(saved) != vmstate.device_hash(_spec(tmp_path, memory_file=None))


def test_tb_size_is_only_for_tcg() -> None:
    kvm = ("-accel", "kvm")
    assert snapshot.with_tb_size(kvm, 64) == kvm
    assert snapshot.with_tb_size(("-accel", "tcg"), None) == ("-accel", "tcg")


def test_device_hash_sees_a_different_device_set(tmp_path: Path) -> None:
    base = vmstate.device_hash(_spec(tmp_path))
    assert vmstate.device_hash(_spec(tmp_path, cpus=2)) != base
    assert vmstate.device_hash(_spec(tmp_path, memory=1 << 30)) != base
    assert vmstate.device_hash(_spec(tmp_path, net_restrict=False)) != base
    assert vmstate.device_hash(_spec(tmp_path, guestfwd=())) != base


def test_personalize_is_one_request_with_fresh_entropy() -> None:
    first = snapshot.personalize_request("sandbox-1", True)
    second = snapshot.personalize_request("sandbox-1", True)
    assert len(first["entropy"]) == 64 and first["entropy"] != second["entropy"]
    assert abs(first["time_ns"] - time.time_ns()) < 10**9
    share, session, workspace = first["mounts"]
    assert (share["source"], share["target"], share["fstype"], share["readonly"]) == (
        "share", "/mnt/share", "9p", True)  # fmt: skip
    assert "trans=virtio" in share["options"]
    assert (session["source"], session["target"]) == ("/dev/disk/by-id/virtio-session",
                                                      "/sessions")  # fmt: skip
    # The session disk's work/ bound where the snapshot's standby sandbox bound it.
    assert (workspace["source"], workspace["target"], workspace["bind"]) == (
        "/sessions/work", "/workspace", True)  # fmt: skip
    assert snapshot.personalize_request("b", False)["mounts"][0]["readonly"] is False


def test_parse_launch_options(tmp_path: Path) -> None:
    opts = snapshot.parse_launch_options(f"{tmp_path}:ro", "2G", "box-1", ["echo", "hi"], 60)
    assert opts.share == tmp_path.resolve()
    assert opts.share_readonly is True
    assert opts.session_size == 2 << 30
    assert opts.command == ("echo", "hi")
    rw = snapshot.parse_launch_options(str(tmp_path), "10G", None, [], 60)
    assert rw.share_readonly is False and rw.hostname is None
    assert rw.policy.file.name == "launch.policy" and rw.audit_log is None
    audited = snapshot.parse_launch_options(None, "1G", None, [], 60, None, str(tmp_path / "a.log"))
    assert audited.audit_log == tmp_path / "a.log"


@pytest.mark.parametrize(
    ("share", "size", "hostname", "fragment"),
    [
        ("/nonexistent/dir", "1G", None, "not a directory"),
        (None, "lots", None, "--session-disk"),
        (None, "1G", "Bad_Name", "not a host name"),
    ],
)
def test_bad_launch_options_are_errors(
    share: str | None, size: str, hostname: str | None, fragment: str
) -> None:
    with pytest.raises(ImageError, match=fragment):
        snapshot.parse_launch_options(share, size, hostname, [], 60)


def test_a_directory_without_snapshot_json_is_not_a_snapshot(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is not a snapshot"):
        snapshot.load_meta(tmp_path)
    (tmp_path / "snapshot.json").write_text("{not json")
    with pytest.raises(ImageError, match="damaged"):
        snapshot.load_meta(tmp_path)


# --- which architecture an image boots as --------------------------------------------

NAME = "sandbox-image-jammy-amd64-smoke.qcow2"


def _built(folder: Path, arch: str = "amd64", listed: bool = True) -> Path:
    """A build output's folder as snapshot reads it: the image's header, build-info."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    image = folder / NAME
    image.write_bytes(snapshot.QCOW2_MAGIC + bytes(508))
    outputs = {NAME: "0" * 64} if listed else {}
    info = {"config": {"arch": arch}, "outputs": outputs}
    (folder / "build-info.json").write_text(json.dumps(info))
    (folder / "manifest.json").write_text("{}")
    return image


def test_the_image_s_own_build_output_decides_its_architecture(tmp_path: Path) -> None:
    image = _built(tmp_path / "out")
    # arm64 is only the default: the image says amd64, so amd64 it is.
    assert snapshot.image_arch(image, "arm64", explicit=False) == "amd64"
    assert snapshot.image_arch(image, "amd64", explicit=True) == "amd64"


def test_an_explicit_architecture_the_image_was_not_built_for_is_refused(tmp_path: Path) -> None:
    image = _built(tmp_path / "out")
    with pytest.raises(ImageError, match="built for amd64, not arm64") as info:
        snapshot.image_arch(image, "arm64", explicit=True)
    assert "--arch amd64" in (info.value.hint or "")


def test_an_image_without_its_build_output_boots_as_asked(tmp_path: Path) -> None:
    alone = tmp_path / "alone.qcow2"
    alone.write_bytes(snapshot.QCOW2_MAGIC + bytes(508))
    assert snapshot.image_arch(alone, "arm64", explicit=False) == "arm64"
    # build-info of another image in the same folder says nothing about this one
    other = _built(tmp_path / "out", listed=False)
    assert snapshot.image_arch(other, "arm64", explicit=True) == "arm64"


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x00" * 512])
def test_a_file_that_is_not_a_qcow2_image_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.qcow2"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="is not a qcow2 image"):
        snapshot.image_arch(path, "amd64", explicit=False)
    with pytest.raises(ImageError, match="no image at"):
        snapshot.image_arch(tmp_path / "absent.qcow2", "amd64", explicit=False)


def test_a_vsock_device_is_in_the_device_set_and_each_launch_has_its_own_cid(
    tmp_path: Path,
) -> None:
    plain = _spec(tmp_path)
    snap = replace(plain, vsock_cid=snapshot.new_vsock_cid())
    launch = replace(plain, vsock_cid=snapshot.new_vsock_cid())
    argv = qemu.qemu_argv(launch)
    assert argv[argv.index("vhost-vsock-pci,id=vsock0," f"guest-cid={launch.vsock_cid}") - 1] == (
        "-device")  # fmt: skip
    assert not any("vhost-vsock" in a for a in qemu.qemu_argv(plain))
    # The CID is each launch's own; whether there is a vsock device at all is not.
    assert vmstate.device_hash(snap) == vmstate.device_hash(launch)
    assert vmstate.device_hash(snap) != vmstate.device_hash(plain)
    cids = {snapshot.new_vsock_cid() for _ in range(1000)}
    assert len(cids) > 990 and min(cids) >= 3 and max(cids) <= (1 << 32) - 2


def test_the_exec_transport_is_vsock_where_the_host_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qemu, "VHOST_VSOCK", tmp_path / "vhost-vsock")
    why = qemu.vsock_available()
    assert why is not None and "No such file" in why
    assert snapshot.exec_transport("auto") == "virtio-serial"
    with pytest.raises(ImageError, match="no vsock on this host") as refused:
        snapshot.exec_transport("vsock")
    assert "virtio-serial" in (refused.value.hint or "")
    (tmp_path / "vhost-vsock").write_bytes(b"")  # opens read-write: what the probe asks
    assert qemu.vsock_available() is None
    assert snapshot.exec_transport("auto") == snapshot.exec_transport("vsock") == "vsock"
    assert snapshot.exec_transport("virtio-serial") == "virtio-serial"
    with pytest.raises(ImageError, match="unknown exec transport"):
        snapshot.exec_transport("tcp")
