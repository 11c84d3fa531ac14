"""Where the files shipped beside the code (templates/, configs/) live.

In a wheel they are copied into `mcpz/_bundled/`; in a source checkout or an editable install
they are the top-level folders of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def bundled_path(name: str) -> Path:
    inside = _PACKAGE / "_bundled" / name
    if inside.is_dir():
        return inside
    return _PACKAGE.parent / name
