"""Commands: see module docstring once filled."""

from __future__ import annotations

from mcpz.cli.app import app  # noqa: F401
