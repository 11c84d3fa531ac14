"""Write docs/python-api.md from the code's docstrings and signatures, and keep the list of public
names that the semantic-versioning promise covers (docs/python-api-names.txt).

Run: python docs/gen_api_reference.py             (tests/sdk/test_python_api.py fails when stale)
     python docs/gen_api_reference.py --add-new   (append new public names to the list; it never
                                                   removes one: see docs/python-sdk.md, "Stability")
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mcpz

DOCS = Path(__file__).resolve().parent
REFERENCE = DOCS / "python-api.md"
NAMES = DOCS / "python-api-names.txt"

HEADER = """# Python API reference

Generated from the docstrings by `python docs/gen_api_reference.py`; do not edit by hand.
The names here are the public API (`mcpz.__all__` and their public members); the promise that
covers them is in [python-sdk.md](python-sdk.md#stability). `mcpz.Client` is the front door.
"""


def _public_members(cls: type) -> Iterator[tuple[str, Any]]:
    """The public attributes a class defines or inherits from mcpz's own code."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for name in sorted(set(dir(cls)) | fields):
        if name.startswith("_"):
            continue
        owner = next((base for base in cls.__mro__ if name in vars(base)), None)
        if owner is not None and not owner.__module__.startswith("mcpz"):
            continue
        if owner is None and name not in fields:
            continue
        yield name, inspect.getattr_static(cls, name, None)


def _function(value: Any) -> Callable[..., Any] | None:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    return value if inspect.isfunction(value) else None


def _parameters(fn: Callable[..., Any]) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]


def public_names() -> list[str]:
    """Every public name: `mcpz.X`, `mcpz.X.member`, and `mcpz.X(param)` / `mcpz.X.member(param)`
    for each parameter of a function or method (renaming or dropping a keyword breaks callers too)."""
    out: list[str] = []
    for name in mcpz.__all__:
        out.append(f"mcpz.{name}")
        value = getattr(mcpz, name)
        if inspect.isclass(value):
            for member, attribute in _public_members(value):
                out.append(f"mcpz.{name}.{member}")
                fn = _function(attribute)
                if fn is not None:
                    out += [f"mcpz.{name}.{member}({p})" for p in _parameters(fn)]
        elif inspect.isfunction(value):
            out += [f"mcpz.{name}({p})" for p in _parameters(value)]
    return sorted(out)


def _doc(value: Any) -> str:
    text = inspect.getdoc(value) or ""
    return text.strip() + "\n" if text.strip() else ""


def _signature(name: str, fn: Callable[..., Any]) -> str:
    try:
        return f"{name}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return name


def render() -> str:
    out = [HEADER]
    for name in mcpz.__all__:
        if name == "__version__":
            out.append("\n## `mcpz.__version__`\n\nThe installed version (a PEP 440 string).\n")
            continue
        value = getattr(mcpz, name)
        where = getattr(value, "__module__", "mcpz")
        out.append(f"\n## `mcpz.{name}`\n")
        if inspect.isclass(value):
            out.append(f"```python\nclass {_signature(name, value)}\n```\n")
        elif callable(value):
            out.append(f"```python\ndef {_signature(name, value)}\n```\n")
        out.append(f"Defined in `{where}`.\n")
        doc = _doc(value)
        if doc:
            out.append("\n" + doc)
        if inspect.isclass(value):
            for member, attribute in _public_members(value):
                fn = _function(attribute)
                if fn is not None:
                    out.append(f"\n### `{name}.{member}`\n\n```python\n{_signature(member, fn)}\n```\n")
                    doc = _doc(fn)
                elif isinstance(attribute, property):
                    out.append(f"\n### `{name}.{member}` (property)\n")
                    doc = _doc(attribute)
                else:
                    continue
                if doc:
                    out.append("\n" + doc)
    return "".join(out)


def listed_names(text: str) -> dict[str, str]:
    """The names list: `name` or `name  deprecated X.Y.Z <what to use instead>`, # comments."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, note = line.partition(" ")
            out[name] = note.strip()
    return out


def main(argv: list[str]) -> int:
    REFERENCE.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {REFERENCE}\n")
    if "--add-new" in argv:
        text = NAMES.read_text(encoding="utf-8")
        new = [name for name in public_names() if name not in listed_names(text)]
        if new:
            NAMES.write_text(text.rstrip("\n") + "\n" + "\n".join(new) + "\n", encoding="utf-8")
        sys.stdout.write(f"added {len(new)} name(s) to {NAMES}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
