"""The guest contract: what the image provides and the host relies on.

The build writes these (cloud-init's users, the launcher and its marker, the proxy
settings); snapshots and launches use them. Change one here and both sides follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The unprivileged user commands run as, and the uid cloud-init creates it with.
AGENT_USER = "agent"
AGENT_UID = 1001
# The in-guest sandbox launcher and the file that tells it it runs in the VM, where
# GUEST_PROXY_IP is QEMU's forward to the host's egress proxy.
LAUNCHER = "/usr/local/bin/sandbox-exec"
IN_VM_MARKER = "/etc/sandbox-image/in-vm"
SELF_TEST_COMMAND = ("sandbox-exec", "--self-test")
# Inside QEMU's user network (10.0.2.0/24): .2 is the host/gateway and .3 DNS,
# which guestfwd may not take; .100 is free and is what the guest is told.
GUEST_PROXY_IP = "10.0.2.100"
GUEST_HTTP_PORT = 3128
GUEST_SOCKS_PORT = 1080
# The skills, read-only, and the variable that points at them (in /etc/environment
# and in the sandbox's own environment, bwrap-profiles/agent.yaml).
SKILLS_DIR = "/opt/skills"
SKILLS_ENV = "SKILLS_DIR"
# Where npm's global packages are (NodeSource's layout): require() finds them in
# and out of the sandbox through NODE_PATH.
NODE_PATH = "/usr/lib/node_modules"


# The exec agent (image/guest/exec_agent.py): a systemd service on this virtio-serial
# port, the host's channel for commands (docs/exec.md).
EXEC_PORT_NAME = "org.sandbox-image.exec.0"
EXEC_SERVICE = "sandbox-image-exec.service"
# Where the host has /dev/vhost-vsock, a snapshot's launches reach the agent over
# vsock instead: a second instance serves this port (the host, CID 2, only).
EXEC_VSOCK_PORT = 5200
EXEC_VSOCK_SERVICE = "sandbox-image-exec-vsock.service"


def sandbox_request(
    workspace: str, terminal: bool = False, profile: str = "agent"
) -> dict[str, Any]:
    """What the host asks the exec agent for (a spawn's ``sandbox``): COMMAND in the
    sandbox as the agent user, run by the agent's own forked process (the prepared
    sandbox: no runuser, no new interpreter; image/guest/exec_agent.py)."""
    return {"profile": profile, "workspace": workspace, "user": AGENT_USER, "terminal": terminal}


def sandboxed_argv(command: Sequence[str], workspace: str, profile: str = "agent",
                   terminal: bool = False) -> list[str]:  # fmt: skip
    """What the host asks the guest agent to run: COMMAND in the sandbox, as the agent.
    ``terminal``: it runs on a PTY of its own, which stays its controlling terminal."""
    return ["/usr/sbin/runuser", "-u", AGENT_USER, "--", LAUNCHER, "--profile", profile,
            "--workspace", workspace, *(["--terminal"] if terminal else []),
            "--", *command]  # fmt: skip
