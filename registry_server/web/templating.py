"""The pages' Jinja2 environment: templates from this package, autoescaped, with the filters
of `views` and the hashed URLs of `assets`. Built once; rendering is thread-safe."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from registry_server.web import assets, views

TEMPLATES = Path(__file__).resolve().parent / "templates"


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.globals["static"] = assets.url
    env.filters["count"] = views.count
    env.filters["ms"] = views.milliseconds
    env.filters["percent"] = views.percent
    env.filters["ago"] = views.ago
    env.filters["stars"] = views.stars
    env.filters["schema"] = views.schema_text
    return env
