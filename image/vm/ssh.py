"""SSH into the build VM with paramiko.

Both ends are pinned: the build makes an ephemeral ed25519 client key *and* the
guest's ed25519 host key, and hands both to cloud-init in the seed. So the very
first connection is verified against a known host key — no trust-on-first-use
on a port that anything on the host could have bound first.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from image.errors import ImageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str  # PEM "OPENSSH PRIVATE KEY"
    public_openssh: str  # "ssh-ed25519 AAAA... comment"

    @classmethod
    def generate(cls, comment: str) -> KeyPair:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ).decode()
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        return cls(private, f"{public.decode()} {comment}")

    def paramiko_key(self) -> paramiko.PKey:
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))


@dataclass(frozen=True)
class Result:
    exit_status: int
    stdout: str
    stderr: str


class Session:
    def __init__(self, client: paramiko.SSHClient) -> None:
        self.client = client

    def run(self, command: str, timeout: float = 600.0, check: bool = True) -> Result:
        log.info("ssh+ %s", command)
        _, out, _ = self.client.exec_command(command, timeout=timeout)
        channel = out.channel
        deadline = time.monotonic() + timeout
        stdout, stderr = bytearray(), bytearray()
        # Read both streams as they come: a chatty command must not block on a full buffer.
        while True:
            while channel.recv_ready():
                stdout += channel.recv(65536)
            while channel.recv_stderr_ready():
                stderr += channel.recv_stderr(65536)
            if (
                channel.exit_status_ready()
                and not channel.recv_ready()
                and not (channel.recv_stderr_ready())
            ):
                break
            if time.monotonic() > deadline:
                channel.close()
                raise ImageError(f"guest command timed out after {timeout:g} s: {command}")
            time.sleep(0.05)
        result = Result(channel.recv_exit_status(), stdout.decode(errors="replace"),
                        stderr.decode(errors="replace"))  # fmt: skip
        if check and result.exit_status != 0:
            tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-20:])
            raise ImageError(
                f"guest command failed with exit code {result.exit_status}: {command}\n{tail}"
            )
        return result

    def sudo(self, command: str, timeout: float = 600.0, check: bool = True) -> Result:
        return self.run(f"sudo -n sh -c {shlex.quote(command)}", timeout=timeout, check=check)

    def write_file(self, path: str, data: bytes, mode: int = 0o600) -> None:
        """Create ``path`` (the login user's) with ``data``, readable by that user only."""
        with self.client.open_sftp() as sftp:
            with sftp.open(path, "wb") as f:
                f.set_pipelined(True)
                f.write(data)
            sftp.chmod(path, mode)

    def read_file(self, path: str) -> bytes:
        with self.client.open_sftp() as sftp, sftp.open(path, "rb") as f:
            return bytes(f.read())

    def close(self) -> None:
        self.client.close()


def connect(
    host: str, port: int, user: str, key: KeyPair, host_public_key: str, timeout: float = 10.0
) -> Session:
    """Log in with ``key``, accepting only the host key ``host_public_key`` ("ssh-ed25519 ...")."""
    client = paramiko.SSHClient()
    known = paramiko.Ed25519Key(data=_public_blob(host_public_key))
    client.get_host_keys().add(f"[{host}]:{port}", known.get_name(), known)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host, port=port, username=user, pkey=key.paramiko_key(), timeout=timeout,
        banner_timeout=timeout, auth_timeout=timeout, allow_agent=False, look_for_keys=False,
    )  # fmt: skip
    return Session(client)


def _public_blob(public_openssh: str) -> bytes:
    return base64.b64decode(public_openssh.split()[1])


def wait_for_ssh(
    host: str,
    port: int,
    user: str,
    key: KeyPair,
    host_public_key: str,
    timeout: float,
    alive: Callable[[], bool],
    describe_failure: Callable[[], str],
) -> Session:
    """Retry until sshd accepts our key, the VM dies, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last = "no attempt yet"
    # Until sshd listens, QEMU's user networking accepts and drops the connection;
    # paramiko logs a traceback for each such try. We report the last one ourselves.
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    while time.monotonic() < deadline:
        if not alive():
            raise ImageError(f"the VM stopped before SSH came up\n{describe_failure()}")
        try:
            return connect(host, port, user, key, host_public_key)
        except paramiko.BadHostKeyException as exc:
            raise ImageError(
                "the SSH host key is not the one seeded for this build",
                hint="something else answered on the forwarded port; run the build again",
            ) from exc
        except (TimeoutError, OSError, EOFError, paramiko.SSHException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(Exception):
            time.sleep(3)
    raise ImageError(
        f"SSH did not come up within {timeout:g} s (last: {last})\n{describe_failure()}",
        hint="raise --boot-timeout on slow (TCG) hosts, or read the serial log",
    )
