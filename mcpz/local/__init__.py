"""Running an agent folder on this machine: its process, its MCP session over stdio, tool arguments."""
