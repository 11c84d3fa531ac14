"""acme/everything: an MCP agent that answers every server scenario of the official conformance
suite (`@modelcontextprotocol/conformance`), under the names its server requirements give.

Written with the official `mcp` SDK's low-level `Server`, so that each answer has exactly the
shape the requirements describe (a tool's JSON Schema 2020-12 keywords are passed through as
written). `python server.py` speaks MCP over stdio, as mcpz runs an agent; `python server.py
--http PORT` serves the same agent over Streamable HTTP at `/mcp`, as a direct server to compare
the gateway against (tests/conformance/).
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import zlib
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.message import ServerMessageMetadata

Ctx = ServerRequestContext[Any, Any]


def _png_pixel() -> str:
    """A 1x1 red PNG, built here rather than pasted as an opaque string."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then R G B
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def _wav_silence() -> str:
    """A tenth of a second of 8 kHz, 8-bit mono silence."""
    samples = b"\x80" * 800
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 8000, 1, 8)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples))
    wav = b"RIFF" + struct.pack("<I", len(body) + len(samples)) + body + samples
    return base64.b64encode(wav).decode()


PNG = _png_pixel()
WAV = _wav_silence()
NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, description=description, input_schema=schema or NO_ARGS)


TOOLS = [
    _tool("test_simple_text", "Returns one text block."),
    _tool("test_image_content", "Returns a 1x1 PNG image."),
    _tool("test_audio_content", "Returns a short WAV clip."),
    _tool("test_embedded_resource", "Returns an embedded text resource."),
    _tool("test_multiple_content_types", "Returns text, an image and an embedded resource."),
    _tool("test_tool_with_logging", "Sends three log messages while it runs."),
    _tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100 while it runs."),
    _tool("test_error_handling", "Always fails, as a tool error."),
    _tool("test_reconnection", "Closes its SSE stream mid-call where the transport can resume it (SEP-1699)."),
    _tool(
        "test_sampling",
        "Asks the client's model to answer a prompt (sampling).",
        {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    ),
    _tool(
        "test_elicitation",
        "Asks the client's user for a username and an email address (elicitation).",
        {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    ),
    _tool("test_elicitation_sep1034_defaults", "Elicits a form whose every field has a default."),
    _tool("test_elicitation_sep1330_enums", "Elicits a form with every kind of enumeration."),
    _tool(
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features",
        {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                }
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
]

# The levels of logging/setLevel, least severe first (RFC 5424's, as MCP names them).
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]


class Everything:
    """The agent's state: the log level the client set and the resources it subscribed to."""

    def __init__(self) -> None:
        self.level = "debug"
        self.subscriptions: set[str] = set()

    # -- tools

    async def call_tool(self, ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        name = params.name
        if name == "test_simple_text":
            return _text("This is a simple text response for testing.")
        if name == "test_image_content":
            return types.CallToolResult(content=[types.ImageContent(data=PNG, mime_type="image/png")])
        if name == "test_audio_content":
            return types.CallToolResult(content=[types.AudioContent(data=WAV, mime_type="audio/wav")])
        if name == "test_embedded_resource":
            text = "This is an embedded resource content."
            return types.CallToolResult(content=[_embedded("test://embedded-resource", "text/plain", text)])
        if name == "test_multiple_content_types":
            data = json.dumps({"test": "data", "value": 123})
            return types.CallToolResult(
                content=[
                    types.TextContent(text="Multiple content types test:"),
                    types.ImageContent(data=PNG, mime_type="image/png"),
                    _embedded("test://mixed-content-resource", "application/json", data),
                ]
            )
        if name == "test_tool_with_logging":
            for i, line in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
                if i:
                    await anyio.sleep(0.05)
                await self.log(ctx, "info", line)
            return _text("Tool with logging executed successfully")
        if name == "test_tool_with_progress":
            for i, done in enumerate((0, 50, 100)):
                if i:
                    await anyio.sleep(0.05)
                await ctx.session.report_progress(done, 100)
            return _text("Tool with progress executed successfully")
        if name == "test_error_handling":
            return types.CallToolResult(
                content=[types.TextContent(text="This tool intentionally returns an error for testing")],
                is_error=True,
            )
        if name == "test_sampling":
            return await self.sample(ctx, str(args.get("prompt", "")))
        if name == "test_elicitation":
            schema = {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"},
                },
                "required": ["username", "email"],
            }
            answer = await self.elicit(ctx, str(args.get("message", "")), schema)
            return _text(f"User response: action={answer.get('action')}, content={answer.get('content')}")
        if name == "test_elicitation_sep1034_defaults":
            schema = {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "default": "John Doe"},
                    "age": {"type": "integer", "default": 30},
                    "score": {"type": "number", "default": 95.5},
                    "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                    "verified": {"type": "boolean", "default": True},
                },
            }
            answer = await self.elicit(ctx, "Please review your details", schema)
            return _text(f"Elicitation completed: action={answer.get('action')}, content={answer.get('content')}")
        if name == "test_elicitation_sep1330_enums":
            schema = {
                "type": "object",
                "properties": {
                    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                    "titledSingle": {
                        "type": "string",
                        "oneOf": [
                            {"const": "value1", "title": "First Option"},
                            {"const": "value2", "title": "Second Option"},
                            {"const": "value3", "title": "Third Option"},
                        ],
                    },
                    "legacyEnum": {
                        "type": "string",
                        "enum": ["opt1", "opt2", "opt3"],
                        "enumNames": ["Option One", "Option Two", "Option Three"],
                    },
                    "untitledMulti": {
                        "type": "array",
                        "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
                    },
                    "titledMulti": {
                        "type": "array",
                        "items": {
                            "anyOf": [
                                {"const": "value1", "title": "First Choice"},
                                {"const": "value2", "title": "Second Choice"},
                                {"const": "value3", "title": "Third Choice"},
                            ]
                        },
                    },
                },
            }
            answer = await self.elicit(ctx, "Please pick some options", schema)
            return _text(f"Elicitation completed: action={answer.get('action')}, content={answer.get('content')}")
        if name == "test_reconnection":
            if ctx.close_sse_stream is not None:  # only a transport with an event store resumes
                await ctx.close_sse_stream()
            await anyio.sleep(0.1)
            return _text("Reconnection test completed")
        if name == "json_schema_2020_12_tool":
            return _text(f"Received {json.dumps(args, sort_keys=True)}")
        return types.CallToolResult(content=[types.TextContent(text=f"no tool named {name}")], is_error=True)

    async def log(self, ctx: Ctx, level: str, message: str) -> None:
        if LEVELS.index(level) < LEVELS.index(self.level):
            return
        # Sent as related to the call, so that an HTTP transport puts it on the call's stream.
        await ctx.session.send_notification(
            types.LoggingMessageNotification(
                params=types.LoggingMessageNotificationParams(level=level, data=message)  # type: ignore[arg-type]
            ),
            related_request_id=ctx.request_id,
        )

    async def sample(self, ctx: Ctx, prompt: str) -> types.CallToolResult:
        if not ctx.session.check_client_capability(types.ClientCapabilities(sampling=types.SamplingCapability())):
            return types.CallToolResult(
                content=[types.TextContent(text="the client does not support sampling")], is_error=True
            )
        request = {
            "method": "sampling/createMessage",
            "params": {"messages": [{"role": "user", "content": {"type": "text", "text": prompt}}], "maxTokens": 100},
        }
        result = await self._request(ctx, request)
        content = result.get("content")
        text = content.get("text") if isinstance(content, dict) else json.dumps(content)
        return _text(f"LLM response: {text}")

    async def elicit(self, ctx: Ctx, message: str, schema: dict[str, Any]) -> dict[str, Any]:
        request = {"method": "elicitation/create", "params": {"message": message, "requestedSchema": schema}}
        return await self._request(ctx, request)

    async def _request(self, ctx: Ctx, request: dict[str, Any]) -> dict[str, Any]:
        """A raw server-to-client request, related to the call that makes it."""
        outbound = ctx.session._request_outbound  # the call's back-channel (its stream over HTTP)
        result = await outbound.send_raw_request(request["method"], request["params"])
        return dict(result)

    # -- resources

    async def list_resources(self, ctx: Ctx, params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri="test://static-text",
                    name="static-text",
                    description="A static text resource",
                    mime_type="text/plain",
                ),
                types.Resource(
                    uri="test://static-binary",
                    name="static-binary",
                    description="A static binary resource (a PNG)",
                    mime_type="image/png",
                ),
                types.Resource(
                    uri="test://watched-resource",
                    name="watched-resource",
                    description="A resource a client may subscribe to",
                    mime_type="text/plain",
                ),
            ]
        )

    async def list_templates(self, ctx: Ctx, params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template="test://template/{id}/data",
                    name="template-data",
                    description="Data for one id",
                    mime_type="application/json",
                )
            ]
        )

    async def read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        contents: types.TextResourceContents | types.BlobResourceContents
        if uri == "test://static-text":
            text = "This is the content of the static text resource."
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=text)
        elif uri == "test://static-binary":
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=PNG)
        elif uri == "test://watched-resource":
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text="Watched resource content.")
        elif uri.startswith("test://template/") and uri.endswith("/data"):
            ident = uri.removeprefix("test://template/").removesuffix("/data")
            text = json.dumps({"id": ident, "templateTest": True, "data": f"Data for ID: {ident}"})
            contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
        else:
            from mcp.shared.exceptions import MCPError

            raise MCPError(code=-32002, message=f"no resource {uri}")
        return types.ReadResourceResult(contents=[contents])

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        self.subscriptions.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        self.subscriptions.discard(str(params.uri))
        return types.EmptyResult()

    # -- prompts

    async def list_prompts(self, ctx: Ctx, params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(
            prompts=[
                types.Prompt(name="test_simple_prompt", description="A prompt without arguments"),
                types.Prompt(
                    name="test_prompt_with_arguments",
                    description="A prompt with two arguments",
                    arguments=[
                        types.PromptArgument(name="arg1", description="First test argument", required=True),
                        types.PromptArgument(name="arg2", description="Second test argument", required=True),
                    ],
                ),
                types.Prompt(
                    name="test_prompt_with_embedded_resource",
                    description="A prompt that embeds a resource",
                    arguments=[
                        types.PromptArgument(name="resourceUri", description="The resource to embed", required=True)
                    ],
                ),
                types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
            ]
        )

    async def get_prompt(self, ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        args = params.arguments or {}
        name = params.name
        messages: list[types.PromptMessage]
        if name == "test_simple_prompt":
            messages = [_user(types.TextContent(text="This is a simple prompt for testing."))]
        elif name == "test_prompt_with_arguments":
            text = f"Prompt with arguments: arg1='{args.get('arg1', '')}', arg2='{args.get('arg2', '')}'"
            messages = [_user(types.TextContent(text=text))]
        elif name == "test_prompt_with_embedded_resource":
            uri = args.get("resourceUri", "test://example-resource")
            messages = [
                _user(_embedded(uri, "text/plain", "Embedded resource content for testing.")),
                _user(types.TextContent(text="Please process the embedded resource above.")),
            ]
        elif name == "test_prompt_with_image":
            messages = [
                _user(types.ImageContent(data=PNG, mime_type="image/png")),
                _user(types.TextContent(text="Please analyze the image above.")),
            ]
        else:
            from mcp.shared.exceptions import MCPError

            raise MCPError(code=-32602, message=f"no prompt named {name}")
        return types.GetPromptResult(messages=messages)

    # -- completion and logging

    async def complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        known = {"arg1": ["paris", "park", "party"], "arg2": ["alpha", "beta"], "id": ["1", "2", "123"]}
        prefix = params.argument.value
        values = [v for v in known.get(params.argument.name, []) if v.startswith(prefix)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        self.level = str(params.level)
        return types.EmptyResult()


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)])


def _embedded(uri: str, mime_type: str, text: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(resource=types.TextResourceContents(uri=uri, mime_type=mime_type, text=text))


def _user(content: Any) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


def build() -> Server[Any]:
    state = Everything()
    import warnings

    with warnings.catch_warnings():  # logging/setLevel is deprecated in 2026-07-28, still in the suite
        warnings.simplefilter("ignore")
        return Server(
            "acme/everything",
            version="0.1.0",
            on_list_tools=lambda ctx, params: _listed(types.ListToolsResult(tools=TOOLS)),
            on_call_tool=state.call_tool,
            on_list_resources=state.list_resources,
            on_list_resource_templates=state.list_templates,
            on_read_resource=state.read_resource,
            on_subscribe_resource=state.subscribe,
            on_unsubscribe_resource=state.unsubscribe,
            on_list_prompts=state.list_prompts,
            on_get_prompt=state.get_prompt,
            on_completion=state.complete,
            on_set_logging_level=state.set_level,
        )


async def _listed(result: types.ListToolsResult) -> types.ListToolsResult:
    return result


async def serve_stdio() -> None:
    from mcp.server.stdio import stdio_server

    server = build()
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


def serve_http(port: int) -> None:
    import uvicorn

    app = build().streamable_http_app(streamable_http_path="/mcp", host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT")
    options = parser.parse_args()
    if options.http is not None:
        serve_http(options.http)
    else:
        anyio.run(serve_stdio)
