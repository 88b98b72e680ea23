"""A local OCI registry (Debian's docker-registry, i.e. CNCF distribution) on 127.0.0.1.

For trying publish/pull without an account anywhere, and for the tests. Plain
HTTP is fine here: publish and pull use it only for loopback addresses.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from image import hosttools, run
from image.errors import ImageError
from image.vm import qemu

CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@dataclass(frozen=True)
class LocalRegistry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    log: Path

    def blob_path(self, digest: str) -> Path:
        """Where distribution's filesystem driver keeps a blob's bytes."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"


@contextlib.contextmanager
def serve_registry(workdir: Path, port: int = 0, timeout: float = 30.0) -> Iterator[LocalRegistry]:
    """docker-registry on 127.0.0.1:``port`` (0: a free one), storing under ``workdir``."""
    hosttools.require(["docker-registry"], "the local registry")
    storage = workdir / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    port = port or qemu.free_port()
    config = workdir / "registry.yml"
    config.write_text(CONFIG.format(storage=storage.resolve(), port=port))
    registry = LocalRegistry(f"127.0.0.1:{port}", storage, workdir / "registry.log")
    with run.background(["docker-registry", "serve", str(config)], stdout=registry.log) as proc:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise ImageError(
                    f"docker-registry exited: {registry.log.read_text()[-2000:]}",
                    hint=f"is port {port} already in use?",
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://{registry.host}/v2/", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise ImageError(f"docker-registry did not answer within {timeout:.0f} s",
                                 hint=f"see {registry.log}")  # fmt: skip
            time.sleep(0.1)
        yield registry
