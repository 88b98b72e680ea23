"""bwrap profiles on the host: commented YAML sources -> the JSON the launcher reads.

The typed options live in ``image/guest/bwrap_profile.py`` (standard library only)
because the launcher in the VM renders the same argv; this module only reads the
YAML sources, validates them through those types and writes the in-guest form.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from image.errors import ImageError
from image.guest import bwrap_profile
from image.guest.bwrap_profile import Profile

ROOT = Path(__file__).resolve().parents[2]
PROFILE_DIR = ROOT / "bwrap-profiles"


def shipped() -> dict[str, Path]:
    return {p.name.removesuffix(".yaml"): p for p in sorted(PROFILE_DIR.glob("*.yaml"))}


def load(path: Path) -> Profile:
    name = path.name.removesuffix(".yaml")
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ImageError(
            f"cannot read bwrap profile {path}: {exc.strerror}",
            hint="pass a path to an existing profile",
        ) from None
    except yaml.YAMLError as exc:
        raise ImageError(
            f"bwrap profile {name!r} is not valid YAML: {exc}", hint=f"fix the syntax in {path}"
        ) from None
    try:
        profile = bwrap_profile.load_document(name, document)
    except bwrap_profile.ProfileError as exc:
        raise ImageError(str(exc), hint=f"fix {path}") from None
    if document.get("name", name) != name:
        raise ImageError(
            f"bwrap profile {path} names itself {document.get('name')!r}",
            hint="the name must match the file name",
        )
    return profile


def to_json(profile: Profile) -> bytes:
    """The in-guest form: sorted keys, so the bytes depend only on the profile."""
    return (json.dumps(profile.to_document(), indent=2, sort_keys=True) + "\n").encode()


def compile_named(name: str) -> bytes:
    profiles = shipped()
    if name not in profiles:
        raise ImageError(
            f"no bwrap profile named {name!r}", hint=f"shipped profiles: {', '.join(profiles)}"
        )
    return to_json(load(profiles[name]))
