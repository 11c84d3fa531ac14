"""What every request handler shares: settings, the database, the repositories."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mcpz.private import private_dir
from registry_server.db import Database
from registry_server.settings import RegistrySettings
from registry_server.storage import RepoStore

log = logging.getLogger("registry_server")


@dataclass
class RegistryState:
    settings: RegistrySettings
    db: Database
    repos: RepoStore

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

    def close(self) -> None:
        self.db.dispose()
