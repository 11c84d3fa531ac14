"""Talking to a registry: the typed client, publishing, deploying, the gateway, and `mcpz doctor`."""
