"""The pages' static files, served under content-hashed names so browsers may keep them for a year.

`url("app.css")` is `/static/app.3f9c1a2b7d40.css`: a new file is a new name, so the long cache
never serves a stale one. The plain name is served too (for a hand-written link), with an ETag
and a short max-age. Files are read once, at first use; there are a handful and they are small.
"""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/static/"
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "public, max-age=300"
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


@dataclass(frozen=True)
class Asset:
    name: str  # as in static/
    hashed: str  # name with the content's digest before the suffix
    body: bytes
    content_type: str
    etag: str


@cache
def assets() -> dict[str, Asset]:
    """Every static file, by its plain and by its hashed name."""
    table: dict[str, Asset] = {}
    for path in sorted(STATIC.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()
        content_type = (
            _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        asset = Asset(
            path.name, f"{path.stem}.{digest[:12]}{path.suffix}", body, content_type, f'"{digest[:32]}"'
        )
        table[asset.name] = asset
        table[asset.hashed] = asset
    return table


def url(name: str) -> str:
    """The hashed URL of static/`name`; a KeyError for a file that is not there (a template's typo)."""
    return PREFIX + assets()[name].hashed


def lookup(filename: str) -> tuple[Asset, str] | None:
    """The asset a request names, with its Cache-Control; None when there is none."""
    asset = assets().get(filename)
    if asset is None:
        return None
    return asset, IMMUTABLE if filename == asset.hashed and filename != asset.name else REVALIDATE
