"""Agent templates: copy `templates/<name>/` into a folder, filling in the agent's name.

Text files may hold `{{name}}` (`ns/name`), `{{namespace}}`, `{{short_name}}`, `{{module}}` (the
short name as a Python identifier) and `{{version}}`. A file called `_gitignore` becomes
`.gitignore` (a real `.gitignore` inside our own tree would steer our own repository).
Placeholders are filled in folder and file names too (`{{module}}/__init__.py`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mcpz.bundled import bundled_path
from mcpz.errors import UsageError
from mcpz.names import AgentName

INITIAL_VERSION = "0.1.0"
_RENAMES = {"_gitignore": ".gitignore"}
_SKIP = {"__pycache__", ".pytest_cache"}


def available_templates() -> list[str]:
    root = bundled_path("templates")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def render_template(template: str, dest: Path, name: str) -> list[Path]:
    """Write the template's files into `dest` (which must exist); return the paths written."""
    agent = AgentName.parse(name)
    source = bundled_path("templates") / template
    if not source.is_dir() or template.startswith((".", "_")) or "/" in template:
        raise UsageError(
            f'no template "{template}"', hint=f"choose one of: {', '.join(available_templates())}"
        )
    values = {
        "{{name}}": str(agent),
        "{{namespace}}": agent.namespace,
        "{{short_name}}": agent.name,
        "{{module}}": agent.name.replace("-", "_"),
        "{{version}}": INITIAL_VERSION,
    }
    written: list[Path] = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if any(part in _SKIP for part in rel.parts) or path.is_dir():
            continue
        target = dest.joinpath(*(_fill(_RENAMES.get(part, part), values) for part in rel.parts))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            shutil.copyfile(path, target)
        else:
            target.write_text(_fill(text, values), encoding="utf-8")
        shutil.copymode(path, target)
        written.append(target)
    return written


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace(key, value)
    return text
