"""Talking to a registry: its JSON API, the version index, git push/clone/pull, deployments, the gateway,
and `mcpz doctor`."""
