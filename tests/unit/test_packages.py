"""Package lists and profiles: every shipped file loads; broken ones name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from image.build import packages
from image.build.packages import ListError, load_profile, parse_group
from image.errors import ImageError

LISTS = packages.PACKAGE_LISTS
SHIPPED = packages.list_profiles()


def test_the_three_profiles_ship() -> None:
    assert SHIPPED == ["full", "minimal", "smoke"]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads(name: str) -> None:
    profile = load_profile(name)
    assert profile.groups and profile.apt_packages
    assert profile.expected_installed > 0
    # Every profile needs the guest agent and what the sandbox launcher runs on.
    for needed in ("qemu-guest-agent", "python3", "bubblewrap", "socat"):
        assert needed in profile.apt_packages


def test_every_list_file_parses_and_is_used_by_a_profile() -> None:
    used = {(g.kind, g.name) for name in SHIPPED for g in load_profile(name).groups}
    for kind in packages.KINDS:
        for path in sorted((LISTS / kind).glob("*.list")):
            group = parse_group(kind, path.stem, path, path.read_text())
            assert group.entries
            assert (kind, path.stem) in used, f"{path} is in no profile"


def test_full_is_the_cowork_set() -> None:
    full = load_profile("full")
    # jammy: an estimate from the stand-in's measured count (the profile says how)
    assert full.expected_installed == 1030
    assert full.tolerance == pytest.approx(0.12)
    assert full.expected_range == (906, 1154)
    # the stand-in: what ./inv test --full measured
    on_debian = packages.resolve_profile("full", distro="debian")
    assert on_debian.expected_range == (720, 766)
    for name in (
        "gcc-11",
        "g++-11",
        "make",
        "cmake",
        "openjdk-11-jdk-headless",
        "nodejs",
        "python3-pip",
        "libreoffice-writer",
        "pandoc",
        "poppler-utils",
        "qpdf",
        "ghostscript",
        "imagemagick",
        "tesseract-ocr",
        "graphviz",
        "ffmpeg",
        "ruby",
        "git",
        "curl",
        "jq",
        "ripgrep",
        "zip",
        "unzip",
    ):
        assert name in full.apt_packages, name
    forbidden = {"golang", "golang-go", "rustc", "cargo", "docker.io", "docker-ce", "podman"}
    assert not forbidden & set(full.apt_packages)
    assert [s.name for s in full.sources] == ["nodesource"]
    assert full.sources[0].fingerprint == "6F71F525282841EEDAF851B42F59B5F99B1BE0B4"
    assert full.sources[0].uri.endswith("/node_22.x")
    pip_names = {spec.split("==")[0].split("[")[0] for spec in full.pip_packages}
    assert {
        "pypdf",
        "pdfplumber",
        "python-docx",
        "openpyxl",
        "python-pptx",
        "reportlab",
        "pandas",
        "matplotlib",
        "pillow",
    } <= pip_names
    assert all("==" in spec for spec in full.pip_packages)
    npm_names = {spec.rsplit("@", 1)[0] for spec in full.npm_packages}
    assert {"docx", "pptxgenjs", "pdf-lib"} <= npm_names


def test_smoke_is_small_and_builds_on_debian() -> None:
    smoke = load_profile("smoke")
    assert "debian" in smoke.distros and "ubuntu" in smoke.distros
    assert len(smoke.apt_packages) <= 10
    assert not smoke.pip_packages and not smoke.npm_packages and not smoke.sources


def test_minimal_has_runtimes_but_no_document_stack() -> None:
    minimal = load_profile("minimal")
    assert {"python3", "nodejs", "openjdk-11-jdk-headless"} <= set(minimal.apt_packages)
    assert "libreoffice-core" not in minimal.apt_packages
    assert not minimal.pip_packages


def test_summary_counts() -> None:
    summary = load_profile("smoke").summary()
    assert summary["explicit"] == {"apt": 7, "pip": 0, "npm": 0}
    assert summary["expected_range"] == [518, 702]
    on_debian = packages.resolve_profile("smoke", distro="debian").summary()
    assert on_debian["expected_range"] == [219, 259]  # 239 measured, ± 8 %
    text = packages.format_summary(load_profile("full"))
    assert "expected installed (dpkg): 1030 ± 12% -> 906..1154" in text


# --- errors name file and line ------------------------------------------------


def _tree(tmp_path: Path, profile: str, **lists: str) -> Path:
    """A package-lists tree: lists given as kind__group=text."""
    for kind in (*packages.KINDS, "sources", "profiles"):
        (tmp_path / kind).mkdir()
    (tmp_path / "profiles" / "p.profile").write_text(profile)
    for key, text in lists.items():
        kind, _, group = key.partition("__")
        suffix = "source" if kind == "sources" else "list"
        (tmp_path / kind / f"{group}.{suffix}").write_text(text)
    return tmp_path


PROFILE = (
    "description: test\ndistros: debian\napt: one two\nexpected_installed: 10\ntolerance: 5%\n"
)


def test_minimal_tree_loads(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE, apt__one="# c\njq  # inline comment\n", apt__two="curl\n")
    profile = load_profile("p", root)
    assert profile.apt_packages == ("jq", "curl")
    assert profile.distros == ("debian",)


def test_malformed_apt_line_names_file_and_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE, apt__one="jq\n\n# x\nNot_A_Package\n", apt__two="curl\n")
    with pytest.raises(ListError) as err:
        load_profile("p", root)
    assert err.value.message.endswith("apt/one.list:4: not a Debian package name: 'Not_A_Package'")
    assert err.value.line == 4


def test_two_words_on_a_line_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ListError, match=r"x.list:2: one package a line"):
        parse_group("apt", "x", tmp_path / "x.list", "jq\ncurl wget\n")


def test_duplicate_within_a_list(tmp_path: Path) -> None:
    with pytest.raises(ListError, match=r"x.list:3: duplicate package 'jq' \(already on line 1\)"):
        parse_group("apt", "x", tmp_path / "x.list", "jq\ncurl\njq\n")


def test_duplicate_across_groups_names_both_places(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE, apt__one="jq\ncurl\n", apt__two="wget\n\ncurl\n")
    with pytest.raises(ListError) as err:
        load_profile("p", root)
    message = err.value.message
    assert "apt/two.list:3: 'curl' is also in" in message
    assert "apt/one.list:2" in message


def test_pip_duplicates_compare_normalized_names(tmp_path: Path) -> None:
    with pytest.raises(ListError, match=r"x.list:2: duplicate package 'Python_Docx'"):
        parse_group("pip", "x", tmp_path / "x.list", "python-docx==1.0\nPython_Docx==1.1\n")


def test_unknown_group_names_profile_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE, apt__one="jq\n")
    with pytest.raises(ListError) as err:
        load_profile("p", root)
    assert err.value.message.endswith("profiles/p.profile:3: unknown apt group 'two'")
    assert err.value.hint == "known apt groups: one"


def test_unknown_profile_key(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE + "colour: blue\n", apt__one="jq\n", apt__two="curl\n")
    with pytest.raises(ListError, match=r"p.profile:6: unknown key 'colour'"):
        load_profile("p", root)


def test_repeated_profile_key(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE + "apt: one\n", apt__one="jq\n", apt__two="curl\n")
    with pytest.raises(ListError, match=r"p.profile:6: 'apt' given twice \(first on line 3\)"):
        load_profile("p", root)


def test_missing_profile_key(tmp_path: Path) -> None:
    root = _tree(tmp_path, "description: x\ndistros: debian\napt: one\n", apt__one="jq\n")
    with pytest.raises(
        ListError,
        match=r"p.profile: missing key\(s\): expected_installed, "
        r"tolerance",
    ):
        load_profile("p", root)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("tolerance: five", "tolerance must be a percentage"),
        ("tolerance: 0.05", "tolerance must be a percentage"),
        ("tolerance: 150%", "tolerance must be a percentage"),
    ],
)
def test_bad_tolerance(tmp_path: Path, line: str, problem: str) -> None:
    text = PROFILE.replace("tolerance: 5%", line)
    root = _tree(tmp_path, text, apt__one="jq\n", apt__two="curl\n")
    with pytest.raises(ListError, match=rf"p.profile:5: {problem}"):
        load_profile("p", root)


def test_bad_expected_count(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE.replace("10", "about 10"), apt__one="jq\n", apt__two="curl\n")
    with pytest.raises(ListError, match=r"p.profile:4: expected_installed must be"):
        load_profile("p", root)


def test_unknown_distro(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE.replace("debian", "fedora"), apt__one="jq\n", apt__two="curl\n")
    with pytest.raises(ListError, match=r"p.profile:2: unknown distro 'fedora'"):
        load_profile("p", root)


@pytest.mark.parametrize(
    ("kind", "line"),
    [
        ("pip", "pypdf"),
        ("pip", "pypdf>=4"),
        ("pip", "pypdf==4.0 ; python_version<'3'"),
        ("npm", "docx"),
        ("npm", "docx@^9.0.0"),
        ("npm", "docx@latest"),
    ],
)
def test_unpinned_pip_and_npm_lines_are_errors(tmp_path: Path, kind: str, line: str) -> None:
    with pytest.raises(ListError, match=r"x.list:2: "):
        parse_group(kind, "x", tmp_path / "x.list", f"# header\n{line}\n")


def test_pinned_forms_parse(tmp_path: Path) -> None:
    pip = parse_group(
        "pip", "x", tmp_path / "x.list", "markitdown[docx,pdf]==0.1.9\npdfminer.six==20260107\n"
    )
    assert [(e.name, e.version, e.key) for e in pip.entries] == [
        ("markitdown", "0.1.9", "markitdown"),
        ("pdfminer.six", "20260107", "pdfminer-six"),
    ]
    npm = parse_group("npm", "x", tmp_path / "x.list", "@scope/pkg@1.2.3\ntsx@4.23.15\n")
    assert [e.spec for e in npm.entries] == ["@scope/pkg@1.2.3", "tsx@4.23.15"]


def test_empty_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ListError, match=r"x.list: the list names no package"):
        parse_group("apt", "x", tmp_path / "x.list", "# nothing yet\n\n")


def test_source_needs_a_full_fingerprint(tmp_path: Path) -> None:
    text = (
        "uri: https://example.org/repo\nsuite: s\ncomponents: main\n"
        "fingerprint: 9B1BE0B4\nkey_url: https://example.org/key.asc\n"
    )
    with pytest.raises(ListError, match=r"s.source:4: not a 40-hex-digit"):
        packages.parse_source("s", tmp_path / "s.source", text)


def test_source_with_a_keyserver_says_what_replaced_it(tmp_path: Path) -> None:
    text = (
        "uri: https://example.org/repo\nsuite: s\ncomponents: main\n"
        f"fingerprint: {'A' * 40}\nkeyserver: hkps://keys.example.org\n"
    )
    with pytest.raises(ListError, match=r"s.source:5: keyserver is no longer read") as err:
        packages.parse_source("s", tmp_path / "s.source", text)
    assert "key_url" in (err.value.hint or "")


def test_source_urls_cannot_carry_shell_or_spaces(tmp_path: Path) -> None:
    for bad in ("https://x.org/k$(id)'", "ftp://x.org/k", "https://x.org/a b"):
        text = (
            "uri: https://example.org/repo\nsuite: s\ncomponents: main\n"
            f"fingerprint: {'A' * 40}\nkey_url: {bad}\n"
        )
        with pytest.raises(ListError, match="key_url must be an http"):
            packages.parse_source("s", tmp_path / "s.source", text)


def test_unknown_source_names_profile_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, PROFILE + "sources: nope\n", apt__one="jq\n", apt__two="curl\n")
    with pytest.raises(ListError, match=r"p.profile:6: unknown source 'nope'"):
        load_profile("p", root)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ImageError) as err:
        load_profile("huge")
    assert "no profile 'huge'" in err.value.message
    assert err.value.hint == "known profiles: full, minimal, smoke"


def test_full_pins_pip_dependencies_too() -> None:
    full = load_profile("full")
    assert len(full.pip_constraints) >= 30
    assert all("==" in spec for spec in full.pip_constraints)
    listed = {spec.split("==")[0].split("[")[0].lower() for spec in full.pip_packages}
    pinned = {spec.split("==")[0].lower() for spec in full.pip_constraints}
    assert not listed & pinned
    assert "onnxruntime" in pinned  # markitdown's heaviest dependency, pinned


def test_constraint_that_repeats_a_listed_pin_names_both(tmp_path: Path) -> None:
    profile = PROFILE.replace("apt: one two", "apt: one\npip: py")
    root = _tree(tmp_path, profile, apt__one="jq\n", pip__py="pypdf==7.1.1\n")
    (root / "pip" / "py.constraints").write_text("# deps\nsix==1.17.0\nPyPDF==7.0\n")
    with pytest.raises(ListError) as err:
        load_profile("p", root)
    assert "pip/py.constraints:3: 'PyPDF' is already pinned in" in err.value.message
    assert "pip/py.list:1" in err.value.message


def test_constraints_load_with_their_group(tmp_path: Path) -> None:
    profile = PROFILE.replace("apt: one two", "apt: one\npip: py")
    root = _tree(tmp_path, profile, apt__one="jq\n", pip__py="pypdf==7.1.1\n")
    (root / "pip" / "py.constraints").write_text("six==1.17.0\n")
    loaded = load_profile("p", root)
    assert loaded.pip_packages == ("pypdf==7.1.1",)
    assert loaded.pip_constraints == ("six==1.17.0",)


def _source_text(**overrides: str) -> str:
    fields = {
        "uri": "https://example.org/repo", "suite": "nodistro", "components": "main",
        "key_url": "https://example.org/key.asc", "fingerprint": "A" * 40, **overrides,
    }  # fmt: skip
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


def test_a_source_file_is_named_by_its_file_and_replaces_that_source(tmp_path: Path) -> None:
    path = tmp_path / "nodesource.source"
    path.write_text(_source_text(uri="http://127.0.0.1:8080/node_22.x"))
    source = packages.load_source_file(path)
    full = packages.resolve_profile("full", sources=[source])
    assert [s.uri for s in full.sources] == ["http://127.0.0.1:8080/node_22.x"]
    assert full.sources[0].keyring == "/etc/apt/keyrings/sandbox-image-nodesource.gpg"
    # A profile without that source: nothing changes (the mirror's line is the same for all).
    assert packages.resolve_profile("smoke", sources=[source]).sources == ()
    bad = tmp_path / "node source.txt"
    bad.write_text(_source_text())
    with pytest.raises(ImageError, match=r"a source file is named NAME\.source"):
        packages.load_source_file(bad)
    with pytest.raises(ImageError, match="cannot read source file"):
        packages.load_source_file(tmp_path / "absent.source")


def test_distro_map_lines_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "debian.map"
    text = (
        "apt gcc-11 gcc-14  # why\napt wkhtmltopdf -\n"
        'check java version "21\\.\nexpected full 1040 3%\n'
    )
    mapping = packages.parse_distro_map("debian", path, text)
    assert mapping.apt == {"gcc-11": "gcc-14", "wkhtmltopdf": None}
    assert mapping.checks == {"java": 'version "21\\.'}
    assert mapping.expected == {"full": (1040, 0.03)}
    for bad, message in (
        ("apt gcc-11\n", "cannot read"), ("apt GCC gcc\n", "not a Debian package name"),
        ("apt a1 b1\napt a1 c1\n", "mapped twice"), ("check x (\n", "bad regular expression"),
        ("expected full many 3%\n", "not a positive count"), ("rename a b\n", "cannot read"),
    ):  # fmt: skip
        with pytest.raises(ListError, match=message):
            packages.parse_distro_map("debian", path, bad)


def test_the_shipped_debian_map_is_used_by_the_full_profile() -> None:
    """Every line of the reviewed map changes something: no stale mapping."""
    mapping = packages.load_distro_map("debian")
    assert mapping is not None
    names = {e.name for name in SHIPPED for g in load_profile(name).groups
             if g.kind == "apt" for e in g.entries}  # fmt: skip
    assert set(mapping.apt) <= names, set(mapping.apt) - names
    checks = {c.name for name in SHIPPED for c in load_profile(name).checks}
    assert set(mapping.checks) <= checks
    assert set(mapping.expected) <= set(SHIPPED)
    full = packages.resolve_profile("full", distro="debian")
    for old, new in mapping.apt.items():
        assert old not in full.apt_packages
        assert new is None or new in full.apt_packages


def test_an_sdist_is_allowed_only_where_a_line_says_why(tmp_path: Path) -> None:
    text = "a==1  # sdist: pure Python, no wheel\nb==2  # plain comment\n"
    group = parse_group("pip", "x", tmp_path / "x.list", text)
    assert [(e.name, e.sdist) for e in group.entries] == [("a", "pure Python, no wheel"),
                                                          ("b", None)]  # fmt: skip
    with pytest.raises(ListError, match=r"x\.list:1: only pip packages"):
        parse_group("apt", "x", tmp_path / "x.list", "jq  # sdist: nonsense\n")
    full = load_profile("full")
    assert [e.name for g in full.groups_of("pip") for e in g.entries if e.sdist] == ["odfpy"]
