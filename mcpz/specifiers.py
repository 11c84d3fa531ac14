"""Dependency specifiers: PEP 440, plus npm/cargo's `^` and `~` accepted as sugar.

`^1.2` means "compatible with 1.2" as cargo reads it (`>=1.2,<2`; for 0.x the first non-zero
component is the one that may not change), `~1.2.3` means "patch updates only" (`>=1.2.3,<1.3`).
`*` (or an empty string) means any version.
"""

from __future__ import annotations

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from mcpz.errors import UsageError


def _release(text: str) -> tuple[int, ...]:
    version = Version(text)
    if version.pre or version.post or version.dev or version.local or version.epoch:
        raise InvalidVersion(text)
    return version.release


def _fmt(parts: tuple[int, ...] | list[int]) -> str:
    return ".".join(str(p) for p in parts)


def _caret(text: str) -> str:
    release = _release(text)
    upper: list[int] = []
    for i, part in enumerate(release):
        if part != 0 or i == len(release) - 1:
            upper = [*release[:i], part + 1]
            break
    return f">={text},<{_fmt(upper)}"


def _tilde(text: str) -> str:
    release = _release(text)
    upper: tuple[int, ...]
    if len(release) == 1:
        upper = (release[0] + 1,)
    else:
        upper = (release[0], release[1] + 1)
    return f">={text},<{_fmt(upper)}"


def translate(spec: str) -> str:
    """Translate sugar into a PEP 440 specifier string; PEP 440 input comes back unchanged."""
    clauses = [c.strip() for c in spec.split(",")]
    out: list[str] = []
    for clause in clauses:
        if clause in ("", "*"):
            continue
        if clause.startswith("^"):
            out.append(_caret(clause[1:].strip()))
        elif clause.startswith("~") and not clause.startswith("~="):
            out.append(_tilde(clause[1:].strip()))
        else:
            out.append(clause)
    return ",".join(out)


def specifier_problem(spec: str) -> str | None:
    """Why `spec` is not a valid specifier, or None."""
    try:
        SpecifierSet(translate(spec))
    except (InvalidSpecifier, InvalidVersion):
        return 'is not a PEP 440 specifier (e.g. ">=1.2,<2", "~=1.4", "^1.2", "==1.0.3")'
    return None


def parse_specifier(spec: str) -> SpecifierSet:
    """A SpecifierSet for `spec`, sugar included; raise UsageError when invalid."""
    try:
        return SpecifierSet(translate(spec))
    except (InvalidSpecifier, InvalidVersion):
        raise UsageError(
            f'"{spec}" is not a version specifier',
            hint='use PEP 440 (">=1.2,<2", "~=1.4") or "^1.2" / "~1.2.3"',
        ) from None


def admits(spec: SpecifierSet, version: Version) -> bool:
    """Whether `spec` admits `version`, pre-releases only when the specifier names one.

    packaging changed its default for pre-releases between releases, so the answer here is
    spelled out rather than left to `contains`' default.
    """
    names_prerelease = any(Version(s.version).is_prerelease for s in spec if _parses(s.version))
    return spec.contains(version, prereleases=names_prerelease or not version.is_prerelease)


def _parses(text: str) -> bool:
    try:
        Version(text.rstrip(".*"))
    except InvalidVersion:
        return False
    return True
