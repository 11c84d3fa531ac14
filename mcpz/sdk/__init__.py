"""The Python SDK: `mcpz.Client`, the front door over the client, deps, local and keys layers."""
