"""The example agents and plugin: valid manifests, tools that list and answer.

The examples are copied to a temporary folder first, so that running them (bytecode caches,
the notes file) leaves the repository untouched.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcpz.bundled import bundled_path
from mcpz.local.session import open_agent
from mcpz.manifest import load_manifest

EXAMPLES = bundled_path("templates").parent / "examples"
AGENTS = {"weather": "acme/weather", "notes": "acme/notes", "everything": "acme/everything"}


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("examples") / "examples"
    shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns("ci", "__pycache__", "notes.json"))
    return target


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_every_example_has_a_valid_manifest() -> None:
    folders = [p.parent for p in EXAMPLES.glob("*/mcpz.toml")]
    names = {folder.name: load_manifest(folder) for folder in folders}
    assert {"geo", "weather", "notes", "everything"} <= set(names)
    assert names["geo"].kind == "plugin" and names["geo"].run is None
    assert names["weather"].dependencies == {"acme/geo": "^0.1"}
    assert names["notes"].run is not None and names["notes"].run.env == {"NOTES_FILE": "notes.json"}
    for folder, name in AGENTS.items():
        assert names[folder].name == name and names[folder].kind == "agent"


@pytest.fixture
def geo(examples: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The acme/geo plugin's package, imported as an agent imports it."""
    monkeypatch.syspath_prepend(str(examples / "geo"))
    yield importlib.import_module("geo")
    sys.modules.pop("geo", None)


def test_the_geo_plugin_imports_and_measures(geo: Any) -> None:
    oslo = geo.locate("oslo")
    assert (oslo.name, oslo.country) == ("Oslo", "NO")
    assert round(geo.distance_km(oslo, geo.locate("Bergen"))) == 305
    with pytest.raises(LookupError, match='did you mean "Oslo"'):
        geo.locate("Olso")


@pytest.mark.anyio
async def test_weather_uses_its_plugin(examples: Path) -> None:
    async with open_agent(examples / "weather", timeout=60) as agent:
        assert {t.name for t in await agent.list_tools()} == {"forecast", "distance", "cities"}
        forecast = await agent.call("forecast", {"city": "oslo", "days": 2})
        distance = await agent.call("distance", {"from_city": "Oslo", "to_city": "Bergen"})
        unknown = await agent.call("forecast", {"city": "Olso"})
    assert forecast.structured_content is not None
    assert forecast.structured_content["city"] == "Oslo"
    assert len(forecast.structured_content["days"]) == 2
    assert distance.text == "305.1"
    assert unknown.is_error and 'did you mean "Oslo"' in unknown.text


@pytest.mark.anyio
async def test_notes_keeps_notes_in_its_file(examples: Path) -> None:
    folder = examples / "notes"
    async with open_agent(folder, timeout=60) as agent:
        assert {t.name for t in await agent.list_tools()} == {
            "add_note",
            "list_notes",
            "search_notes",
            "delete_note",
        }
        added = await agent.call("add_note", {"text": "buy milk", "tags": ["Home"]})
        found = await agent.call("search_notes", {"query": "MILK"})
        missing = await agent.call("delete_note", {"id": 99})
    assert added.structured_content is not None
    assert added.structured_content["id"] == 1 and added.structured_content["tags"] == ["home"]
    assert found.structured_content == {"result": [added.structured_content]}
    assert missing.is_error and "no note with id 99" in missing.text
    assert (folder / "notes.json").is_file()  # NOTES_FILE from [run] env, in the agent's folder


@pytest.mark.anyio
async def test_everything_answers_the_conformance_suites_tools_over_stdio(examples: Path) -> None:
    """The agent tests/conformance/ runs the official suite against; here only what needs no client
    capability (the suite itself covers the rest, over HTTP)."""
    async with open_agent(examples / "everything", timeout=60) as agent:
        tools = {t.name for t in await agent.list_tools()}
        text = await agent.call("test_simple_text", {})
        error = await agent.call("test_error_handling", {})
        progress = await agent.call("test_tool_with_progress", {})
    assert {"test_simple_text", "test_sampling", "test_elicitation", "json_schema_2020_12_tool"} <= tools
    assert text.text == "This is a simple text response for testing."
    assert error.is_error and "intentionally" in error.text
    assert not progress.is_error
