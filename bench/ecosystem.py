"""Seeded synthetic ecosystems for the resolver benchmarks (and tests).

`generate(agents=N, versions=M, trap=p, roots=R, seed=S)` builds N agents with M versions each.
The shape:

1. A hidden solution: every agent gets one planted version, uniformly at random.
2. Each agent depends on 2-4 of the 10 agents after it (a DAG with depth, whose closure from the
   first agent is nearly the whole graph), the same set in every version; with `cycles=q`, a
   fraction q of agents also depend on one agent before them.
3. Every dependency specifier of a planted version admits the planted version of the dependency:
   a window of up to two versions either side of it (`>=a,<b`).
4. Every other version is, with probability `trap`, a trap: one of its dependency specifiers
   excludes the dependency's planted version (usually a range above it, which looks attractive to
   a newest-first resolver; otherwise a range below); its other specifiers are windows as in (3).
   Non-trap versions use windows too, so they are compatible with the planted solution.
5. Roots: the first R agents, any version.

So every graph is satisfiable (the planted versions are a solution), and `trap` controls how many
releases lead a resolver away from it. Same arguments, same graph: everything is drawn from one
`random.Random(seed)`.

`write_simple_index(ecosystem, folder)` writes the same graph as tiny wheels, a PEP 503 simple
index and PEP 658 `.metadata` files, for pip and uv (see `bench_resolve.py`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from mcpz.resolve.index import Index, parse_spec

NAMESPACE = "eco"


@dataclass(frozen=True)
class Ecosystem:
    label: str
    index: Index
    roots: dict[str, str]
    planted: dict[str, str]
    """The hidden solution: a version of every agent."""


def version_text(k: int) -> str:
    """The k-th version (0-based, ascending): 1.0.0, 1.1.0, ..., 1.4.0, 2.0.0, ..."""
    return f"{1 + k // 5}.{k % 5}.0"


def agent_name(i: int) -> str:
    return f"{NAMESPACE}/p{i:04d}"


def _window(rng: random.Random, planted: int, versions: int) -> str:
    low = max(0, planted - rng.randint(0, 2))
    high = min(versions - 1, planted + rng.randint(0, 2))
    parts = [f">={version_text(low)}"] if low > 0 else []
    if high + 1 < versions:
        parts.append(f"<{version_text(high + 1)}")
    return ",".join(parts)


def _trap(rng: random.Random, planted: int, versions: int) -> str:
    if planted < versions - 1 and (planted == 0 or rng.random() < 0.75):
        low = rng.randint(planted + 1, versions - 1)
        return f">={version_text(low)}"
    high = rng.randint(0, planted - 1)
    return f"<{version_text(high + 1)}"


def generate(
    agents: int,
    versions: int,
    trap: float,
    *,
    roots: int = 1,
    seed: int = 0,
    cycles: float = 0.0,
    fanout: tuple[int, int] = (2, 4),
    window: int = 10,
) -> Ecosystem:
    rng = random.Random(f"{agents}x{versions}:{trap}:{roots}:{seed}:{cycles}:{fanout}:{window}")
    planted = [rng.randrange(versions) for _ in range(agents)]
    deps: list[list[int]] = []
    for i in range(agents):
        later = list(range(i + 1, min(agents, i + 1 + window)))
        count = min(len(later), rng.randint(*fanout))
        chosen = sorted(rng.sample(later, count))
        if i > 0 and rng.random() < cycles:
            chosen.append(rng.randrange(i))
        deps.append(chosen)
    index = Index()
    for i in range(agents):
        for k in range(versions):
            specs = {j: _window(rng, planted[j], versions) for j in deps[i]}
            if k != planted[i] and deps[i] and rng.random() < trap:
                j = rng.choice(deps[i])
                specs[j] = _trap(rng, planted[j], versions)
            commit = hashlib.sha1(f"{i}:{k}".encode()).hexdigest()
            index.add(
                agent_name(i),
                version_text(k),
                commit,
                {agent_name(j): spec for j, spec in specs.items()},
            )
    label = f"{agents} x {versions}, trap {trap:g}" + (f", {roots} roots" if roots > 1 else "")
    return Ecosystem(
        label=label,
        index=index,
        roots={agent_name(i): "" for i in range(min(roots, agents))},
        planted={agent_name(i): version_text(planted[i]) for i in range(agents)},
    )


def violations(index: Index, roots: Mapping[str, str], chosen: Mapping[str, str]) -> list[str]:
    """Every constraint the answer `chosen` (name -> version) breaks; [] when it is a solution."""
    problems: list[str] = []
    frontier: list[tuple[str | None, str, str]] = [(None, name, spec) for name, spec in roots.items()]
    seen: set[str] = set()
    while frontier:
        parent, name, text = frontier.pop()
        version = chosen.get(name)
        if version is None:
            problems.append(f"{name} (needed by {parent or 'the roots'}) is missing")
            continue
        if not parse_spec(text).contains(_version(version)):
            problems.append(f"{name} {version} is outside {parent or 'the roots'}'s {text!r}")
        if name in seen:
            continue
        seen.add(name)
        release = index.get(name, version)
        if release is None:
            problems.append(f"{name} {version} is not in the index")
            continue
        frontier.extend((name, dep, spec.text) for dep, spec in release.dependencies.items())
    return problems


def _version(text: str) -> Version:
    return Version(text)


# -- the same graph as a PEP 503 simple index of tiny wheels -----------------------------------


def dist_name(agent: str) -> str:
    """The Python distribution name of an agent: eco/p0001 -> eco-p0001."""
    return agent.replace("/", "-")


def agent_of(dist: str) -> str:
    namespace, _, rest = dist.lower().replace("_", "-").partition("-")
    return f"{namespace}/{rest}"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


WHEEL = b"Wheel-Version: 1.0\nGenerator: mcpz-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def _wheel(dist: str, version: str, requires: Mapping[str, str]) -> tuple[str, bytes, bytes]:
    """(file name, wheel bytes, METADATA bytes) of a wheel with one empty module."""
    module = dist.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    lines = ["Metadata-Version: 2.1", f"Name: {dist}", f"Version: {version}"]
    lines += [f"Requires-Dist: {dist_name(dep)}{spec}" for dep, spec in sorted(requires.items())]
    metadata = ("\n".join(lines) + "\n").encode()
    files = {
        f"{module}/__init__.py": b"",
        f"{info}/METADATA": metadata,
        f"{info}/WHEEL": WHEEL,
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            entry = zipfile.ZipInfo(path, date_time=(2024, 1, 1, 0, 0, 0))
            archive.writestr(entry, data)
    return f"{module}-{version}-py3-none-any.whl", buffer.getvalue(), metadata


def write_simple_index(ecosystem: Ecosystem, folder: Path) -> None:
    """`folder/simple/index.html`, `folder/simple/<dist>/index.html`, wheels and `.metadata` files."""
    simple = folder / "simple"
    simple.mkdir(parents=True, exist_ok=True)
    names = ecosystem.index.names()
    links = "".join(f'<a href="{dist_name(n)}/">{dist_name(n)}</a>\n' for n in names)
    (simple / "index.html").write_text(f"<!DOCTYPE html>\n<html><body>\n{links}</body></html>\n")
    for name in names:
        page = simple / dist_name(name)
        page.mkdir(exist_ok=True)
        anchors = []
        for release in reversed(ecosystem.index.releases(name)):
            requires = {dep: str(spec.specifier) for dep, spec in release.dependencies.items()}
            filename, wheel, metadata = _wheel(dist_name(name), str(release.version), requires)
            (page / filename).write_bytes(wheel)
            (page / f"{filename}.metadata").write_bytes(metadata)
            digest = hashlib.sha256(wheel).hexdigest()
            meta_digest = hashlib.sha256(metadata).hexdigest()
            anchors.append(
                f'<a href="{filename}#sha256={digest}" data-dist-info-metadata="sha256={meta_digest}" '
                f'data-core-metadata="sha256={meta_digest}">{filename}</a>'
            )
        (page / "index.html").write_text(
            "<!DOCTYPE html>\n<html><body>\n" + "\n".join(anchors) + "\n</body></html>\n"
        )
