"""Platform tiers as the operator configures them: `[tiers.NAME]` tables of configs/registry.toml,
parsed and checked for `RegistrySettings` (the core: billing's pure `tiers` module builds on it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mcpz.errors import UsageError

CALLS_PER_SECOND = "calls_per_second"
CALLS_PER_MONTH = "calls_per_month"
SESSIONS = "sessions"
LIMITS = (CALLS_PER_MONTH, CALLS_PER_SECOND, SESSIONS)


@dataclass(frozen=True)
class Tier:
    name: str
    calls_per_month: int = 0
    calls_per_second: int = 0
    sessions: int = 0

    def limit(self, name: str) -> int:
        value: int = getattr(self, name)
        return value

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, **{limit: self.limit(limit) for limit in LIMITS}}


def parse_tiers(tables: object, default: str) -> tuple[tuple[Tier, ...], str]:
    """The `[tiers.NAME]` tables of the settings and the default tier's name, checked: every
    limit a whole number of at least 0, the default one of the tiers; else a one-line UsageError."""
    hint = "fix [tiers] and default_tier in configs/registry.toml (or MCPZ_REGISTRY_DEFAULT_TIER)"
    if not isinstance(tables, Mapping) or not tables:
        raise UsageError("invalid registry setting: [tiers] must define at least one tier", hint=hint)
    tiers = []
    for name, table in tables.items():
        if not isinstance(table, Mapping):
            raise UsageError(f"invalid registry setting: tiers.{name} must be a table", hint=hint)
        unknown = sorted(set(table) - set(LIMITS))
        if unknown:
            raise UsageError(
                f"invalid registry setting: tiers.{name} has unknown keys {', '.join(unknown)}"
                f" (known: {', '.join(LIMITS)})",
                hint=hint,
            )
        limits = {}
        for limit in LIMITS:
            value = table.get(limit, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(
                    f"invalid registry setting: tiers.{name}.{limit} must be a whole number >= 0"
                    f" (0: unlimited), not {value!r}",
                    hint=hint,
                )
            limits[limit] = value
        tiers.append(Tier(name=str(name), **limits))
    names = [t.name for t in tiers]
    if default not in names:
        raise UsageError(
            f"invalid registry setting: default_tier {default!r} is not a tier (tiers: {', '.join(names)})",
            hint=hint,
        )
    return tuple(tiers), default
