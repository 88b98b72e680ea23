from __future__ import annotations

from pathlib import Path

import pytest

from image import config
from image.config import (
    PINNED_FINGERPRINTS,
    SHIPPED_KEYRING,
    BuildConfig,
    format_size,
    parse_size,
    resolve,
)
from image.errors import ImageError


def test_defaults() -> None:
    r = resolve({}, {}, {})
    assert r.config.arch == "arm64"
    assert r.config.release == "jammy"
    assert r.config.cpus == 4
    assert r.config.memory == 4 << 30
    assert r.config.keyring == SHIPPED_KEYRING
    assert r.config.fingerprints == PINNED_FINGERPRINTS
    assert set(r.sources.values()) == {"default"}


def test_precedence_cli_over_env_over_file_over_default() -> None:
    file_values = {"arch": "amd64", "cpus": 2, "memory": "1G", "profile": "smoke"}
    env = {"SANDBOX_IMAGE_CPUS": "3", "SANDBOX_IMAGE_MEMORY": "2G"}
    cli = {"memory": "3G", "arch": None}  # None means "flag not given"
    r = resolve(cli, env, file_values)
    assert (r.config.arch, r.sources["arch"]) == ("amd64", "invoke.yaml")
    assert (r.config.cpus, r.sources["cpus"]) == (3, "env:SANDBOX_IMAGE_CPUS")
    assert (r.config.memory, r.sources["memory"]) == (3 << 30, "cli:--memory")
    assert (r.config.profile, r.sources["profile"]) == ("smoke", "invoke.yaml")
    assert r.sources["release"] == "default"


def test_env_beats_file() -> None:
    r = resolve({}, {"SANDBOX_IMAGE_ARCH": "amd64"}, {"arch": "arm64"})
    assert r.config.arch == "amd64"


def test_config_is_frozen() -> None:
    cfg = resolve({}, {}, {}).config
    with pytest.raises(AttributeError):
        cfg.arch = "amd64"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cli", "env", "file_values", "fragment"),
    [
        ({"arch": "x86"}, {}, {}, "bad value for arch (from cli:--arch)"),
        ({}, {"SANDBOX_IMAGE_CPUS": "many"}, {}, "bad value for cpus (from env:"),
        ({}, {}, {"memory": "lots"}, "bad value for memory (from invoke.yaml)"),
        ({}, {}, {"colour": "blue"}, "unknown key(s) in invoke.yaml"),
        ({}, {"SANDBOX_IMAGE_ARHC": "amd64"}, {}, "unknown environment variable(s)"),
        ({"mirror": "ftp://x"}, {}, {}, "bad value for mirror"),
        ({"serial": "2024-01-01"}, {}, {}, "bad value for serial"),
        ({"fingerprints": "ABC"}, {}, {}, "bad value for fingerprints"),
        ({"keyring": "/tmp/k.gpg"}, {}, {}, "custom keyring needs the fingerprints"),
    ],
)
def test_bad_input_is_an_error_with_hint(
    cli: dict[str, object], env: dict[str, str], file_values: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ImageError) as info:
        resolve(cli, env, file_values)
    assert fragment in info.value.message
    assert info.value.hint


def test_custom_keyring_with_fingerprint() -> None:
    fpr = "AB" * 20
    r = resolve({"keyring": "/tmp/k.gpg", "fingerprints": fpr.lower()}, {}, {})
    assert r.config.keyring == Path("/tmp/k.gpg")
    assert r.config.fingerprints == (fpr,)
    assert not r.config.uses_shipped_keyring


def test_debug_variable_is_not_an_unknown_key() -> None:
    resolve({}, {"SANDBOX_IMAGE_DEBUG": "1", "UNRELATED": "x"}, {})


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4G", 4 << 30),
        ("4096M", 4 << 30),
        ("10GiB", 10 << 30),
        ("512k", 512 << 10),
        ("1024B", 1024),
        ("1.5G", 3 << 29),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "0G", "4X", "four", "4", 4, 1024, True])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_a_size_without_unit_says_so() -> None:
    with pytest.raises(ValueError, match="needs a unit"):
        parse_size(4)


def test_memory_without_unit_in_yaml_is_an_error() -> None:
    with pytest.raises(ImageError, match=r"memory.*needs a unit"):
        resolve({}, {}, {"memory": 4})


@pytest.mark.parametrize("env", [{"SANDBOX_IMAGE_MEMORY": ""}, {"SANDBOX_IMAGE_BOOT_TIMEOUT": " "}])
def test_empty_values_are_errors_not_defaults(env: dict[str, str]) -> None:
    with pytest.raises(ImageError, match="empty value") as info:
        resolve({}, env, {})
    assert "for example" in (info.value.hint or "")


def test_empty_yaml_value_is_an_error() -> None:
    with pytest.raises(ImageError, match=r"empty value for cache_dir .from invoke.yaml"):
        resolve({}, {}, {"cache_dir": None})


@pytest.mark.parametrize("release", ["noble", "focal"])
def test_only_jammy_is_supported(release: str) -> None:
    with pytest.raises(ImageError, match="only jammy"):
        resolve({"release": release}, {}, {})


def test_format_size_round_trips() -> None:
    for size in (4 << 30, 512 << 20, 10 << 30, 1000):
        assert parse_size(format_size(size)) == size


def test_to_json_is_plain() -> None:
    data = BuildConfig().to_json()
    assert data["arch"] == "arm64"
    assert isinstance(data["keyring"], str)
    assert isinstance(data["fingerprints"], list)


def test_a_task_reads_only_the_fields_it_uses() -> None:
    env = {"SANDBOX_IMAGE_MIRROR": "not-a-url", "SANDBOX_IMAGE_CACHE_DIR": "/tmp/c"}
    with pytest.raises(ImageError, match="bad value for mirror"):
        resolve({}, env, {})
    got = resolve({}, env, {}, only=("cache_dir",))  # what a launch reads
    assert got.config.cache_dir == Path("/tmp/c")
    assert got.sources["mirror"] == "default (not used here)"
    # A flag the task passes is always read, and typos stay errors.
    assert resolve({"arch": "amd64"}, env, {}, only=("cache_dir",)).config.arch == "amd64"
    with pytest.raises(ImageError, match="unknown environment"):
        resolve({}, {**env, "SANDBOX_IMAGE_MIROR": "x"}, {}, only=("cache_dir",))


@pytest.mark.parametrize("text", ["abc", "0", "-5", "inf", "nan"])
def test_a_timeout_that_is_not_a_positive_finite_number_is_refused(text: str) -> None:
    with pytest.raises(ImageError, match="provision_timeout"):
        config.resolve({"provision_timeout": text}, {}, {})
    with pytest.raises(ValueError):
        config.parse_seconds(text)


def test_timeouts_left_unset_are_decided_by_the_accelerator() -> None:
    cfg = config.resolve({}, {}, {}).config
    assert cfg.boot_timeout is None and cfg.provision_timeout is None
    assert config.resolve({"boot_timeout": "120"}, {}, {}).config.boot_timeout == 120.0
