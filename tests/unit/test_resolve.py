"""The pure parts of ./inv packages --resolve (the resolvers themselves are asked by hand:
they need PyPI and the npm registry, and tests stay on loopback)."""

from __future__ import annotations

from pathlib import Path

from image.build import packages, resolve


def test_a_resolution_must_stay_inside_the_pins() -> None:
    pins = {"numpy": "2.2.6", "pyyaml": "6.0.4"}
    assert resolve.check_pins({"numpy": "2.2.6", "PyYAML": "6.0.4"}, pins) == []
    assert resolve.check_pins({"numpy": "2.3.0", "six": "1.17.0"}, pins) == [
        "numpy: resolved 2.3.0, pinned 2.2.6",
        "six==1.17.0 is pinned nowhere (add it to the constraints)",
    ]


def test_pip_asks_for_wheels_for_jammy_on_both_arches_ignoring_this_hosts_config() -> None:
    assert [t.label for t in resolve.JAMMY_TARGETS] == [
        "CPython 3.10 manylinux x86_64", "CPython 3.10 manylinux aarch64",
    ]  # fmt: skip
    argv = resolve.pip_argv(resolve.JAMMY_TARGETS[1], Path("r"), Path("c"), Path("rep"), Path("t"))
    assert argv[3:5] == ["--isolated", "--disable-pip-version-check"]
    assert "--only-binary=:all:" in argv and argv[argv.index("--abi") + 1] == "cp310"
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    # kiwisolver publishes only manylinux_2_12 wheels for x86_64: older tags must be asked too.
    assert "manylinux_2_12_aarch64" in platforms and "manylinux_2_35_aarch64" in platforms
    assert all(p.endswith("_aarch64") for p in platforms)


def test_npm_runs_under_the_images_node_and_refuses_engines_it_does_not_meet() -> None:
    argv = resolve.npm_argv(Path("/n/node"), Path("/n/npm-cli.js"), Path("/p"), ["a@1.0.0"])
    assert argv[:3] == ["/n/node", "/n/npm-cli.js", "install"]
    assert {"--dry-run", "--engine-strict", "--ignore-scripts"} <= set(argv)
    assert argv[-1] == "a@1.0.0"


def test_the_full_profiles_pins_cover_each_other() -> None:
    """Nothing pinned twice at different versions between list and constraints."""
    full = packages.load_profile("full")
    entries = [e for g in full.groups_of("pip") for e in (*g.entries, *g.constraints)]
    assert len({e.key for e in entries}) == len(entries)
    assert resolve.normalized("Markdown_It.Py") == "markdown-it-py"
