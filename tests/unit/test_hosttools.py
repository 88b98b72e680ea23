"""Host tools: what each VM-running task asks for exists in the doctor's table."""

from __future__ import annotations

import pytest

from image import hosttools


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_vm_tools_name_known_tools_for_each_arch(arch: str) -> None:
    names = hosttools.vm_tools(arch)
    assert set(names) <= set(hosttools.BY_NAME)
    assert ("qemu-system-aarch64" in names) == (arch == "arm64")
    assert ("OVMF" in names) == (arch == "amd64")
