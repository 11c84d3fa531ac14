"""Dependency resolution: an index and requirements in, a resolution or an explanation out. No I/O.

    from mcpz.resolve import Index, resolve

    index = Index()
    index.add("acme/geo", "1.2.0", "3f2a...", {"acme/units": ">=1,<2"})
    ...
    resolution = resolve({"acme/geo": "^1.2"}, index, locked=previous.versions())

The registry client fills the `Index` (or anything with `releases(name)`: `PackageIndex`); the
lockfile (`mcpz.lockfile`) is built from the `Resolution`.
"""

from mcpz.resolve.core import (
    DEFAULT_MAX_ROUNDS,
    Backend,
    Outcome,
    PropagatingBackend,
    Request,
    ResolutionTooDeep,
    ResolvelibBackend,
    resolve,
)
from mcpz.resolve.explain import ConflictError, Explanation
from mcpz.resolve.index import Index, IndexDataError, PackageIndex, Release, Spec, parse_spec
from mcpz.resolve.result import Requirer, Resolution, ResolvedPackage, TreeLine

__all__ = [
    "DEFAULT_MAX_ROUNDS",
    "Backend",
    "ConflictError",
    "Explanation",
    "Index",
    "IndexDataError",
    "Outcome",
    "PackageIndex",
    "PropagatingBackend",
    "Release",
    "Request",
    "Requirer",
    "Resolution",
    "ResolutionTooDeep",
    "ResolvedPackage",
    "ResolvelibBackend",
    "Spec",
    "TreeLine",
    "parse_spec",
    "resolve",
]
