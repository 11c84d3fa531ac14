"""Helpers the registry tests share: the real `git` program, agent folders, and what a registry holds.

Nothing here fakes the registry: repositories are read from its data folder with dulwich, the
index through its HTTP API, exactly what a client or an operator would see.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

GIT = shutil.which("git") or "/usr/bin/git"
ZERO = "0" * 40


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for `git`: never prompt, English messages, no credential helper."""
    env = dict(os.environ)
    env.update(
        {
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LC_ALL": "C",
            "LANGUAGE": "C",
        }
    )
    env.pop("GIT_DIR", None)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def isolated_git(home: Path) -> Iterator[None]:
    """For module-scoped fixtures, which run before the per-test isolation: git with its own config."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / ".gitconfig"
    config.write_text(
        "[user]\n\tname = Test User\n\temail = test@example.com\n[init]\n\tdefaultBranch = main\n"
    )
    with pytest_monkeypatch() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_GLOBAL", str(config))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        yield


def pytest_monkeypatch() -> contextlib.AbstractContextManager[Any]:
    import pytest

    return pytest.MonkeyPatch.context()


def git(
    *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real git; with check=True a failure raises with git's own output attached."""
    done = subprocess.run(
        [GIT, "-c", "credential.helper=", *args],
        cwd=cwd,
        env=git_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def git_popen(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [GIT, "-c", "credential.helper=", *args],
        cwd=cwd,
        env=git_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def manifest(
    name: str = "acme/x",
    version: str = "0.1.0",
    *,
    deps: Mapping[str, str] | None = None,
    description: str = "",
) -> str:
    text = f'[agent]\nname = "{name}"\nversion = "{version}"\n'
    if description:
        text += f'description = "{description}"\n'
    text += '\n[run]\ncommand = ["python", "server.py"]\n'
    if deps:
        text += "\n[dependencies]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in deps.items())
    return text


def write_files(path: Path, files: Mapping[str, str | bytes]) -> None:
    for rel, content in files.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


def commit(path: Path, files: Mapping[str, str | bytes] | None = None, message: str = "change") -> str:
    """Write `files`, commit everything, return the new commit id."""
    write_files(path, files or {})
    git("add", "-A", cwd=path)
    git("commit", "-q", "--allow-empty", "-m", message, cwd=path)
    return rev_parse(path, "HEAD")


def init_agent(
    path: Path,
    name: str = "acme/x",
    version: str = "0.1.0",
    files: Mapping[str, str | bytes] | None = None,
    **manifest_kw: Any,
) -> str:
    """A fresh repository holding a valid agent; returns its first commit id."""
    path.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", cwd=path)
    base: dict[str, str | bytes] = {
        "mcpz.toml": manifest(name, version, **manifest_kw),
        "server.py": f"print('hello from {name}')\n",
    }
    base.update(files or {})
    return commit(path, base, "first")


def set_version(path: Path, version: str, name: str = "acme/x", **manifest_kw: Any) -> str:
    return commit(path, {"mcpz.toml": manifest(name, version, **manifest_kw)}, f"version {version}")


def rev_parse(path: Path, rev: str) -> str:
    return git("rev-parse", rev, cwd=path).stdout.strip()


def ls_remote(url: str) -> dict[str, str]:
    """ref -> id as the registry advertises them ({} for an empty or missing repository)."""
    done = git("ls-remote", url, check=False)
    if done.returncode != 0:
        return {}
    refs = {}
    for line in done.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        refs[ref] = sha
    return refs


def objects_of(path: Path, *revs: str, exclude: Iterable[str] = ()) -> set[str]:
    """Every object id `git rev-list --objects REVS --not EXCLUDE` lists in a local repository."""
    args = ["rev-list", "--objects", *revs]
    excluded = list(exclude)
    if excluded:
        args += ["--not", *excluded]
    out = git(*args, cwd=path).stdout
    return {line.split(" ", 1)[0] for line in out.splitlines() if line}


# --- what the registry holds ----------------------------------------------------------------------


def bare_path(registry: Any, name: str) -> Path:
    namespace, short = name.split("/")
    return Path(registry.data_dir) / "repos" / namespace / f"{short}.git"


def open_bare(registry: Any, name: str) -> Any:
    from dulwich.repo import Repo

    path = bare_path(registry, name)
    if not (path / "objects").is_dir():
        return None
    return Repo(str(path), bare=True)


def readable(registry: Any, name: str, oids: Iterable[str]) -> list[str]:
    """The ids among `oids` that the registry's repository can serve (a fresh open, no cache)."""
    repo = open_bare(registry, name)
    if repo is None:
        return []
    try:
        return sorted(oid for oid in oids if oid.encode() in repo.object_store)
    finally:
        repo.close()


def server_object_ids(registry: Any, name: str) -> set[str]:
    repo = open_bare(registry, name)
    if repo is None:
        return set()
    try:
        return {oid.decode() for oid in repo.object_store}
    finally:
        repo.close()


def quarantines(registry: Any, name: str) -> list[Path]:
    objects = bare_path(registry, name) / "objects"
    return sorted(objects.glob("incoming-*")) if objects.is_dir() else []


def api(registry: Any, path: str, token: str | None = None, **kw: Any) -> httpx2.Response:
    headers = dict(kw.pop("headers", {}) or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    method = kw.pop("method", "GET")
    return httpx2.request(method, registry.url + path, headers=headers, timeout=30, **kw)


def release_rows(registry: Any, name: str) -> list[tuple[str, str]]:
    """(version, commit) rows of the release index, read from the database itself."""
    from sqlalchemy import select

    from registry_server.db import Database
    from registry_server.releases.models import Agent, Release

    db = Database(registry.database_url)
    try:
        with db.session() as session:
            rows = session.execute(
                select(Release.version, Release.commit)
                .join(Agent, Agent.id == Release.agent_id)
                .where(Agent.name == name)
                .order_by(Release.id)
            ).all()
            return [(v, c) for v, c in rows]
    finally:
        db.dispose()


@dataclass(frozen=True)
class Trace:
    """Everything a push could change: refs, the agent's index entry as served, the stored rows."""

    refs: dict[str, str]
    status: int
    index: Any
    rows: list[tuple[str, str]]


def trace(registry: Any, name: str) -> Trace:
    response = api(registry, f"/v1/agents/{name}")
    assert response.status_code in (200, 404), response.text
    body = response.json() if response.status_code == 200 else None
    return Trace(ls_remote(registry.git_url(name)), response.status_code, body, release_rows(registry, name))


def assert_no_trace(registry: Any, name: str, before: Trace, pushed: Iterable[str] | None) -> None:
    """A refused push changed nothing: refs, index, no object of it readable, no quarantine left."""
    after = trace(registry, name)
    assert after.refs == before.refs, "a refused push moved refs"
    assert (after.status, after.index) == (before.status, before.index), "the release index changed"
    assert after.rows == before.rows
    if pushed is not None:
        pushed = set(pushed)
        assert pushed, "the test must name the objects it pushed"
        assert readable(registry, name, pushed) == [], "objects of a refused push are readable"
    assert quarantines(registry, name) == [], "a quarantine folder was left behind"
