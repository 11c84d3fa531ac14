"""Talking to a registry: its typed JSON API, the index, git, publishing, deployments, the gateway."""
