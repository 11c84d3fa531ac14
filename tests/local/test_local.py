"""Local agents: `mcpz run | tools | call --local`, and the library under them.

The agent under test is the real python template, rendered into a temporary folder and
spoken to with the official MCP client over stdio. One agent start is shared by the library
tests; each CLI test starts its own, as the user's command does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from mcpz.errors import AgentError, ManifestError, UsageError
from mcpz.local.args import (
    build_arguments,
    coerce_value,
    parse_args_json,
    parse_key_values,
    schema_types,
    signature,
)
from mcpz.local.process import agent_process
from mcpz.local.session import AgentSession, list_tools, open_agent
from mcpz.repo.templates import render_template


def make_agent(folder: Path, command: list[str], files: dict[str, str] | None = None, **env: str) -> Path:
    """A minimal agent folder: a manifest whose [run] has `command` and `env`, plus `files`."""
    folder.mkdir(parents=True, exist_ok=True)
    run: dict[str, Any] = {"command": command, **({"env": env} if env else {})}
    manifest = {"agent": {"name": "test/agent", "version": "0.1.0"}, "run": run}
    (folder / "mcpz.toml").write_text(tomli_w.dumps(manifest))
    for name, text in (files or {}).items():
        (folder / name).write_text(textwrap.dedent(text))
    return folder


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.fixture(scope="module")
def calc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calc")
    render_template("python", folder, "acme/calc")
    return folder


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def session(calc: Path) -> AsyncIterator[AgentSession]:
    async with open_agent(calc, timeout=30) as agent:
        yield agent


# -- key=value arguments (pure) ---------------------------------------------------------------

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
NUMBER = {"type": "number"}
OPTIONAL_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}


@pytest.mark.parametrize(
    ("text", "prop", "expected"),
    [
        ("42", STRING, "42"),
        ("0150", STRING, "0150"),
        ('"quoted"', STRING, '"quoted"'),
        ("true", STRING, "true"),
        ("42", INTEGER, 42),
        ("42", NUMBER, 42),
        ("2.5", NUMBER, 2.5),
        ("x", INTEGER, "x"),
        ("true", {"type": "boolean"}, True),
        ('["a", "b"]', {"type": "array"}, ["a", "b"]),
        ('{"lat": 1}', {"type": "object"}, {"lat": 1}),
        ("null", OPTIONAL_STRING, None),
        ("7", OPTIONAL_STRING, "7"),
        ("7", {"type": ["integer", "string"]}, 7),
        ("Oslo", None, "Oslo"),
        ("42", None, 42),
        ("false", None, False),
        ("red", {"enum": ["red", "blue"]}, "red"),
        ("1", {"enum": ["1", "2"]}, "1"),
    ],
)
def test_values_are_json_when_they_parse_and_the_schema_agrees(text: str, prop: Any, expected: Any) -> None:
    value = coerce_value(text, prop)
    assert value == expected
    assert type(value) is type(expected)


def test_local_refs_are_followed() -> None:
    schema = {
        "properties": {"where": {"$ref": "#/$defs/Place"}, "zip": {"$ref": "#/$defs/Zip"}},
        "$defs": {"Place": {"type": "object"}, "Zip": {"type": "string"}},
    }
    assert schema_types(schema["properties"]["where"], schema) == {"object"}
    assert parse_key_values(["zip=0150", 'where={"lat": 1}'], schema) == {"zip": "0150", "where": {"lat": 1}}


def test_key_values_win_over_args_json() -> None:
    schema = {"properties": {"a": INTEGER, "b": INTEGER}, "additionalProperties": True}
    assert build_arguments({"a": 1, "b": 5}, ["b=2", "note=x=y"], schema) == {"a": 1, "b": 2, "note": "x=y"}


FORECAST = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": INTEGER, "units": {"enum": ["c", "f"]}},
    "required": ["city"],
}


@pytest.mark.parametrize(
    ("words", "message", "hint"),
    [
        (["days=2"], 'missing argument "city" (string)', "its arguments: city: string, days?: integer"),
        (["city=Oslo", "dayz=2"], 'unknown argument "dayz"', 'did you mean "days"?'),
        (["city=Oslo", "days=soon"], 'argument "days" must be integer, not string "soon"', "city: string"),
        (["city=Oslo", "units=k"], 'argument "units" must be one of "c", "f", not "k"', "units?: string"),
        (["city=Oslo", "--args-json-units"], 'argument "--args-json-units" is not key=value', "key=value"),
    ],
)
def test_arguments_are_checked_against_the_input_schema_before_sending(
    words: list[str], message: str, hint: str
) -> None:
    with pytest.raises(UsageError) as caught:
        build_arguments(None, words, FORECAST)
    assert caught.value.message.startswith(message) and caught.value.hint is not None
    assert hint in caught.value.hint


def test_arguments_the_schema_admits_pass_and_a_tool_without_arguments_takes_none() -> None:
    assert build_arguments(None, ["city=Oslo", "days=3"], FORECAST) == {"city": "Oslo", "days": 3}
    assert build_arguments({}, [], {"type": "object", "properties": {}}) == {}
    with pytest.raises(UsageError, match='unknown argument "x"') as caught:
        build_arguments({}, ["x=1"], {"type": "object", "properties": {}})
    assert caught.value.hint == "this tool takes no arguments"


@pytest.mark.parametrize("word", ["oops", "=1"])
def test_a_word_without_key_is_a_usage_error(word: str) -> None:
    with pytest.raises(UsageError, match="is not key=value"):
        parse_key_values([word])


@pytest.mark.parametrize(
    ("text", "problem"), [("[1]", "must be a JSON object, not array"), ("{", "not valid JSON")]
)
def test_args_json_must_be_an_object(text: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        parse_args_json(text)


def test_signature_summarises_an_input_schema() -> None:
    schema = {
        "properties": {"city": STRING, "days": INTEGER, "tag": OPTIONAL_STRING, "any": {}},
        "required": ["city"],
    }
    assert signature(schema) == "city: string, days?: integer, tag?: string, any?: any"
    assert signature({"type": "object"}) == ""


# -- the agent's process (resolution only, nothing runs) ---------------------------------------


def test_python_means_the_interpreter_that_runs_mcpz(tmp_path: Path) -> None:
    folder = make_agent(tmp_path / "a", ["python", "server.py", "--flag"], GREETING="hi")
    process = agent_process(folder, env={"PATH": "/nowhere", "GREETING": "overridden", "KEPT": "1"})
    assert process.argv == (sys.executable, "server.py", "--flag")
    assert process.cwd == folder.resolve()
    assert process.env == {"PATH": "/nowhere", "GREETING": "hi", "KEPT": "1"}


def test_a_relative_command_is_found_in_the_agent_folder(tmp_path: Path) -> None:
    folder = make_agent(tmp_path / "a", ["./serve"], {"serve": "#!/bin/sh\n"})
    (folder / "serve").chmod(0o755)
    assert agent_process(folder).argv == (str(folder.resolve() / "serve"),)


def test_a_missing_command_is_an_agent_error_with_a_hint(tmp_path: Path) -> None:
    folder = make_agent(tmp_path / "a", ["no-such-program-mcpz"])
    with pytest.raises(AgentError, match='command "no-such-program-mcpz" not found') as caught:
        agent_process(folder)
    assert caught.value.hint is not None and "[run].command" in caught.value.hint


def test_a_plugin_is_not_run(tmp_path: Path) -> None:
    (tmp_path / "mcpz.toml").write_text('[agent]\nname = "acme/geo"\nversion = "0.1.0"\nkind = "plugin"\n')
    with pytest.raises(UsageError, match="acme/geo is a plugin"):
        agent_process(tmp_path)


def test_a_folder_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"no mcpz\.toml"):
        agent_process(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        agent_process(tmp_path / "missing")


# -- the library, on one shared agent ----------------------------------------------------------


@pytest.mark.anyio
async def test_session_lists_the_template_tools(session: AgentSession) -> None:
    tools = {tool.name: tool for tool in await session.list_tools()}
    assert set(tools) == {"echo", "add", "divide"}
    assert tools["add"].description == "Add two integers."
    assert tools["add"].input_schema["properties"]["a"]["type"] == "integer"
    assert tools["add"].input_schema["required"] == ["a", "b"]
    assert json.loads(json.dumps(tools["add"].to_dict()))["name"] == "add"
    assert session.name == "acme/calc"


@pytest.mark.anyio
async def test_session_calls_a_tool(session: AgentSession) -> None:
    result = await session.call("add", {"a": 2, "b": 3})
    assert not result.is_error
    assert result.text == "5"
    assert result.structured_content == {"result": 5}
    assert result.to_dict()["content"] == [{"type": "text", "text": "5"}]


@pytest.mark.anyio
async def test_a_tool_error_is_a_result_in_a_session(session: AgentSession) -> None:
    result = await session.call("divide", {"a": 1, "b": 0})
    assert result.is_error
    assert "cannot divide by zero" in result.text


@pytest.mark.anyio
async def test_an_unknown_tool_names_the_closest(session: AgentSession) -> None:
    with pytest.raises(UsageError, match='has no tool "ad"; did you mean "add"') as caught:
        await session.tool("ad")
    assert caught.value.hint is not None and "mcpz tools --local" in caught.value.hint


@pytest.mark.anyio
async def test_an_agent_that_stalls_or_dies_mid_call(tmp_path: Path) -> None:
    folder = make_agent(
        tmp_path / "fragile",
        ["python", "server.py"],
        {
            "server.py": """
                import os
                import sys

                import anyio
                from mcp.server.mcpserver import MCPServer

                mcp = MCPServer("fragile")

                @mcp.tool()
                async def stall() -> str:
                    await anyio.Event().wait()
                    return "never"

                @mcp.tool()
                def die() -> str:
                    print("giving up now", file=sys.stderr, flush=True)
                    os._exit(3)

                mcp.run()
            """
        },
    )
    # An error raised in the block leaves it as itself, not wrapped in the client's task groups.
    with pytest.raises(UsageError, match='has no tool "dei"; did you mean "die"'):
        async with open_agent(folder, timeout=30) as agent:
            assert {tool.name for tool in await agent.list_tools()} == {"stall", "die"}
            with pytest.raises(AgentError, match=r'did not answer tools/call "stall" within 0\.3s'):
                await agent.call("stall", timeout=0.3)
            with pytest.raises(AgentError, match='exited during tools/call "die": giving up now'):
                await agent.call("die")
            assert "giving up now" in agent.stderr()
            await agent.tool("dei")


@pytest.mark.anyio
async def test_an_agent_that_crashes_at_start(tmp_path: Path) -> None:
    folder = make_agent(
        tmp_path / "crash", ["python", "crash.py"], {"crash.py": "raise SystemExit('boom at start')"}
    )
    with pytest.raises(AgentError, match="test/agent exited before it answered: boom at start"):
        await list_tools(folder, timeout=30)


# -- the command line, on the template agent ---------------------------------------------------


def test_tools_prints_a_table(cli: Any, calc: Path) -> None:
    result = cli("tools", "--local", str(calc))
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["tool", "arguments", "description"]
    assert any(line.split()[:4] == ["add", "a:", "integer,", "b:"] for line in lines)
    assert any(line.startswith(" echo") and "text: string" in line for line in lines)


def test_tools_json(cli: Any, calc: Path) -> None:
    result = cli("tools", "--local", str(calc), "--json")
    assert result.exit_code == 0, result.stderr
    tools = {tool["name"]: tool for tool in json.loads(result.stdout)["tools"]}
    assert set(tools) == {"echo", "add", "divide"}
    assert tools["echo"]["input_schema"]["properties"]["text"]["type"] == "string"
    assert tools["divide"]["description"].startswith("Divide a by b.")


def test_call_prints_the_text_from_the_agent_folder(cli: Any, calc: Path) -> None:
    result = cli("call", "--local", "add", "a=2", "b=3", cwd=calc)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "5\n"


def test_call_json_with_args_json_and_schema_guided_values(cli: Any, calc: Path) -> None:
    # text=42 wins over --args-json, and stays a string because the schema says "string".
    result = cli("call", "--local", str(calc), "echo", "--args-json", '{"text": "x"}', "text=42", "--json")
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload == {
        "tool": "echo",
        "is_error": False,
        "text": "42",
        "content": [{"type": "text", "text": "42"}],
        "structured_content": {"result": "42"},
    }


def test_a_tool_error_exits_7_on_one_line(cli: Any, calc: Path) -> None:
    result = cli("call", "--local", str(calc), "divide", "a=1", "b=0")
    assert result.exit_code == 7
    assert result.stdout == ""
    assert one_line(result.stderr) == (
        'error: acme/calc: tool "divide" failed: cannot divide by zero (rerun with -v for details)'
    )


# -- the command line, when things go wrong ----------------------------------------------------


def test_an_agent_crashing_at_start_exits_7_without_traceback(cli: Any, tmp_path: Path) -> None:
    folder = make_agent(
        tmp_path / "crash",
        ["python", "crash.py"],
        {
            "crash.py": """
                import sys
                print("starting up", file=sys.stderr)
                raise RuntimeError("boom at start")
            """
        },
    )
    result = cli("tools", "--local", str(folder))
    assert result.exit_code == 7
    line = one_line(result.stderr)
    assert line.startswith("error: test/agent exited before it answered: RuntimeError: boom at start (")
    assert "starting up" not in result.stderr

    verbose = cli("tools", "--local", str(folder), "-v")
    assert verbose.exit_code == 7
    assert "starting up" in verbose.stderr  # -v shows the agent's own stderr


def test_a_missing_command_is_one_line(cli: Any, tmp_path: Path) -> None:
    folder = make_agent(tmp_path / "a", ["no-such-program-mcpz", "serve"])
    result = cli("call", "--local", str(folder), "anything")
    assert result.exit_code == 7
    assert one_line(result.stderr).startswith(
        'error: cannot start test/agent: command "no-such-program-mcpz" not found'
    )


def test_an_agent_that_never_answers_times_out(cli: Any, tmp_path: Path) -> None:
    # It prints a stray line, then reads its stdin and never answers; it exits when stdin
    # closes, as a stdio server should.
    script = "import sys; print('hello', flush=True); sys.stdin.read()"
    folder = make_agent(tmp_path / "silent", ["python", "-c", script])
    result = cli("call", "--local", str(folder), "anything", "--timeout", "1")
    assert result.exit_code == 7
    assert one_line(result.stderr) == (
        "error: test/agent did not answer within 1s of starting; it printed 'hello' on stdout"
        " (an MCP server on stdio must write only MCP messages on stdout: log to stderr)"
    )


def test_bad_words_are_usage_errors_before_the_agent_starts(cli: Any, tmp_path: Path) -> None:
    folder = make_agent(tmp_path / "a", ["no-such-program-mcpz"])  # starting it would exit 7
    for args, problem in [
        (("call", "--local", str(folder), "add", "oops"), 'argument "oops" is not key=value'),
        (("call", "--local", str(folder), "add", "--args-json", "[]"), "must be a JSON object"),
        (("call", "--local"), "missing the TOOL"),
        (("call", "--local", "a=1"), "missing the TOOL"),
        (("call", "--local", str(folder)), "missing the TOOL"),
    ]:
        result = cli(*args)
        assert result.exit_code == 2, args
        assert problem in one_line(result.stderr)


def test_without_local_the_target_is_a_deployed_agent_reached_through_the_gateway(cli: Any) -> None:
    nowhere = ("--registry", "http://127.0.0.1:9")
    unreachable = cli("tools", "acme/weather", *nowhere, "--token", "mcpz_x")
    assert unreachable.exit_code == 6
    assert "cannot reach the gateway at http://127.0.0.1:9/mcp/acme/weather" in one_line(unreachable.stderr)

    no_token = cli("call", "acme/weather", "forecast", "city=Oslo", *nowhere)
    assert no_token.exit_code == 4
    assert "no token for http://127.0.0.1:9" in one_line(no_token.stderr)

    not_a_name = cli("tools", "weather", *nowhere, "--token", "mcpz_x")
    assert not_a_name.exit_code == 2


def test_a_plugin_is_not_an_agent_to_run(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "mcpz.toml").write_text('[agent]\nname = "acme/geo"\nversion = "0.1.0"\nkind = "plugin"\n')
    for command in ("run", "tools"):
        result = cli(command, *(["--local"] if command == "tools" else []), str(tmp_path))
        assert result.exit_code == 2
        assert "acme/geo is a plugin" in one_line(result.stderr)


# -- mcpz run ----------------------------------------------------------------------------------


def mcpz(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcpz", *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def test_run_passes_env_cwd_args_and_exit_code(tmp_path: Path) -> None:
    script = "import os, sys; print(os.environ['GREETING'], os.getcwd(), sys.argv[1:]); sys.exit(3)"
    folder = make_agent(tmp_path / "a", ["python", "-c", script], GREETING="hello")
    done = mcpz("run", str(folder), "--", "--port", "7")
    assert done.returncode == 3, done.stderr
    assert done.stdout == f"hello {folder.resolve()} ['--port', '7']\n"


def test_run_a_missing_command_is_one_line(cli: Any, tmp_path: Path) -> None:
    folder = make_agent(tmp_path / "a", ["no-such-program-mcpz"])
    result = cli("run", str(folder))
    assert result.exit_code == 7
    assert 'command "no-such-program-mcpz" not found' in one_line(result.stderr)


@pytest.mark.anyio
async def test_run_serves_mcp_on_stdio_to_any_client(calc: Path) -> None:
    import anyio
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    server = StdioServerParameters(command=sys.executable, args=["-m", "mcpz", "run", str(calc)])
    # The SDK's default `errlog` is whatever sys.stderr was when it was first imported, which may be
    # a test runner's buffer without a file descriptor: name the process's own stderr.
    errlog = sys.__stderr__
    assert errlog is not None
    with anyio.fail_after(60):
        async with Client(stdio_client(server, errlog=errlog)) as client:
            tools = await client.list_tools()
            result = await client.call_tool("add", {"a": 40, "b": 2})
    assert {tool.name for tool in tools.tools} == {"echo", "add", "divide"}
    assert result.structured_content == {"result": 42}
