"""Profile checks: what build-image verifies in the finished guest."""

from __future__ import annotations

from pathlib import Path

import pytest

from image.build.packages import ListError, list_profiles, load_profile, parse_checks


def test_every_shipped_profile_has_checks() -> None:
    for name in list_profiles():
        profile = load_profile(name)
        assert profile.checks, f"{name} has no .checks file"


def test_full_checks_pin_the_cowork_runtimes() -> None:
    checks = {c.name: c for c in load_profile("full").checks}
    assert checks["python"].expect == r"^Python 3\.10\."
    assert checks["node"].expect == r"^v22\."
    assert checks["gcc"].expect == r"\b11\.4\."
    assert {"no-go", "no-rustc", "no-docker"} <= set(checks)


def test_parse_checks_line_format() -> None:
    checks = parse_checks(Path("x.checks"), "# comment\njq | ^jq-1 | jq --version\n")
    assert [(c.name, c.expect, c.command, c.line) for c in checks] == [
        ("jq", "^jq-1", "jq --version", 2)
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("jq | ^jq\n", "expected 'name | regex | command'"),
        ("jq | ([ | jq --version\n", "bad regular expression"),
        ("jq | a | b\njq | a | b\n", "given twice"),
    ],
)
def test_parse_checks_errors_name_file_and_line(text: str, fragment: str) -> None:
    with pytest.raises(ListError) as info:
        parse_checks(Path("p.checks"), text)
    assert fragment in str(info.value)
    assert "p.checks" in str(info.value)
