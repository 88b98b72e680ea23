"""BuildConfig: one frozen configuration, built once.

Precedence, resolved only in ``resolve()``:
    CLI flag  >  environment (SANDBOX_IMAGE_*)  >  invoke.yaml (``sandbox_image:``)  >  defaults
Each value remembers where it came from, so ``./inv config`` can say so.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from image.errors import ImageError

ENV_PREFIX = "SANDBOX_IMAGE_"
ARCHES = ("arm64", "amd64")
ACCELS = ("auto", "kvm", "hvf", "tcg")
PINNED_FINGERPRINTS = (
    "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81",  # UEC Image Automatic Signing Key
    "4A3CE3CD565D7EB5C810E2B97FF3F408476CF100",  # Ubuntu Cloud Image Builder
)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_KEYRING = PROJECT_ROOT / "keys" / "ubuntu-cloud-images.asc"


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sandbox-image"


# --- value parsers: text (env, CLI) or YAML value -> typed value, or ValueError ---

# A size names its unit ("4G", "512MiB", "1000B"): a bare "4" would be 4 bytes of RAM.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|(B))\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
SUPPORTED_RELEASES = ("jammy",)


def parse_size(value: object) -> int:
    """'4G', '4096M', '10GiB', '1000B' -> bytes (binary units, as QEMU reads them).

    The unit is required, in YAML too: ``memory: 4`` is an error, not 4 bytes."""
    m = _SIZE.match(str(value)) if not isinstance(value, bool) else None
    if m is None:
        if re.fullmatch(r"\s*\d+(\.\d+)?\s*", str(value)):
            raise ValueError(f"a size needs a unit: {value!r} (write e.g. {value}G or {value}M)")
        raise ValueError(f"not a size: {value!r} (use e.g. 4G, 512M, 10GiB)")
    size = int(float(m.group(1)) * _UNITS[(m.group(2) or m.group(3)).upper()])
    if size <= 0:
        raise ValueError(f"size must be positive: {value!r}")
    return size


def format_size(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{size}B"


def _choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        text = str(value).strip().lower()
        if text not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return text

    return parse


def _positive_int(value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ValueError(f"not a whole number: {value!r}") from None
    if number <= 0:
        raise ValueError(f"must be positive: {value!r}")
    return number


def parse_seconds(value: object) -> float:
    """A positive, finite number of seconds; ValueError saying why not."""
    try:
        number = float(str(value))
    except ValueError:
        raise ValueError(f"not a number of seconds: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"not a finite number of seconds: {value!r}")
    if number <= 0:
        raise ValueError(f"must be positive: {value!r}")
    return number


def _optional_seconds(value: object) -> float | None:
    return None if value in (None, "") else parse_seconds(value)


def _serial(value: object) -> str:
    text = str(value).strip()
    if text != "latest" and not re.fullmatch(r"\d{8}(\.\d+)?", text):
        raise ValueError(f"{value!r} is neither 'latest' nor a serial like 20240912")
    return text


def _mirror(value: object) -> str:
    text = str(value).strip().rstrip("/")
    if not re.match(r"^(https?|file)://", text):
        raise ValueError(f"{value!r} is not an http://, https:// or file:// URL")
    return text


def _release(value: object) -> str:
    text = str(value).strip().lower()
    if not re.fullmatch(r"[a-z]+", text):
        raise ValueError(f"{value!r} is not a release code name like jammy")
    if text not in SUPPORTED_RELEASES:
        # Package lists, cloud-init and the guest contract are written for 22.04.
        raise ValueError(f"{text!r} is not supported: only {', '.join(SUPPORTED_RELEASES)} (22.04)")
    return text


def _fingerprints(value: object) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    fprs = tuple(str(i).replace(" ", "").upper() for i in items if str(i).strip())
    for fpr in fprs:
        if not re.fullmatch(r"[0-9A-F]{40}", fpr):
            raise ValueError(f"{fpr!r} is not a 40-hex-digit OpenPGP fingerprint")
    if not fprs:
        raise ValueError("at least one fingerprint is needed")
    return fprs


def _path(value: object) -> Path:
    text = str(value).strip()
    if not text:
        raise ValueError("empty path")
    return Path(text).expanduser()


def _optional_path(value: object) -> Path | None:
    return None if value in (None, "") else _path(value)


def _profile(value: object) -> str:
    text = str(value).strip()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", text):
        raise ValueError(f"{value!r} is not a profile name")
    return text


def _meta(parse: Callable[[object], Any], help: str, example: str) -> dict[str, Any]:
    """A field's parser, its flag help and a value that works (for error hints)."""
    return {"parse": parse, "help": help, "example": example}


@dataclass(frozen=True)
class BuildConfig:
    arch: str = field(
        default="arm64",
        metadata=_meta(_choice(ARCHES), "guest architecture: arm64 (default) or amd64", "amd64"),
    )
    release: str = field(
        default="jammy", metadata=_meta(_release, "Ubuntu release code name (jammy)", "jammy")
    )
    serial: str = field(
        default="latest",
        metadata=_meta(_serial, "cloud image serial YYYYMMDD or latest", "20240912"),
    )
    mirror: str = field(
        default="https://cloud-images.ubuntu.com/releases",
        metadata=_meta(
            _mirror,
            "base URL (https, http, file) laid out like cloud-images.ubuntu.com/releases",
            "http://127.0.0.1:8080 (./inv mirror)",
        ),
    )
    keyring: Path = field(
        default=SHIPPED_KEYRING,
        metadata=_meta(
            _path,
            "keyring (armored or binary) that signs SHA256SUMS; needs --fingerprint",
            "keys/my-signer.asc",
        ),
    )
    fingerprints: tuple[str, ...] = field(
        default=PINNED_FINGERPRINTS,
        metadata=_meta(
            _fingerprints, "accepted signer fingerprint(s), comma-separated", PINNED_FINGERPRINTS[0]
        ),
    )
    profile: str = field(
        default="full", metadata=_meta(_profile, "package profile: full, minimal, smoke", "smoke")
    )
    cpus: int = field(default=4, metadata=_meta(_positive_int, "vCPUs of the VM", "2"))
    memory: int = field(default=4 << 30, metadata=_meta(parse_size, "guest RAM, e.g. 4G", "4G"))
    disk_size: int = field(
        default=10 << 30, metadata=_meta(parse_size, "root disk size, e.g. 10G", "10G")
    )
    cache_dir: Path = field(
        default_factory=_default_cache,
        metadata=_meta(_path, "cache directory", "~/.cache/sandbox-image"),
    )
    output_dir: Path = field(
        default=Path("out"), metadata=_meta(_path, "output directory", "out/ci")
    )
    accel: str = field(
        default="auto", metadata=_meta(_choice(ACCELS), "auto, kvm, hvf or tcg", "tcg")
    )
    # None: by the accelerator the build runs on (image/vm/accel.py DEFAULT_TIMEOUTS).
    boot_timeout: float | None = field(
        default=None,
        metadata=_meta(
            _optional_seconds,
            "seconds until the guest must answer (default: 900 with KVM/HVF, 2700 under TCG)",
            "3600",
        ),
    )
    provision_timeout: float | None = field(
        default=None,
        metadata=_meta(
            _optional_seconds,
            "seconds for cloud-init to finish (default: 5400 with KVM/HVF, 21600 under TCG)",
            "28800",
        ),
    )
    skills: Path | None = field(
        default=None,
        metadata=_meta(
            _optional_path,
            "a skills folder added to the project's skills/ at /opt/skills (a skill of the "
            "same name replaces the project's)",
            "../my-skills",
        ),
    )

    @property
    def uses_shipped_keyring(self) -> bool:
        return self.keyring == SHIPPED_KEYRING

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


FIELDS = {f.name: f for f in dataclasses.fields(BuildConfig)}
# The one field whose flag is not its name: --fingerprint, repeatable in spirit.
_FLAG_NAMES = {"fingerprints": "fingerprint"}


def flag_help(*names: str) -> dict[str, str]:
    """{task parameter: help} for these config fields (all when none are named), from the
    field table above, so every task that takes a config flag explains it the same way."""
    chosen = names or tuple(FIELDS)
    return {_FLAG_NAMES.get(n, n): FIELDS[n].metadata["help"] for n in chosen}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


@dataclass(frozen=True)
class Resolved:
    config: BuildConfig
    sources: Mapping[str, str]  # field -> "default" | "invoke.yaml" | "env:NAME" | "cli:--flag"


def resolve(
    cli: Mapping[str, object | None],
    env: Mapping[str, str],
    file_values: Mapping[str, object] | None,
    only: Collection[str] | None = None,
) -> Resolved:
    """The only place where precedence is decided. Pure: the caller passes os.environ.

    ``only``: the fields the caller uses (a launch needs the cache, not the mirror);
    the rest keep their defaults and are not read, so a bad value there cannot stop
    a task that never looks at it. Unknown names are still errors (typos)."""
    file_values = file_values or {}
    unknown_file = sorted(set(file_values) - set(FIELDS))
    if unknown_file:
        raise ImageError(
            f"unknown key(s) in invoke.yaml sandbox_image: {', '.join(unknown_file)}",
            hint=f"known keys: {', '.join(FIELDS)}",
        )
    unknown_env = sorted(
        k
        for k in env
        if k.startswith(ENV_PREFIX)
        and k[len(ENV_PREFIX) :].lower() not in FIELDS
        and k != ENV_PREFIX + "DEBUG"
    )
    if unknown_env:
        raise ImageError(
            f"unknown environment variable(s): {', '.join(unknown_env)}",
            hint=f"known: {', '.join(env_name(k) for k in FIELDS)}",
        )
    unknown_cli = sorted(set(cli) - set(FIELDS))
    if unknown_cli:  # a programming error in tasks/, but say it plainly
        raise ImageError(f"unknown config flag(s): {', '.join(unknown_cli)}")

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, f in FIELDS.items():
        if only is not None and name not in only and cli.get(name) is None:
            sources[name] = "default (not used here)"
            continue
        layers: list[tuple[str, object]] = []
        if name in file_values:
            layers.append(("invoke.yaml", file_values[name]))
        if env_name(name) in env:
            layers.append((f"env:{env_name(name)}", env[env_name(name)]))
        if cli.get(name) is not None:
            layers.append((f"cli:--{name.replace('_', '-')}", cli[name]))
        if not layers:
            sources[name] = "default"
            continue
        source, raw = layers[-1]
        hint = f"{name} is the {f.metadata['help']}; for example {f.metadata['example']}"
        if raw is None or not str(raw).strip():
            # `memory:` with nothing after it, SANDBOX_IMAGE_MEMORY="": not "the default".
            raise ImageError(f"empty value for {name} (from {source})", hint=hint)
        try:
            values[name] = f.metadata["parse"](raw)
        except ValueError as exc:
            raise ImageError(f"bad value for {name} (from {source}): {exc}", hint=hint) from None
        sources[name] = source
    # A private keyring without its own fingerprints would silently accept
    # nothing (pinned Canonical keys are not in it): ask for them explicitly.
    config = BuildConfig(**values)
    if sources["keyring"] not in ("default", "default (not used here)") and sources[
        "fingerprints"
    ].startswith("default"):
        raise ImageError(
            "a custom keyring needs the fingerprints it may sign with",
            hint="pass --fingerprint FPR (or SANDBOX_IMAGE_FINGERPRINTS) with --keyring",
        )
    return Resolved(config, sources)


def load(
    cli: Mapping[str, object | None],
    file_values: Mapping[str, object] | None,
    only: Collection[str] | None = None,
) -> Resolved:
    return resolve(cli, os.environ, file_values, only)
