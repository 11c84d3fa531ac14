"""Bare agent repositories under the data folder, one per `namespace/name`."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from dulwich.errors import NotGitRepository
from dulwich.repo import Repo

from mcpz.names import name_problem

_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


class RepoStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Pushes of this process between opening a repository and finishing with it: an empty
        # repository is only removed when none is (registry_server.git.recovery.remove_if_empty).
        self._pushing: collections.Counter[str] = collections.Counter()
        self._pushing_guard = threading.Lock()

    def hold(self, name: str) -> None:
        with self._pushing_guard:
            self._pushing[name] += 1

    def release(self, name: str) -> None:
        with self._pushing_guard:
            self._pushing[name] -= 1
            if self._pushing[name] <= 0:
                del self._pushing[name]

    def held(self, name: str) -> bool:
        with self._pushing_guard:
            return self._pushing[name] > 0

    def path_of(self, name: str) -> Path:
        # Names are validated before they reach a path, so no part can be "..".
        if name_problem(name):
            raise ValueError(f"invalid agent name {name!r}")
        namespace, short = name.split("/")
        return self.root / namespace / f"{short}.git"

    def open(self, name: str) -> Repo | None:
        path = self.path_of(name)
        # Dulwich opens a bare path that does not exist without complaint, so look first.
        if not (path / "objects").is_dir():
            return None
        try:
            return Repo(str(path), bare=True)
        except (NotGitRepository, FileNotFoundError):
            return None

    def create(self, name: str) -> Repo:
        """The repository, made empty if it does not exist (under its writer lock)."""
        path = self.path_of(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock(name):
            existing = self.open(name)
            if existing is not None:
                return existing
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
            repo = Repo.init_bare(str(tmp), mkdir=True)
            repo.refs.set_symbolic_ref(b"HEAD", b"refs/heads/main")
            repo.close()
            try:
                os.replace(tmp, path)
            except OSError:
                # Another replica made it meanwhile (a shared filesystem whose flock does not
                # reach across machines): theirs is as empty as ours.
                shutil.rmtree(tmp, ignore_errors=True)
                made = self.open(name)
                if made is None:
                    raise
                return made
            return Repo(str(path), bare=True)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise writers of one repository, across threads and processes."""
        path = self.path_of(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = str(path)
        with _thread_locks_guard:
            thread_lock = _thread_locks.setdefault(key, threading.Lock())
        with thread_lock, open(path.parent / f".{path.name}.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
