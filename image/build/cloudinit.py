"""cloud-init for the build: render user-data/meta-data/network-config, pack the seed ISO.

``render()`` is pure: RenderInputs (plus the package lists and templates it
reads) -> ``{name: bytes}``, byte-for-byte the same for the same inputs. The
seed is the build's first stage, "system" (users, apt, third-party sources,
packages); ``render_stages()`` gives the later ones ("libraries": pip and
npm; "config": the sandbox's files, the skills, the marker) as shell scripts
with their payload, which the build runs over SSH, each on the layer below
(image/build/stages.py).
``write_seed_iso()`` packs those files into a NoCloud ``CIDATA`` ISO with
pycdlib, deterministically and atomically. ``validate_schema()`` runs
cloud-init's own ``cloud-init schema`` on a rendered user-data.

What the guest ends up with (paths other stages rely on):
    SYSTEM_MARKER    written as the very last runcmd step; exists only if every
                     step before it succeeded (runcmd runs under ``set -eu``)
    MARKER_PATH      written as the very last step of the last stage (the
                     stage scripts run under ``set -eu`` too)
    /opt/skills      the skills (skills.GUEST_DIR), root-owned, 0755/0644, with their index
    agent (uid 1001) unprivileged, no sudo; build: SSH key, NOPASSWD sudo
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import posixpath
import re
import shlex
import shutil
import tempfile
import threading
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from image import run
from image.build import lockfile, manifest, packagecache, packages, trust
from image.build import skills as skills_folder
from image.contract import guest
from image.egress import guestnet
from image.errors import ImageError
from image.files import atomic_path, atomic_write_bytes

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = PROJECT_ROOT / "cloud-init"
TEMPLATES = {
    "user-data": "user-data.j2",
    "meta-data": "meta-data.j2",
    "network-config": "network-config.j2",
}

STATE_DIR = "/var/lib/sandbox-image"
MARKER_PATH = f"{STATE_DIR}/provisioned"
SYSTEM_MARKER = f"{STATE_DIR}/stage-system"
APT_LIST_PATH = f"{STATE_DIR}/apt-packages"
APT_MIRROR_KEYRING = "/etc/apt/keyrings/sandbox-image-mirror.asc"
PIP_CONSTRAINTS_PATH = f"{STATE_DIR}/pip-constraints.txt"
# The npm packages the "libraries" stage installed, for a re-run on its layer.
NPM_RECORD_PATH = f"{STATE_DIR}/npm-packages.txt"
# A re-run of "libraries" (render_stages) gets the lock's lists as files, not in its script.
RERUN_PIP_FILE = "pip-constraints.txt"
RERUN_NPM_FILE = "npm-packages.txt"
# The skills travel beside the "config" stage's script (no size limit of a seed);
# the script checks the file's SHA-256 and unpacks it.
SKILLS_PAYLOAD_FILE = "skills.tar.gz"
# A standalone seed (render(standalone=True)) carries the later stages' scripts
# and payload; runcmd mounts the seed read-only here and runs them from it.
SEED_MOUNT = "/run/sandbox-image-seed"
STAGE_TEMPLATES = {"libraries": "stage-libraries.sh.j2", "config": "stage-config.sh.j2"}
SKILLS_GUEST_DIR = guest.SKILLS_DIR
UNSAFE_IO_PATH = "/etc/dpkg/dpkg.cfg.d/90-sandbox-image-unsafe-io"
# A locked build holds every package at its locked version; removed once installed.
APT_LOCK_PREFERENCES_PATH = "/etc/apt/preferences.d/90-sandbox-image-lock"
# A cached build's pip downloads land here first (then pip installs from it, offline).
PIP_DOWNLOAD_DIR = "/var/tmp/sandbox-image-pip"
NPM_CACHE_DIR = "/var/tmp/sandbox-image-npm"
# QEMU gives the first NIC this address unless told otherwise; the network
# config matches on it (see cloud-init/network-config.j2 for why a MAC).
QEMU_DEFAULT_MAC = "52:54:00:12:34:56"

# The seed travels inside user-data as base64 (4/3 of its size) and cloud-init
# holds all of it in memory: keep it to something a seed can reasonably carry.
MAX_GUEST_FILES = 8 << 20
EXECUTABLE_DIRS = ("/usr/local/bin/", "/usr/local/sbin/")
_OWN_PATHS = frozenset(
    {
        MARKER_PATH,
        SYSTEM_MARKER,
        APT_LIST_PATH,
        PIP_CONSTRAINTS_PATH,
        UNSAFE_IO_PATH,
        APT_LOCK_PREFERENCES_PATH,
        "/etc/environment",
    }
)
_SNAPSHOT = re.compile(r"^\d{8}T\d{6}Z$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+=*( [^\n\r]*)?$"
)


@dataclass(frozen=True)
class RenderInputs:
    profile: str  # 'full' | 'minimal' | 'smoke'
    arch: str  # 'arm64' | 'amd64'
    distro: str = "ubuntu"  # 'ubuntu' (jammy) or 'debian' (the offline stand-in, Debian 13)
    # The guest's ed25519 SSH host key (private OpenSSH PEM, public line), made by
    # the build so its very first SSH connection is verified, not trusted on first use.
    ssh_host_ed25519: tuple[str, str] | None = None
    build_ssh_public_key: str = ""  # authorized for 'build' (sudo); no key: no build user
    hostname: str = "sandbox"
    apt_mirror: str | None = None  # None: keep the image's own sources
    apt_proxy: str | None = None
    apt_snapshot: str | None = None  # snapshot.ubuntu.com timestamp, e.g. 20240301T000000Z
    # The OpenPGP public key (armored) that signs apt_mirror's Release files, for a
    # mirror re-signed with its owner's key (aptly, reprepro); None: the distro's keys.
    apt_mirror_key: str | None = None
    pip_index: str | None = None  # a PEP 503 simple index instead of PyPI (the build)
    npm_registry: str | None = None  # an npm registry instead of registry.npmjs.org
    guest_files: Mapping[str, bytes] = field(default_factory=dict)
    # Skills folders, merged in order (a later one's skill replaces an earlier one's of
    # the same name), put read-only at /opt/skills with their index.
    skills_dirs: tuple[Path, ...] = ()
    # Extensions beyond the pipeline's interface; the defaults are what it expects.
    guest_file_modes: Mapping[str, int] = field(default_factory=dict)  # path -> mode override
    agent_uid: int = guest.AGENT_UID
    mac_address: str = QEMU_DEFAULT_MAC
    interface: str = "eth0"
    package_lists: Path = packages.PACKAGE_LISTS
    templates_dir: Path = TEMPLATES_DIR
    # Install exactly the lock's versions (build-image --lock).
    lock: lockfile.Lock | None = None
    # The package caches, shared over 9p (see image/build/packagecache.py); off: no shares.
    package_cache: bool = False
    # Sources that replace the profile's of the same name (build-image --source-file).
    sources: tuple[packages.AptSource, ...] = ()
    # CA certificates the guest trusts besides its own (a TLS-inspecting proxy).
    ca_certs: tuple[trust.CACert, ...] = ()


# --- pure pieces -------------------------------------------------------------


def _apt_config(inputs: RenderInputs) -> dict[str, Any]:
    """Which archive the guest uses: its own, a mirror, or a snapshot.ubuntu.com pin."""
    if inputs.apt_snapshot is not None:
        if inputs.distro != "ubuntu":
            raise ImageError(
                "an apt snapshot pin needs the Ubuntu image",
                hint="snapshot.ubuntu.com serves Ubuntu only; drop the snapshot "
                "for the Debian stand-in",
            )
        if inputs.apt_mirror is not None:
            raise ImageError(
                "give an apt mirror or an apt snapshot, not both",
                hint="the snapshot replaces the archive mirror",
            )
        if not _SNAPSHOT.fullmatch(inputs.apt_snapshot):
            raise ImageError(
                f"not a snapshot timestamp: {inputs.apt_snapshot!r}",
                hint="use YYYYMMDDTHHMMSSZ, e.g. 20240301T000000Z",
            )
        archive = "ubuntu-ports" if inputs.arch == "arm64" else "ubuntu"
        uri = f"https://snapshot.ubuntu.com/{archive}/{inputs.apt_snapshot}"
        return {
            "apt_preserve_sources_list": False,
            "apt_primary": uri,
            "apt_security": uri,
            "apt_sources_list": None,
        }
    if inputs.apt_mirror_key is not None and inputs.apt_mirror is None:
        raise ImageError("an apt mirror key without an apt mirror",
                         hint="--apt-mirror-key goes with --apt-mirror URL")  # fmt: skip
    if inputs.apt_mirror is not None:
        if not re.fullmatch(r"(https?|file)://\S+", inputs.apt_mirror):
            raise ImageError(
                f"not a mirror URL: {inputs.apt_mirror!r}", hint="use http://, https:// or file://"
            )
        if inputs.apt_mirror_key is not None:
            # The mirror's own key, for its lines only: the distro's keys keep theirs.
            signed = f"deb [signed-by={APT_MIRROR_KEYRING}]"
            lines = (
                [f"{signed} $MIRROR $RELEASE main"]
                if inputs.distro == "debian"
                else [f"{signed} $MIRROR $RELEASE{pocket} main restricted universe multiverse"
                      for pocket in ("", "-updates", "-security", "-backports")]
            )  # fmt: skip
            return {
                "apt_preserve_sources_list": False,
                "apt_primary": inputs.apt_mirror,
                "apt_security": None,
                "apt_sources_list": "\n".join(lines) + "\n",
            }
        if inputs.distro == "debian":
            # cloud-init's Debian template would point RELEASE-security at the
            # mirror too (it has no such suite: apt-get update fails), and a
            # local mirror may not carry -updates either: the release alone.
            return {
                "apt_preserve_sources_list": False,
                "apt_primary": inputs.apt_mirror,
                "apt_security": None,
                "apt_sources_list": "deb $MIRROR $RELEASE main\n",
            }
        # Ubuntu mirrors carry the -security pocket alongside the others.
        return {
            "apt_preserve_sources_list": False,
            "apt_primary": inputs.apt_mirror,
            "apt_security": inputs.apt_mirror,
            "apt_sources_list": None,
        }
    return {
        "apt_preserve_sources_list": True,
        "apt_primary": None,
        "apt_security": None,
        "apt_sources_list": None,
    }


def guest_file_mode(path: str) -> int:
    """Executables under /usr/local/{bin,sbin}, everything else read-only data."""
    return 0o755 if path.startswith(EXECUTABLE_DIRS) else 0o644


def _guest_files(inputs: RenderInputs) -> list[dict[str, str]]:
    total = 0
    out = []
    for path in sorted(inputs.guest_files):
        content = inputs.guest_files[path]
        if not path.startswith("/") or posixpath.normpath(path) != path:
            raise ImageError(f"guest file path must be absolute and normalized: {path!r}")
        if path in _OWN_PATHS or path.startswith(SKILLS_GUEST_DIR + "/"):
            raise ImageError(f"guest file {path!r} collides with a file the build writes itself")
        total += len(content)
        mode = inputs.guest_file_modes.get(path, guest_file_mode(path))
        b64 = base64.b64encode(content).decode("ascii")
        out.append(
            {
                "path": path,
                "dir": posixpath.dirname(path),
                "permissions": f"{mode:04o}",
                "content_b64_lines": "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)),
            }
        )
    if total > MAX_GUEST_FILES:
        raise ImageError(
            f"guest files total {total} bytes, more than a seed carries ({MAX_GUEST_FILES} bytes)",
            hint="install large files from a package instead of the seed",
        )
    unknown_modes = sorted(set(inputs.guest_file_modes) - set(inputs.guest_files))
    if unknown_modes:
        raise ImageError(f"modes given for files that are not guest files: {unknown_modes}")
    return out


# A bootcmd item (cloud-init runs bootcmd as one sh script, lines as given, before
# its apt module adds the sources): the key comes over HTTP(S) through the egress
# proxy and is trusted only if it holds the pinned fingerprint; only that key is
# exported to the keyring the source line names. It exits the script on any
# failure, naming the source, so the build stops before apt reads a source it
# cannot check. It runs on every boot but does nothing once the keyring is there.
SOURCE_KEY_TEMPLATE = "apt-source-key.sh.j2"


def source_key_script(
    source: packages.AptSource, proxy: str | None, *, keyring: str | None = None,
    templates_dir: Path = TEMPLATES_DIR,
) -> str:  # fmt: skip
    """The bootcmd item that fetches and checks one source's key (``keyring``: tests)."""
    return render_template(templates_dir, SOURCE_KEY_TEMPLATE, {
        "name": source.name, "url": source.key_url, "fingerprint": source.fingerprint,
        "keyring": keyring or source.keyring, "proxy": proxy,
    })  # fmt: skip


def verify_packages_command() -> str:
    # dpkg-query prints 'ii |name' for installed packages and an error line for
    # names it never heard of; anything but 'ii ' means the install failed.
    return (
        "missing=$(dpkg-query -W -f='${db:Status-Abbrev}|${Package}\\n' "
        f"$(cat {APT_LIST_PATH}) 2>&1 | grep -v '^ii |' || true); "
        'if [ -n "$missing" ]; then echo "packages not installed: $missing" >&2; exit 1; fi'
    )


def marker_content(inputs: RenderInputs) -> str:
    return (
        f"sandbox-image provisioned\nprofile={inputs.profile}\narch={inputs.arch}\n"
        f"distro={inputs.distro}\n"
    )


def marker_command(inputs: RenderInputs, path: str = MARKER_PATH) -> str:
    tmp = path + ".tmp"
    return f"printf '%s' {shlex.quote(marker_content(inputs))} > {tmp} && mv {tmp} {path}"


def _b64_lines(lines: tuple[str, ...]) -> str:
    """A one-item-a-line file as write_files' base64 content ('' for no lines)."""
    text = "".join(f"{line}\n" for line in lines)
    return base64.b64encode(text.encode()).decode("ascii") if lines else ""


# Long on purpose: one flat mapping of every name the templates use, built in one place.
def template_context(
    inputs: RenderInputs, profile: packages.Profile, skills_archive: bytes | None
) -> dict[str, Any]:
    """Everything the templates see. Pure; every value already validated."""
    if inputs.arch not in ("arm64", "amd64"):
        raise ImageError(f"unknown arch {inputs.arch!r}", hint="use arm64 or amd64")
    if inputs.distro not in packages.DISTROS:
        raise ImageError(
            f"unknown distro {inputs.distro!r}", hint=f"use one of {', '.join(packages.DISTROS)}"
        )
    if inputs.distro not in profile.distros:
        raise ImageError(
            f"profile {profile.name!r} is for {', '.join(profile.distros)}, not {inputs.distro}",
            hint="see the profile's distros: line; the Debian stand-in takes names that "
            "differ from jammy's from package-lists/distros/debian.map",
        )
    if not _HOSTNAME.fullmatch(inputs.hostname):
        raise ImageError(
            f"not a host name: {inputs.hostname!r}",
            hint="lower-case letters, digits and '-', at most 63 characters",
        )
    if not _MAC.fullmatch(inputs.mac_address):
        raise ImageError(
            f"not a MAC address: {inputs.mac_address!r}",
            hint="write it like 52:54:00:12:34:56 (lower case)",
        )
    if not re.fullmatch(r"[a-z][a-z0-9]{0,14}", inputs.interface):
        raise ImageError(
            f"not a network interface name: {inputs.interface!r}",
            hint="lower-case letters and digits, at most 15 characters, e.g. eth0",
        )
    if inputs.ssh_host_ed25519 is not None:
        private, public = inputs.ssh_host_ed25519
        if "OPENSSH PRIVATE KEY" not in private or not public.startswith("ssh-ed25519 "):
            raise ImageError(
                "the SSH host key must be an ed25519 key in OpenSSH format",
                hint="image.vm.ssh.KeyPair.generate() makes one",
            )
    key = inputs.build_ssh_public_key.strip()
    if key and not _SSH_KEY.fullmatch(key):
        raise ImageError(
            "the build SSH public key is not an OpenSSH public key line",
            hint="pass the contents of the .pub file, e.g. 'ssh-ed25519 AAAA...'",
        )
    if inputs.apt_proxy is not None and not re.fullmatch(r"https?://\S+", inputs.apt_proxy):
        raise ImageError(f"not a proxy URL: {inputs.apt_proxy!r}", hint="use http://host:port")
    if not 1000 <= inputs.agent_uid < 60000:
        raise ImageError(
            f"agent uid {inputs.agent_uid} is outside the regular user range",
            hint="use a uid between 1000 and 59999",
        )

    return {
        "profile": profile.name,
        "arch": inputs.arch,
        "distro": inputs.distro,
        "hostname": inputs.hostname,
        "agent_uid": inputs.agent_uid,
        "build_ssh_public_key": key,
        "ssh_host_ed25519_private": inputs.ssh_host_ed25519[0] if inputs.ssh_host_ed25519 else "",
        "ssh_host_ed25519_public": inputs.ssh_host_ed25519[1] if inputs.ssh_host_ed25519 else "",
        **_apt_config(inputs),
        "apt_proxy": inputs.apt_proxy,
        "apt_mirror_keyring": APT_MIRROR_KEYRING,
        "apt_mirror_key": inputs.apt_mirror_key or "",
        "registry_environment": _registry_environment(inputs),
        "ca_script": trust.bootcmd_script(inputs.ca_certs) if inputs.ca_certs else "",
        "ca_bundle": trust.SYSTEM_BUNDLE,
        "apt_sources": [
            {
                "name": s.name,
                "line": f"deb [signed-by={s.keyring}] {s.uri} {s.suite} {' '.join(s.components)}",
                "key_script": source_key_script(
                    s, inputs.apt_proxy, templates_dir=inputs.templates_dir
                ),
            }
            for s in profile.sources
        ],
        **_package_specs(inputs.lock, profile),
        "pip_constraints_path": PIP_CONSTRAINTS_PATH,
        "apt_lock_preferences_path": APT_LOCK_PREFERENCES_PATH,
        "apt_lock_preferences": lockfile.apt_preferences(inputs.lock) if inputs.lock else "",
        **_package_cache_context(inputs.package_cache),
        "apt_list_path": APT_LIST_PATH,
        "apt_list_b64": _b64_lines(profile.apt_packages),
        "verify_packages_command": verify_packages_command(),
        "unsafe_io_path": UNSAFE_IO_PATH,
        "guest_files": _guest_files(inputs),
        "skills_sha256": hashlib.sha256(skills_archive).hexdigest() if skills_archive else "",
        "skills_payload_file": SKILLS_PAYLOAD_FILE,
        "seed_mount": SEED_MOUNT,
        "standalone_stages": [],
        "skills_dir": SKILLS_GUEST_DIR,
        "guest_environment": [
            f"{guest.SKILLS_ENV}={guest.SKILLS_DIR}",
            f"NODE_PATH={guest.NODE_PATH}",
        ],
        "proxy_environment": guestnet.guest_environment(),
        "exec_services": [guest.EXEC_SERVICE, guest.EXEC_VSOCK_SERVICE],
        "state_dir": STATE_DIR,
        "npm_record_path": NPM_RECORD_PATH,
        "rerun": False,
        "pip_prefixes": manifest.PIP_PREFIXES_PY,  # what the manifest and a lock count
        "rerun_pip_file": RERUN_PIP_FILE,
        "rerun_npm_file": RERUN_NPM_FILE,
        "marker_command": marker_command(inputs),
        "system_marker_command": marker_command(inputs, SYSTEM_MARKER),
        "mac_address": inputs.mac_address,
        "interface": inputs.interface,
    }


def _registry_environment(inputs: RenderInputs) -> list[str]:
    """PIP_INDEX_URL / NPM_CONFIG_REGISTRY for the build's pip and npm, when given."""
    out = []
    for name, url in (("PIP_INDEX_URL", inputs.pip_index),
                      ("NPM_CONFIG_REGISTRY", inputs.npm_registry)):  # fmt: skip
        if url is None:
            continue
        if not re.fullmatch(r"https?://[^\s'\"\\]+", url):
            raise ImageError(f"not an http(s) URL for {name}: {url!r}",
                             hint="e.g. https://pypi.corp.example/simple/")  # fmt: skip
        out.append(f"{name}={shlex.quote(url)}")
    return out


def _package_specs(lock: lockfile.Lock | None, profile: packages.Profile) -> dict[str, Any]:
    """What the installers get: the profile's pins, or with a lock the lock's versions."""
    if lock is None:
        return {
            "apt_packages": list(profile.apt_packages),
            "pip_packages": list(profile.pip_packages),
            "npm_packages": list(profile.npm_packages),
            "pip_constraints_b64": _b64_lines(profile.pip_constraints),
        }
    pinned = lockfile.pinned_specs(lock, profile)
    return {
        "apt_packages": list(pinned["apt"]),
        "pip_packages": list(pinned["pip"]) if profile.pip_packages else [],
        "npm_packages": list(pinned["npm"]),
        # Every locked pip package, so the dependencies come at their locked versions too.
        "pip_constraints_b64": _b64_lines(lockfile.pip_constraints(lock))
        if profile.pip_packages
        else "",
    }


def _package_cache_context(enabled: bool) -> dict[str, Any]:
    return {
        "package_cache": enabled,
        "cache_tag": packagecache.CACHE_TAG,
        "cache_new_tag": packagecache.NEW_TAG,
        "guest_cache": packagecache.GUEST_CACHE,
        "guest_cache_new": packagecache.GUEST_NEW,
        "pip_download_dir": PIP_DOWNLOAD_DIR,
        "npm_cache_dir": NPM_CACHE_DIR,
    }


def _yaml_scalar(value: object) -> str:
    # JSON is valid YAML: quoting every inserted value this way means no input
    # can change the document's structure.
    return json.dumps(value, ensure_ascii=False)


def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["yaml"] = _yaml_scalar
    env.filters["sh"] = shlex.quote
    return env


def render_template(templates_dir: Path, template: str, context: Mapping[str, Any]) -> str:
    """One template -> text; a missing variable names the template, line and variable."""
    env = _environment(templates_dir)
    try:
        return env.get_template(template).render(context)
    except jinja2.UndefinedError as exc:
        line = _template_line(exc, templates_dir / template)
        where = f"{template}:{line}" if line else template
        raise ImageError(
            f"template {where}: {exc.message}",
            hint="the template uses a variable that render() does not "
            "provide; fix the template or image/build/cloudinit.py",
        ) from None
    except jinja2.TemplateNotFound as exc:
        raise ImageError(f"template {exc.name} not found in {templates_dir}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise ImageError(f"template {template}:{exc.lineno}: {exc.message}") from None


def _template_line(exc: BaseException, path: Path) -> int | None:
    """Jinja rewrites tracebacks so template frames carry the template's file and line."""
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _context(inputs: RenderInputs) -> tuple[dict[str, Any], bytes | None]:
    profile = packages.resolve_profile(
        inputs.profile, inputs.package_lists, inputs.distro, inputs.sources
    )
    skills = skills_folder.pack(inputs.skills_dirs) if inputs.skills_dirs else None
    return template_context(inputs, profile, skills), skills


def render(inputs: RenderInputs, standalone: bool = False) -> dict[str, bytes]:
    """RenderInputs -> {'user-data', 'meta-data', 'network-config'}: bytes, deterministic.

    The seed of the first stage ("system"); ``render_stages`` gives the others,
    which a build runs over SSH. ``standalone``: a seed that runs them itself
    (``./inv seed``, for booting the image by hand): their scripts and payload
    ride on the seed, and runcmd runs them in order after the system stage."""
    context, _ = _context(inputs)
    later = render_stages(inputs) if standalone else ()
    context["standalone_stages"] = [stage.name for stage in later]
    user_data = render_template(inputs.templates_dir, TEMPLATES["user-data"], context)
    # The instance id follows the content: a changed seed is a new instance to
    # cloud-init, the same seed the same one.
    digest = hashlib.sha256(user_data.encode()).hexdigest()[:16]
    context = {**context, "instance_id": f"sandbox-{digest}"}
    out = {"user-data": user_data.encode()}
    for name in ("meta-data", "network-config"):
        out[name] = render_template(inputs.templates_dir, TEMPLATES[name], context).encode()
    for name, data in out.items():
        _check_yaml(name, data)
    if not out["user-data"].startswith(b"#cloud-config\n"):
        raise ImageError(
            "rendered user-data does not start with '#cloud-config'",
            hint="cloud-init ignores user-data without that first line",
        )
    for stage in later:
        out[f"stage-{stage.name}.sh"] = stage.script
        out.update(stage.payload)
    return out


@dataclass(frozen=True)
class StageScript:
    """A stage after "system": a root shell script and the files it gets beside it.

    ``rerun``: the stage's re-run form, if it has one: run on this stage's layer
    of other inputs (the same layer below), it brings that layer to these
    inputs. Its script is the same for all inputs that differ only in what its
    payload carries, so equal re-run scripts say a re-run may be used."""

    name: str
    script: bytes
    payload: Mapping[str, bytes] = field(default_factory=dict)
    rerun: StageScript | None = None


def render_stages(inputs: RenderInputs) -> tuple[StageScript, ...]:
    """The stages above "system", in order: "libraries" (pip, npm; none for a
    profile without either) and "config" (guest files, skills, the marker).
    Pure and deterministic, like render().

    A locked build's "libraries" has a re-run form: the lock names every pip
    package in /usr/local and every npm package the stage installs, so the
    guest can be brought from one lock's set to another's by removing and
    adding only what differs (the build checks the result against the lock)."""
    context, skills = _context(inputs)
    out = []
    for name, template in STAGE_TEMPLATES.items():
        if name == "libraries" and not (context["pip_packages"] or context["npm_packages"]):
            continue
        script = render_template(inputs.templates_dir, template, context).encode()
        payload = {SKILLS_PAYLOAD_FILE: skills} if name == "config" and skills else {}
        rerun = None
        if name == "libraries" and inputs.lock is not None:
            lists = {RERUN_PIP_FILE: lockfile.pip_constraints(inputs.lock)
                     if context["pip_packages"] else (),
                     RERUN_NPM_FILE: context["npm_packages"]}  # fmt: skip
            rerun_context = {**context, "rerun": True}
            rerun = StageScript(
                name,
                render_template(inputs.templates_dir, template, rerun_context).encode(),
                {file: "".join(f"{line}\n" for line in lines).encode()
                 for file, lines in lists.items() if lines},
            )  # fmt: skip
        out.append(StageScript(name, script, payload, rerun))
    return tuple(out)


def _check_yaml(name: str, data: bytes) -> None:
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ImageError(
            f"rendered {name} is not valid YAML: {exc}", hint=f"check cloud-init/{TEMPLATES[name]}"
        ) from None
    if not isinstance(doc, dict):
        raise ImageError(
            f"rendered {name} is not a YAML mapping", hint=f"check cloud-init/{TEMPLATES[name]}"
        )


def write_rendered(files: Mapping[str, bytes], out_dir: Path) -> list[Path]:
    """Write each rendered file atomically into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(files):
        target = out_dir / name
        atomic_write_bytes(target, files[name])
        written.append(target)
    return written


# --- cloud-init's own schema check --------------------------------------------


# cloud-init's schema allows any top-level key, so a misspelt or misplaced
# module option is silently ignored. This asks the host's cloud-init which
# top-level keys its modules define.
_KNOWN_KEYS_SCRIPT = (
    "import json; from cloudinit.config.schema import get_schema; s = get_schema(); "
    "print(json.dumps(sorted({k for p in s['allOf'] for k in s['$defs']"
    ".get(p.get('$ref', '').rsplit('/', 1)[-1], {}).get('properties', {})})))"
)


def cloud_init_python() -> str:
    """The interpreter the host's cloud-init runs on (its script's #! line)."""
    script = shutil.which("cloud-init")
    if script is None:
        raise ImageError("cloud-init is not installed", hint="apt-get install cloud-init")
    with Path(script).open("rb") as f:
        first = f.readline().decode(errors="replace").strip()
    if not first.startswith("#!"):
        raise ImageError(f"{script} is not a Python script; cannot ask it for its schema")
    return first[2:].split()[0]


def known_top_level_keys(timeout: float = 60.0) -> frozenset[str]:
    result = run.run([cloud_init_python(), "-c", _KNOWN_KEYS_SCRIPT], timeout=timeout)
    return frozenset(json.loads(result.stdout))


def validate_schema(user_data: bytes, timeout: float = 120.0) -> None:
    """Check user-data with ``cloud-init schema --config-file`` and for unknown top-level keys.

    Needs cloud-init on the host (Debian's package is enough).
    """
    from image import hosttools

    hosttools.require(["cloud-init"], "validating cloud-init user-data")
    with tempfile.TemporaryDirectory(prefix="sandbox-image-schema-") as tmp:
        path = Path(tmp) / "user-data"
        path.write_bytes(user_data)
        result = run.run(
            ["cloud-init", "schema", "--config-file", str(path)], check=False, timeout=timeout
        )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace").strip()
        raise ImageError(
            f"cloud-init schema rejects the user-data:\n{output}",
            hint="fix cloud-init/user-data.j2 (./inv render --out DIR shows the rendered file)",
        )
    doc = yaml.safe_load(user_data)
    unknown = sorted(set(doc) - known_top_level_keys(timeout))
    if unknown:
        raise ImageError(
            f"user-data has top-level keys no cloud-init module reads: {', '.join(unknown)}",
            hint="cloud-init would silently ignore them; check the key and where it belongs "
            "in cloud-init's documentation",
        )


# --- the NoCloud seed ISO -----------------------------------------------------

SEED_VOLUME_ID = "CIDATA"
# ISO 9660 level-1 names (8.3, upper case); Joliet and Rock Ridge carry the
# real names, which are what cloud-init's NoCloud reader looks up.
_ISO9660_NAMES = {
    SKILLS_PAYLOAD_FILE: "SKILLS.TGZ;1",
    "stage-libraries.sh": "STAGELIB.SH;1",
    "stage-config.sh": "STAGECFG.SH;1",
    "user-data": "USERDATA.;1",
    "meta-data": "METADATA.;1",
    "network-config": "NETWORKC.;1",
    "vendor-data": "VENDORDA.;1",
}
# Any fixed instant would do; 2000-01-01T00:00:00Z stays inside every
# date field the ISO formats can hold.
SEED_EPOCH = 946684800.0
_PYCDLIB_CLOCK = threading.Lock()


_StructTime = time.struct_time  # the class body below shadows the name 'time'


class _FixedClock(types.ModuleType):
    """The time module, except that now is SEED_EPOCH and local time is UTC."""

    def __init__(self) -> None:
        super().__init__("time")

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def time() -> float:
        return SEED_EPOCH

    @staticmethod
    def localtime(seconds: float | None = None) -> _StructTime:
        return time.gmtime(SEED_EPOCH if seconds is None else seconds)


@contextlib.contextmanager
def _fixed_pycdlib_clock() -> Iterator[None]:
    """Make pycdlib stamp SEED_EPOCH, in UTC, on everything it creates.

    pycdlib 1.22 calls time.time() and time.localtime() for every date it
    writes and takes no date argument, so two builds differ (and depend on the
    host's time zone). It reaches the clock through its modules' ``time``
    global; swap that for a fixed clock while a seed is built.
    """
    import pycdlib.dates
    import pycdlib.headervd
    import pycdlib.pycdlib
    import pycdlib.utils

    clock = _FixedClock()
    modules = [
        m
        for m in (pycdlib.dates, pycdlib.headervd, pycdlib.pycdlib, pycdlib.utils)
        if getattr(m, "time", None) is time
    ]
    with _PYCDLIB_CLOCK:
        for module in modules:
            module.time = clock  # type: ignore[attr-defined]
        try:
            yield
        finally:
            for module in modules:
                module.time = time  # type: ignore[attr-defined]


def write_seed_iso(files: Mapping[str, bytes], out: Path) -> None:
    """Pack files into a NoCloud seed ISO (volume CIDATA, Joliet + Rock Ridge).

    Deterministic: the same files give the same bytes. Atomic: ``out`` is
    either the complete new ISO or untouched.
    """
    import pycdlib

    unknown = sorted(set(files) - set(_ISO9660_NAMES))
    if unknown:
        raise ImageError(
            f"not a NoCloud seed file: {', '.join(unknown)}",
            hint=f"a seed holds {', '.join(_ISO9660_NAMES)}",
        )
    for required in ("user-data", "meta-data"):
        if required not in files:
            raise ImageError(f"a NoCloud seed needs {required}", hint="pass the output of render()")
    with _fixed_pycdlib_clock():
        iso = pycdlib.PyCdlib()
        iso.new(
            interchange_level=1,
            vol_ident=SEED_VOLUME_ID,
            sys_ident="LINUX",
            joliet=3,
            rock_ridge="1.09",
        )
        try:
            for name in sorted(files):
                data = files[name]
                iso.add_fp(
                    io.BytesIO(data),
                    len(data),
                    f"/{_ISO9660_NAMES[name]}",
                    rr_name=name,
                    joliet_path=f"/{name}",
                )
            with atomic_path(out) as tmp, tmp.open("wb") as f:
                iso.write_fp(f)
        finally:
            iso.close()


def read_seed_iso(path: Path) -> dict[str, bytes]:
    """The files of a seed ISO by their Joliet names (for checks and debugging)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    try:
        iso.open(str(path))
    except (OSError, pycdlib.pycdlibexception.PyCdlibException) as exc:
        raise ImageError(f"cannot read seed ISO {path}: {exc}") from None
    try:
        out = {}
        for child in iso.list_children(joliet_path="/"):
            if child.is_dot() or child.is_dotdot():
                continue
            name = iso.full_path_from_dirrecord(child, rockridge=False).lstrip("/")
            buffer = io.BytesIO()
            iso.get_file_from_iso_fp(buffer, joliet_path=f"/{name}")
            out[name] = buffer.getvalue()
        return out
    finally:
        iso.close()
