"""The machine figures a node reports in each heartbeat: CPU use, memory, load.

Read from `/proc` on Linux (no psutil): CPU use is the share of non-idle time between two
readings of `/proc/stat`, memory in use is `MemTotal - MemAvailable` from `/proc/meminfo`.
Elsewhere the figures degrade gracefully: the load average stands in for CPU use, memory comes
from `sysconf`, and a figure that cannot be read is 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Figures:
    cpu_percent: float
    memory_used: int
    memory_total: int
    load: float


class SystemSampler:
    """Successive readings of the machine's figures; CPU use is measured between two `sample()`s."""

    def __init__(self, proc: Path = PROC) -> None:
        self.proc = proc
        self._last_cpu = self._cpu_times()

    def sample(self) -> Figures:
        memory_used, memory_total = self._memory()
        return Figures(
            cpu_percent=self._cpu_percent(),
            memory_used=memory_used,
            memory_total=memory_total,
            load=self._load(),
        )

    def _cpu_times(self) -> tuple[int, int] | None:
        """(busy, total) jiffies since boot, from the first line of /proc/stat."""
        try:
            with (self.proc / "stat").open() as f:
                fields = f.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        total = sum(values)
        return total - idle, total

    def _cpu_percent(self) -> float:
        now = self._cpu_times()
        last, self._last_cpu = self._last_cpu, now
        if now is None or last is None:
            cpus = os.cpu_count() or 1
            return min(100.0, max(0.0, self._load() / cpus * 100.0))
        busy = now[0] - last[0]
        total = now[1] - last[1]
        if total <= 0:
            return 0.0
        return min(100.0, max(0.0, 100.0 * busy / total))

    def _memory(self) -> tuple[int, int]:
        try:
            info: dict[str, int] = {}
            with (self.proc / "meminfo").open() as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    parts = rest.split()
                    if parts:
                        info[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
            total = info["MemTotal"]
            available = info.get("MemAvailable", info.get("MemFree", 0))
            return max(0, total - available), total
        except (OSError, KeyError, ValueError):
            pass
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            total = 0
        return 0, max(0, total)

    @staticmethod
    def _load() -> float:
        try:
            return max(0.0, os.getloadavg()[0])
        except (OSError, AttributeError):
            return 0.0
