"""Mesh: the WebSocket hubs that nodes and connectors hold open to the registry."""
