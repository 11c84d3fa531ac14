"""The agent and plugin templates, rendered as `mcpz init` renders them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from mcpz.manifest import load_manifest
from mcpz.repo.templates import available_templates, render_template


def rendered_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def assert_filled(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text(encoding="utf-8"), path
        assert "{{" not in path.name, path


def test_both_templates_are_offered() -> None:
    assert {"python", "plugin"} <= set(available_templates())


def test_python_template_is_an_agent(tmp_path: Path) -> None:
    render_template("python", tmp_path, "acme/weather-now")
    assert rendered_files(tmp_path) == [
        ".gitignore",
        "README.md",
        "mcpz.toml",
        "server.py",
        "tests/conftest.py",
        "tests/test_server.py",
    ]
    assert_filled(tmp_path)
    manifest = load_manifest(tmp_path)
    assert (manifest.name, manifest.version, manifest.kind) == ("acme/weather-now", "0.1.0", "agent")
    assert manifest.run is not None and manifest.run.command == ("python", "server.py")
    assert manifest.description
    assert 'MCPServer("acme/weather-now", version="0.1.0")' in (tmp_path / "server.py").read_text()
    assert (tmp_path / "README.md").read_text().startswith("# acme/weather-now\n")


def test_python_template_passes_its_own_tests(tmp_path: Path) -> None:
    render_template("python", tmp_path, "acme/calc")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


def test_plugin_template_is_an_importable_plugin(tmp_path: Path) -> None:
    render_template("plugin", tmp_path, "acme/geo-tools")
    assert rendered_files(tmp_path) == [".gitignore", "README.md", "geo_tools/__init__.py", "mcpz.toml"]
    assert_filled(tmp_path)
    manifest = load_manifest(tmp_path)
    assert (manifest.name, manifest.kind, manifest.run) == ("acme/geo-tools", "plugin", None)

    # As an agent uses it: import the package, call its code, add its tools to a server.
    script = textwrap.dedent(
        """
        import json
        import anyio
        import geo_tools
        from mcp.server.mcpserver import MCPServer

        server = MCPServer("acme/user")
        geo_tools.register(server)
        tools = anyio.run(server.list_tools)
        print(json.dumps([geo_tools.__version__, geo_tools.greet("Ada"), [t.name for t in tools]]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["0.1.0", "Hello, Ada!", ["greet"]]
