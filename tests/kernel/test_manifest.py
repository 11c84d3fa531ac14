from __future__ import annotations

import tomllib
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpz.errors import ManifestError
from mcpz.manifest import Manifest, RunSpec, manifest_from_dict, parse_manifest

part = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
names = st.builds(lambda a, b: f"{a}/{b}", part, part)
versions = st.builds(
    lambda a, b, c, pre: f"{a}.{b}.{c}{pre}",
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
    st.sampled_from(["", "a1", "b2", "rc1", ".post1", ".dev3"]),
)
text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=30)
specs = st.sampled_from([">=1.2,<2", "~=1.4", "^1.2", "~1.2.3", "==1.0.3", "*", ">=0.1"])


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    kind: Literal["agent", "plugin"] = draw(st.sampled_from(["agent", "plugin"]))
    name = draw(names)
    deps = draw(st.dictionaries(names.filter(lambda n: n != name), specs, max_size=4))
    run = None
    if kind == "agent":
        run = RunSpec(
            command=tuple(draw(st.lists(text.filter(bool), min_size=1, max_size=3))),
            env=draw(st.dictionaries(st.from_regex(r"[A-Z_]{1,8}", fullmatch=True), text, max_size=3)),
            sessions=draw(st.sampled_from(["shared", "isolated"])),
            max_sessions=draw(st.integers(1, 100_000)),
            session_idle=float(draw(st.integers(1, 86_400))),
        )
    return Manifest(
        name=name,
        version=draw(versions),
        kind=kind,
        description=draw(text),
        license=draw(st.none() | st.sampled_from(["MIT", "Apache-2.0"])),
        keywords=tuple(draw(st.lists(text, max_size=3))),
        run=run,
        dependencies=dict(sorted(deps.items())),
    )


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_manifest_round_trips_through_toml(manifest: Manifest) -> None:
    text = manifest.to_toml()
    again = parse_manifest(text)
    assert again == manifest
    assert tomllib.loads(again.to_toml()) == tomllib.loads(text)


VALID = '[agent]\nname = "acme/weather"\nversion = "0.1.0"\n[run]\ncommand = ["python", "server.py"]\n'


def test_the_session_mode_defaults_to_shared_and_isolated_is_kept() -> None:
    run = parse_manifest(VALID).run
    assert run is not None and (run.sessions, run.max_sessions, run.session_idle) == ("shared", 16, 300.0)
    assert "sessions" not in parse_manifest(VALID).to_toml()  # defaults are not written
    isolated = parse_manifest(VALID + 'sessions = "isolated"\nmax_sessions = 4\nsession_idle = 30\n').run
    assert isolated is not None and (isolated.sessions, isolated.max_sessions, isolated.session_idle) == (
        "isolated",
        4,
        30.0,
    )


def test_minimal_agent_parses() -> None:
    manifest = parse_manifest(VALID)
    assert manifest.name == "acme/weather"
    assert manifest.run is not None and manifest.run.command == ("python", "server.py")


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (VALID.replace('"0.1.0"', '"1.x"'), '[agent].version "1.x" is not a PEP 440 version (e.g. "1.0.0")'),
        (VALID.replace('"0.1.0"', '"1.0.0-beta1"'), 'write "1.0.0b1"'),
        (VALID.replace("acme/weather", "Acme/weather"), 'part "Acme" may hold only lower-case'),
        (VALID.replace("acme/weather", "acme"), 'must be "namespace/name"'),
        (VALID.replace("acme/weather", "acme/" + "x" * 65), "longer than 64"),
        (VALID.replace("acme/weather", "acme/-x"), "may not start or end with -"),
        (
            VALID.replace("[agent]", "[agent]\nversoin = 1"),
            'unknown key [agent]."versoin"; did you mean "version"?',
        ),
        (VALID + "[dependencys]\n", 'unknown key "dependencys"; did you mean "dependencies"?'),
        (
            VALID + '[dependencies]\n"acme/geo" = "1.x"\n',
            '[dependencies]."acme/geo" "1.x" is not a PEP 440 specifier',
        ),
        (VALID + '[dependencies]\n"geo" = ">=1"\n', '[dependencies] key "geo"'),
        (VALID.replace("[run]\ncommand", "[run]\ncmd"), 'unknown key [run]."cmd"'),
        ('[agent]\nname = "a/b"\nversion = "1.0.0"\n', "missing table [run]"),
        (
            '[agent]\nname = "a/b"\nversion = "1.0.0"\nkind = "plugin"\n[run]\ncommand=["x"]\n',
            "only for kind",
        ),
        ('[agent]\nname = "a/b"\nversion = "1.0.0"\nkind = "tool"\n', '[agent].kind "tool"'),
        ("[agent\n", "not valid TOML"),
        (VALID.replace('["python", "server.py"]', "[]"), "[run].command must not be empty"),
        (VALID + 'sessions = "private"\n', '[run].sessions \'private\' is not one of "shared", "isolated"'),
        (VALID + "max_sessions = 0\n", "[run].max_sessions 0 must be a whole number from 1 to 100000"),
        (VALID + "max_sessions = true\n", "[run].max_sessions True must be a whole number"),
        (VALID + 'session_idle = "5m"\n', "[run].session_idle '5m' must be seconds, from 1 to 86400"),
    ],
)
def test_bad_manifests_name_key_value_and_fix(toml: str, expected: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(toml)
    assert expected in info.value.message
    assert info.value.message.startswith("mcpz.toml: ")
    assert "\n" not in info.value.message


@given(st.text(max_size=20))
@settings(max_examples=100, deadline=None)
def test_arbitrary_versions_either_parse_or_are_refused_cleanly(version: str) -> None:
    data = {"agent": {"name": "a/b", "version": version}, "run": {"command": ["x"]}}
    try:
        manifest = manifest_from_dict(data)
    except ManifestError as e:
        assert "[agent].version" in e.message
    else:
        assert manifest.version == version


@pytest.mark.parametrize("name", ["acme/weather\n", "acme\n/weather", "acme/wea ther", "acme/weäther"])
def test_names_with_hidden_characters_are_refused(name: str) -> None:
    from mcpz.names import name_problem

    assert name_problem(name) is not None
