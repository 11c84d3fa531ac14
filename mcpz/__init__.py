"""mcpz: version, resolve, publish, deploy and sell AI agents (MCP servers).

The names in `__all__` are the public Python API; they are imported on first use so that
`import mcpz` (and `mcpz --version`) stay fast. `mcpz.Client` is the front door (docs/python-sdk.md);
`mcpz.push` is `mcpz.client.publish.push`, which signs the release it publishes as `mcpz push`
does.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from mcpz._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "McpzError": "mcpz.errors",
    "UsageError": "mcpz.errors",
    "ManifestError": "mcpz.errors",
    "Manifest": "mcpz.manifest",
    "RunSpec": "mcpz.manifest",
    "parse_manifest": "mcpz.manifest",
    "load_manifest": "mcpz.manifest",
    "AgentName": "mcpz.names",
    "Settings": "mcpz.config",
    "AgentRepo": "mcpz.repo.repository",
    "init_agent": "mcpz.repo.repository",
    "render_template": "mcpz.repo.templates",
    "list_tools": "mcpz.local.session",
    "call_tool": "mcpz.local.session",
    "open_agent": "mcpz.local.session",
    "AgentSession": "mcpz.local.session",
    "ToolInfo": "mcpz.tools",
    "ToolResult": "mcpz.tools",
    "run_agent": "mcpz.local.process",
    "RegistryClient": "mcpz.client.registry",
    "Client": "mcpz.sdk.client",
    "push": "mcpz.client.publish:push",
    "clone": "mcpz.client.publish",
    "pull": "mcpz.client.publish",
    "SiweMessage": "mcpz.keys.siwe",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'mcpz' has no attribute {name!r}")
    module, _, attribute = where.partition(":")  # "module:attribute" where the name differs
    return getattr(importlib.import_module(module), attribute or name)
