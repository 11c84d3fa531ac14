"""acme/notes: an MCP agent that keeps short notes with tags in a JSON file.

Each call may run in a fresh process, so state lives in a file: NOTES_FILE, set in mcpz.toml's
[run] env and read relative to the agent's folder (the working folder of `mcpz run`).
"""

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel

mcp = MCPServer("acme/notes", version="0.1.0")


class Note(BaseModel):
    id: int
    text: str
    tags: list[str] = []
    created: str


def _file() -> Path:
    return Path(os.environ.get("NOTES_FILE", "notes.json"))


def _load() -> list[Note]:
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    return [Note.model_validate(item) for item in data]


def _save(notes: list[Note]) -> None:
    path = _file()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([n.model_dump() for n in notes], indent=2), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a file


@mcp.tool()
def add_note(text: str, tags: list[str] | None = None) -> Note:
    """Save a note, optionally with tags; returns it with its id."""
    if not text.strip():
        raise ToolError("a note needs some text")
    notes = _load()
    note = Note(
        id=max((n.id for n in notes), default=0) + 1,
        text=text.strip(),
        tags=sorted({t.strip().lower() for t in tags or [] if t.strip()}),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    _save([*notes, note])
    return note


@mcp.tool()
def list_notes(tag: str | None = None) -> list[Note]:
    """All notes, oldest first, or only those with a tag."""
    return [n for n in _load() if tag is None or tag.lower() in n.tags]


@mcp.tool()
def search_notes(query: str) -> list[Note]:
    """Notes whose text contains every word of the query (any case)."""
    words = query.lower().split()
    return [n for n in _load() if all(w in n.text.lower() for w in words)]


@mcp.tool()
def delete_note(id: int) -> str:
    """Delete a note by id."""
    notes = _load()
    kept = [n for n in notes if n.id != id]
    if len(kept) == len(notes):
        raise ToolError(f"no note with id {id}")
    _save(kept)
    return f"deleted note {id}"


if __name__ == "__main__":
    mcp.run()
