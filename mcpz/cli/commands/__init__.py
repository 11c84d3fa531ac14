"""One module per command group; each defines `app`, a typer app holding its commands.

A module never imports another command module or `mcpz.cli.app`: `cli/app.py`'s `COMMANDS` table names
them, and shared pieces live beside it (`common`, `output`, `prompts`).
"""
