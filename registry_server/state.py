"""What every request handler shares: settings, the database, the repositories."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from mcpz.private import private_dir
from registry_server.db import Database
from registry_server.leases import Leadership
from registry_server.metrics import RegistryMetrics
from registry_server.settings import RegistrySettings
from registry_server.storage import RepoStore

log = logging.getLogger("registry_server")


@dataclass
class RegistryState:
    settings: RegistrySettings
    db: Database
    repos: RepoStore
    # Called with an agent's name after its releases changed (published, yanked), once committed:
    # domains that keep something derived from releases (the market's listings) register here in
    # app.py, so the releases domain never imports them. A listener must not raise.
    agent_listeners: list[Callable[[str], None]] = field(default_factory=list)
    # This registry's Prometheus metrics (registry_server/metrics.py); served when metrics_port is set.
    metrics: RegistryMetrics = field(default_factory=RegistryMetrics)
    # The leases this process holds (registry_server/leases.py): every one, for good, in the
    # single-process default; with `replica` on, those it won from the other replicas. Jobs that
    # must run once across replicas ask it before they act and fence their writes with it.
    leadership: Leadership = field(default_factory=Leadership.solo)

    @classmethod
    def open(cls, settings: RegistrySettings) -> RegistryState:
        from registry_server.db import migrate

        private_dir(settings.data_dir)
        settings.repos_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.database_url)
        migrate(db.engine)
        return cls(settings=settings, db=db, repos=RepoStore(settings.repos_dir))

    def on_published(self, name: str, versions: list[str]) -> None:
        for version in versions:
            log.info("published", extra={"agent": name, "version": version})
        self.agent_changed(name)

    def agent_changed(self, name: str) -> None:
        for listener in self.agent_listeners:
            listener(name)

    def close(self) -> None:
        self.db.dispose()
