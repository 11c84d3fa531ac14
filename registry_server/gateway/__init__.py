"""Gateway: MCP calls from clients, forwarded over the mesh to the node that runs the agent."""
