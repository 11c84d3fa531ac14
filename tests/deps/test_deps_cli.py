"""`mcpz add | remove | lock | install | sync | tree | why | outdated` against a live registry.

Agents are published the real way: an agent repository with mcpz.toml, `git tag vX`, and the real
`git push` of the branch and its v* tags to the registry. One registry and one small ecosystem
serve the module (published once); tests that tamper with a registry or stop it get their own.

    acme/units  1.0.0, 1.1.0, 1.2.0
    acme/geo    1.0.0 (units ^1.0), 1.4.2 (units >=1.1,<2), 2.0.0 (units ^1.2)
    acme/maps   0.3.0 (geo >=1.0,<2), 0.4.0 (geo ^2)
    acme/beta   1.0.0, 2.0.0b1
    acme/cyc-a  1.0.0 (cyc-b *)      acme/cyc-b 1.0.0 (cyc-a *)     a dependency cycle
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import LiveRegistry, start_registry
from gitutil import api, git, init_agent, isolated_git, manifest, rev_parse, set_version
from hypothesis import given
from hypothesis import strategies as st

Versions = Sequence[tuple[str, Mapping[str, str]]]


def publish(reg: LiveRegistry, token: str, root: Path, name: str, versions: Versions) -> dict[str, str]:
    """Publish each version of `name` as a commit tagged v{version}, in one `git push` of main and
    the tags; return version -> commit id."""
    path = root / name.replace("/", "__")
    commits: dict[str, str] = {}
    for version, deps in versions:
        if (path / ".git").exists():
            set_version(path, version, name, deps=dict(deps))
        else:
            init_agent(path, name, version, deps=dict(deps))
        git("tag", f"v{version}", cwd=path)
        commits[version] = rev_parse(path, "HEAD")
    git("push", "-q", reg.git_url(name, token), "main", "--tags", cwd=path)
    return commits


ECOSYSTEM: dict[str, Versions] = {
    "acme/units": [("1.0.0", {}), ("1.1.0", {}), ("1.2.0", {})],
    "acme/geo": [
        ("1.0.0", {"acme/units": "^1.0"}),
        ("1.4.2", {"acme/units": ">=1.1,<2"}),
        ("2.0.0", {"acme/units": "^1.2"}),
    ],
    "acme/maps": [("0.3.0", {"acme/geo": ">=1.0,<2"}), ("0.4.0", {"acme/geo": "^2"})],
    "acme/beta": [("1.0.0", {}), ("2.0.0b1", {})],
    "acme/cyc-a": [("1.0.0", {"acme/cyc-b": "*"})],
    "acme/cyc-b": [("1.0.0", {"acme/cyc-a": "*"})],
}


@dataclass
class World:
    reg: LiveRegistry
    token: str
    commits: dict[str, dict[str, str]]
    root: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        with isolated_git(tmp_path_factory.mktemp("home")):
            token = reg.account("acme")
            root = tmp_path_factory.mktemp("agents")
            commits = {
                name: publish(reg, token, root, name, versions) for name, versions in ECOSYSTEM.items()
            }
        yield World(reg, token, commits, root)
    finally:
        reg.stop()


@pytest.fixture
def use(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("MCPZ_REGISTRY", world.reg.url)
    return world


def make_app(path: Path, deps: Mapping[str, str] | None = None, *, name: str = "acme/app") -> Path:
    """An agent folder (not pushed) whose mcpz.toml has a comment to be kept."""
    path.mkdir(parents=True, exist_ok=True)
    text = "# the app's manifest: comments survive `mcpz add`\n" + manifest(name, "0.1.0", deps=deps)
    (path / "mcpz.toml").write_text(text)
    return path


def lock_of(path: Path) -> dict[str, str]:
    data = tomllib.loads((path / "mcpz.lock").read_text())
    return {agent["name"]: agent["version"] for agent in data["agent"]}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, f"expected one error line:\n{stderr}"
    assert lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --- add, lock, install, tree, why -----------------------------------------------------------------


def test_add_locks_and_install_fetches_verified_commits(cli, use: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app")
    added = cli("add", "acme/geo", cwd=app)
    assert added.exit_code == 0, added.stderr
    # Compatible with the latest release (2.0.0), comments and layout kept.
    assert added.stdout.splitlines()[0] == 'added acme/geo "~=2.0"'
    assert "+ added acme/geo 2.0.0" in added.stdout
    assert "+ added acme/units 1.2.0" in added.stdout
    text = (app / "mcpz.toml").read_text()
    assert text.startswith("# the app's manifest: comments survive `mcpz add`\n")
    assert text.endswith('\n[dependencies]\n"acme/geo" = "~=2.0"\n')
    assert lock_of(app) == {"acme/geo": "2.0.0", "acme/units": "1.2.0"}
    locked = tomllib.loads((app / "mcpz.lock").read_text())
    assert locked["registry"] == use.reg.url
    assert {a["name"]: a["commit"] for a in locked["agent"]} == {
        "acme/geo": use.commits["acme/geo"]["2.0.0"],
        "acme/units": use.commits["acme/units"]["1.2.0"],
    }

    # A second, sorted entry goes in its place; a sugar specifier is kept as written.
    maps = cli("--json", "add", "acme/maps", "^0.4", cwd=app)
    assert maps.exit_code == 0, maps.stderr
    payload = json.loads(maps.stdout)
    assert payload["name"] == "acme/maps" and payload["specifier"] == "^0.4" and payload["previous"] is None
    assert payload["lock"]["changes"] == [{"name": "acme/maps", "kind": "added", "old": None, "new": "0.4.0"}]
    assert (app / "mcpz.toml").read_text().endswith('"acme/geo" = "~=2.0"\n"acme/maps" = "^0.4"\n')

    installed = cli("--json", "install", cwd=app)
    assert installed.exit_code == 0, installed.stderr
    report = json.loads(installed.stdout)
    assert [(a["name"], a["version"], a["action"], a["fetched"]) for a in report["agents"]] == [
        ("acme/geo", "2.0.0", "installed", True),
        ("acme/maps", "0.4.0", "installed", True),
        ("acme/units", "1.2.0", "installed", True),
    ]
    geo = app / ".mcpz" / "deps" / "acme" / "geo"
    assert tomllib.loads((geo / "mcpz.toml").read_text())["agent"]["version"] == "2.0.0"
    assert (geo / "server.py").read_text() == "print('hello from acme/geo')\n"
    marker = json.loads((geo / ".mcpz-installed.json").read_text())
    assert marker["commit"] == use.commits["acme/geo"]["2.0.0"]
    assert not list((app / ".mcpz" / "deps").glob(".tmp-*"))

    # `sync` is the same command; nothing to do now.
    again = cli("sync", cwd=app)
    assert again.exit_code == 0, again.stderr
    assert again.stdout == ""
    assert "3 agents in .mcpz/deps (0 fetched, 3 unchanged, 0 removed)" in again.stderr

    # From the shared object cache, a second project installs without fetching.
    other = make_app(tmp_path / "other", {"acme/geo": "~=2.0"})
    (other / "mcpz.lock").write_text((app / "mcpz.lock").read_text().replace('"acme/maps" = "^0.4"\n', ""))
    assert cli("lock", cwd=other).exit_code == 0
    second = cli("--json", "install", cwd=other)
    assert second.exit_code == 0, second.stderr
    assert [a["fetched"] for a in json.loads(second.stdout)["agents"]] == [False, False]

    tree = cli("tree", cwd=app)
    assert tree.exit_code == 0, tree.stderr
    assert tree.stdout.splitlines() == [
        "acme/app 0.1.0",
        "├── acme/geo 2.0.0 (~=2.0)",
        "│   └── acme/units 1.2.0 (^1.2)",
        "└── acme/maps 0.4.0 (^0.4)",
        "    └── acme/geo 2.0.0 (^2) (*)",
        "(*) its dependencies are shown above",
    ]
    tree_json = json.loads(cli("--json", "tree", cwd=app).stdout)
    assert [d["name"] for d in tree_json["dependencies"]] == ["acme/geo", "acme/maps"]
    assert tree_json["dependencies"][1]["dependencies"][0]["mark"] == "seen"
    assert tree_json["cycles"] == []

    why = cli("why", "acme/units", cwd=app)
    assert why.exit_code == 0, why.stderr
    assert why.stdout.splitlines()[1:] == [
        "  acme/app (mcpz.toml) -> acme/geo 2.0.0 (~=2.0) -> acme/units 1.2.0 (^1.2)"
    ]
    why_json = json.loads(cli("--json", "why", "acme/units", cwd=app).stdout)
    assert why_json["commit"] == use.commits["acme/units"]["1.2.0"]
    assert [[step["name"] for step in path] for path in why_json["paths"]] == [["acme/geo", "acme/units"]]
    missing = cli("why", "acme/beta", cwd=app)
    assert missing.exit_code == 5
    assert "acme/beta is not in mcpz.lock" in error_line(missing.stderr)

    # remove: the lock loses what only that dependency needed (no network), install follows.
    removed = cli("remove", "acme/maps", cwd=app)
    assert removed.exit_code == 0, removed.stderr
    assert "- removed acme/maps 0.4.0" in removed.stdout
    assert lock_of(app) == {"acme/geo": "2.0.0", "acme/units": "1.2.0"}
    assert '"acme/maps"' not in (app / "mcpz.toml").read_text()
    synced = cli("install", cwd=app)
    assert synced.exit_code == 0, synced.stderr
    assert "removed acme/maps" in synced.stdout
    assert not (app / ".mcpz" / "deps" / "acme" / "maps").exists()


def test_add_refusals(cli, use: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app")
    before = (app / "mcpz.toml").read_text()
    unknown = cli("add", "acme/nope", cwd=app)
    assert unknown.exit_code == 5
    assert "acme/nope is not in the registry" in error_line(unknown.stderr)
    bad_spec = cli("add", "acme/geo", ">>1", cwd=app)
    assert bad_spec.exit_code == 2
    itself = cli("add", "acme/app", cwd=app)
    assert itself.exit_code == 2
    impossible = cli("add", "acme/geo", ">=9", cwd=app)
    assert impossible.exit_code == 3
    # Nothing was written by any of them.
    assert (app / "mcpz.toml").read_text() == before
    assert not (app / "mcpz.lock").exists()
    not_there = cli("remove", "acme/geo", cwd=app)
    assert not_there.exit_code == 2


def test_pre_releases_need_a_specifier_that_names_one(cli, use: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app")
    assert cli("add", "acme/beta", cwd=app).exit_code == 0
    assert lock_of(app) == {"acme/beta": "1.0.0"}
    assert '"acme/beta" = "~=1.0"' in (app / "mcpz.toml").read_text()
    pre = cli("add", "acme/beta", ">=2.0.0b1", cwd=app)
    assert pre.exit_code == 0, pre.stderr
    assert lock_of(app) == {"acme/beta": "2.0.0b1"}


# --- lock: stability, upgrades, --check ----------------------------------------------------------


def test_lock_twice_gives_the_same_bytes_and_check_passes(cli, use: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app", {"acme/maps": ">=0.3", "acme/geo": "*"})
    first = cli("lock", cwd=app)
    assert first.exit_code == 0, first.stderr
    text = (app / "mcpz.lock").read_bytes()
    second = cli("--json", "lock", cwd=app)
    assert second.exit_code == 0, second.stderr
    payload = json.loads(second.stdout)
    assert payload["written"] is False and payload["changes"] == []
    # The second run read the index from the cache: every request was answered 304.
    assert payload["index"]["requests"] == payload["index"]["not_modified"] > 0
    assert (app / "mcpz.lock").read_bytes() == text
    assert "mcpz.lock is up to date: 3 agents" in second.stderr

    check = cli("--json", "lock", "--check", cwd=app)
    assert check.exit_code == 0, check.stderr
    assert json.loads(check.stdout)["fresh"] is True
    assert (app / "mcpz.lock").read_bytes() == text


def test_lock_check_fails_when_the_manifest_changed_or_the_lock_is_missing(
    cli, use: World, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app", {"acme/geo": "^1.0"})
    missing = cli("lock", "--check", cwd=app)
    assert missing.exit_code == 9
    assert "mcpz.lock is missing" in error_line(missing.stderr)
    assert cli("lock", cwd=app).exit_code == 0
    assert lock_of(app) == {"acme/geo": "1.4.2", "acme/units": "1.2.0"}

    make_app(app, {"acme/geo": "^2.0", "acme/beta": "*"})
    stale = cli("--json", "lock", "--check", cwd=app)
    assert stale.exit_code == 9
    line = error_line(stale.stderr)
    assert "mcpz.lock is out of date" in line
    assert 'added acme/beta "*"' in line
    assert 'acme/geo "^1.0" -> "^2.0"' in line
    assert json.loads(stale.stdout)["error"]["exit_code"] == 9
    # install refuses a stale lock the same way, and names the fix.
    refused = cli("install", cwd=app)
    assert refused.exit_code == 9
    assert "run `mcpz lock`, then `mcpz install`" in refused.stderr


def test_relock_keeps_versions_and_upgrade_package_moves_only_that(cli, use: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    world = use
    name = "acme/keep"
    publish(world.reg, world.token, tmp_path, "acme/keep-base", [("1.0.0", {}), ("1.1.0", {})])
    publish(world.reg, world.token, tmp_path, name, [("1.0.0", {"acme/keep-base": ">=1.0"})])
    publish(world.reg, world.token, tmp_path, "acme/keep-other", [("1.0.0", {})])
    app = make_app(tmp_path / "app", {name: "*", "acme/keep-other": "*"})
    assert cli("lock", cwd=app).exit_code == 0
    before = (app / "mcpz.lock").read_bytes()
    assert lock_of(app) == {name: "1.0.0", "acme/keep-base": "1.1.0", "acme/keep-other": "1.0.0"}
    assert cli("install", cwd=app).exit_code == 0

    # New releases everywhere; re-locking changes nothing unless asked.
    publish(world.reg, world.token, tmp_path, "acme/keep-base", [("1.2.0", {})])
    publish(world.reg, world.token, tmp_path, name, [("2.0.0", {"acme/keep-base": ">=1.2"})])
    publish(world.reg, world.token, tmp_path, "acme/keep-other", [("1.1.0", {})])
    same = cli("lock", cwd=app)
    assert same.exit_code == 0, same.stderr
    assert (app / "mcpz.lock").read_bytes() == before
    assert cli("lock", "--check", cwd=app).exit_code == 0

    # --upgrade-package: that agent, and what its new version forces; nothing else.
    moved = cli("--json", "lock", "--upgrade-package", name, cwd=app)
    assert moved.exit_code == 0, moved.stderr
    changes = json.loads(moved.stdout)["changes"]
    assert [(c["name"], c["old"], c["new"]) for c in changes] == [
        ("acme/keep", "1.0.0", "2.0.0"),
        ("acme/keep-base", "1.1.0", "1.2.0"),
    ]
    assert lock_of(app)["acme/keep-other"] == "1.0.0"
    # The new versions come into the shared object store next to the old ones (shallow, with haves).
    updated = cli("--json", "install", cwd=app)
    assert updated.exit_code == 0, updated.stderr
    actions = {a["name"]: (a["version"], a["action"]) for a in json.loads(updated.stdout)["agents"]}
    assert actions == {
        name: ("2.0.0", "updated"),
        "acme/keep-base": ("1.2.0", "updated"),
        "acme/keep-other": ("1.0.0", "unchanged"),
    }
    keep = app / ".mcpz" / "deps" / "acme" / "keep"
    assert tomllib.loads((keep / "mcpz.toml").read_text())["agent"]["version"] == "2.0.0"
    unknown = cli("lock", "--upgrade-package", "acme/zzz", cwd=app)
    assert unknown.exit_code == 2

    everything = cli("lock", "--upgrade", cwd=app)
    assert everything.exit_code == 0, everything.stderr
    assert "^ acme/keep-other 1.0.0 -> 1.1.0" in everything.stdout
    assert lock_of(app) == {name: "2.0.0", "acme/keep-base": "1.2.0", "acme/keep-other": "1.1.0"}

    outdated = cli("--json", "outdated", "--all", cwd=app)
    assert outdated.exit_code == 0, outdated.stderr
    assert [(r["name"], r["locked"], r["latest"]) for r in json.loads(outdated.stdout)] == [
        ("acme/keep", "2.0.0", "2.0.0"),
        ("acme/keep-base", "1.2.0", "1.2.0"),
        ("acme/keep-other", "1.1.0", "1.1.0"),
    ]
    assert json.loads(cli("--json", "outdated", cwd=app).stdout) == []


def test_outdated_lists_locked_allowed_and_latest(cli, use: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app", {"acme/maps": "<0.4", "acme/units": "==1.0.0"})
    assert cli("lock", cwd=app).exit_code == 0
    # acme/geo 1.4.2 needs acme/units>=1.1, so the pin keeps acme/geo at 1.0.0.
    assert lock_of(app) == {"acme/geo": "1.0.0", "acme/maps": "0.3.0", "acme/units": "1.0.0"}
    rows = json.loads(cli("--json", "outdated", cwd=app).stdout)
    assert rows == [
        {
            "name": "acme/geo",
            "locked": "1.0.0",
            "allowed": "1.0.0",
            "latest": "2.0.0",
            "direct": False,
            "yanked": False,
        },
        {
            "name": "acme/maps",
            "locked": "0.3.0",
            "allowed": "0.3.0",
            "latest": "0.4.0",
            "direct": True,
            "yanked": False,
        },
        {
            "name": "acme/units",
            "locked": "1.0.0",
            "allowed": "1.0.0",
            "latest": "1.2.0",
            "direct": True,
            "yanked": False,
        },
    ]
    table = cli("outdated", cwd=app)
    assert table.exit_code == 0
    assert "acme/maps" in table.stdout and "0.4.0" in table.stdout and "direct" in table.stdout


def test_conflict_is_explained_with_exit_3(cli, use: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app", {"acme/geo": ">=2", "acme/maps": "<0.4"})
    failed = cli("lock", cwd=app)
    assert failed.exit_code == 3
    line = error_line(failed.stderr)
    # The chain of reasons, naming the agents and versions that take part, and what to change.
    assert "acme/maps 0.3.0 depends on acme/geo>=1.0,<2" in line, line
    assert "acme/geo>=2" in line
    assert "acme/units" not in line
    assert "change the specifier of" in line
    assert not (app / "mcpz.lock").exists()
    as_json = cli("--json", "lock", cwd=app)
    assert json.loads(as_json.stdout)["error"]["exit_code"] == 3


def test_a_cycle_locks_and_tree_marks_it(cli, use: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app", {"acme/cyc-a": "*"})
    assert cli("lock", cwd=app).exit_code == 0, cli("lock", cwd=app).stderr
    assert lock_of(app) == {"acme/cyc-a": "1.0.0", "acme/cyc-b": "1.0.0"}
    tree = cli("tree", cwd=app)
    assert tree.stdout.splitlines() == [
        "acme/app 0.1.0",
        "└── acme/cyc-a 1.0.0 (*)",
        "    └── acme/cyc-b 1.0.0 (*)",
        "        └── acme/cyc-a 1.0.0 (*) (cycle)",
        "cycle: acme/cyc-a -> acme/cyc-b -> acme/cyc-a",
    ]
    assert json.loads(cli("--json", "tree", cwd=app).stdout)["cycles"] == [["acme/cyc-a", "acme/cyc-b"]]
    assert cli("install", cwd=app).exit_code == 0


# --- yanked ------------------------------------------------------------------------------------


def test_a_yanked_version_is_skipped_by_new_locks_but_installs_from_an_exact_lock(
    cli, use: World, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    world = use
    publish(world.reg, world.token, tmp_path, "acme/yk", [("1.0.0", {}), ("1.1.0", {})])
    app = make_app(tmp_path / "app", {"acme/yk": "^1.0"})
    assert cli("lock", cwd=app).exit_code == 0
    assert lock_of(app) == {"acme/yk": "1.1.0"}
    yanked = api(
        world.reg, "/v1/agents/acme/yk/1.1.0/yank", world.token, method="POST", json={"reason": "bad"}
    )
    assert yanked.status_code == 200, yanked.text

    # A new project does not get it...
    fresh = make_app(tmp_path / "fresh", {"acme/yk": "^1.0"})
    assert cli("lock", cwd=fresh).exit_code == 0
    assert lock_of(fresh) == {"acme/yk": "1.0.0"}
    # ...nor does `add`'s default specifier look at it.
    added = cli("add", "acme/yk", cwd=make_app(tmp_path / "added"))
    assert added.stdout.splitlines()[0] == 'added acme/yk "~=1.0"'

    # The exact lock still installs it; re-locking keeps it, flags it, and says so.
    installed = cli("--json", "install", cwd=app)
    assert installed.exit_code == 0, installed.stderr
    assert [(a["name"], a["version"]) for a in json.loads(installed.stdout)["agents"]] == [
        ("acme/yk", "1.1.0")
    ]
    relocked = cli("lock", cwd=app)
    assert relocked.exit_code == 0, relocked.stderr
    assert "warning: acme/yk 1.1.0 is yanked" in relocked.stderr
    assert lock_of(app) == {"acme/yk": "1.1.0"}
    assert "yanked = true" in (app / "mcpz.lock").read_text()
    assert cli("lock", "--check", cwd=app).exit_code == 0
    rows = json.loads(cli("--json", "outdated", cwd=app).stdout)
    assert rows == [
        {
            "name": "acme/yk",
            "locked": "1.1.0",
            "allowed": "1.0.0",
            "latest": "1.0.0",
            "direct": True,
            "yanked": True,
        }
    ]
    # Moving off it is one command; `==` may still pin it.
    assert cli("lock", "--upgrade-package", "acme/yk", cwd=app).exit_code == 0
    assert lock_of(app) == {"acme/yk": "1.0.0"}
    pinned = make_app(tmp_path / "pinned", {"acme/yk": "==1.1.0"})
    assert cli("lock", cwd=pinned).exit_code == 0
    assert lock_of(pinned) == {"acme/yk": "1.1.0"}


# --- a registry of its own: tampering, offline ------------------------------------------------------


@pytest.fixture
def own(sqlite_registry: LiveRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    token = sqlite_registry.account("acme")
    root = tmp_path / "agents"
    commits = {
        "acme/base": publish(sqlite_registry, token, root, "acme/base", [("1.0.0", {}), ("1.1.0", {})]),
        "acme/top": publish(sqlite_registry, token, root, "acme/top", [("1.0.0", {"acme/base": "^1.0"})]),
    }
    monkeypatch.setenv("MCPZ_REGISTRY", sqlite_registry.url)
    return World(sqlite_registry, token, commits, root)


def test_install_refuses_a_registry_that_serves_another_commit(cli, own: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app", {"acme/top": "*"})
    assert cli("lock", cwd=app).exit_code == 0
    locked = own.commits["acme/base"]["1.1.0"]

    # Tamper: point the release tag v1.1.0 of acme/base at another commit, on the registry's disk.
    bare = own.reg.data_dir / "repos" / "acme" / "base.git"
    other = own.commits["acme/base"]["1.0.0"]
    git("update-ref", "refs/tags/v1.1.0", other, cwd=bare)

    refused = cli("install", cwd=app)
    assert refused.exit_code == 1
    line = error_line(refused.stderr)
    assert f"the registry serves acme/base 1.1.0 at commit {other[:12]}" in line
    assert f"mcpz.lock pins {locked[:12]}; refusing it" in line
    assert not (app / ".mcpz" / "deps" / "acme" / "base").exists()
    # The honest agent was still installed, atomically: whole, or not at all.
    assert (app / ".mcpz" / "deps" / "acme" / "top" / "mcpz.toml").exists()
    assert not list((app / ".mcpz" / "deps").glob(".tmp-*"))

    # Tamper with the index too (the database row): re-locking refuses to adopt the new commit.
    from sqlalchemy import update

    from registry_server.db import Database
    from registry_server.releases.models import Agent, Release

    db = Database(own.reg.database_url)
    try:
        with db.session() as session:
            agent = session.query(Agent).filter_by(name="acme/base").one()
            session.execute(
                update(Release)
                .where(Release.agent_id == agent.id, Release.version == "1.1.0")
                .values(commit=other)
            )
            agent.serial += 1
    finally:
        db.dispose()
    relock = cli("lock", cwd=app)
    assert relock.exit_code == 1
    assert f"now lists acme/base 1.1.0 at commit {other[:12]}" in error_line(relock.stderr)
    check = cli("lock", "--check", cwd=app)
    assert check.exit_code == 1


def test_install_verifies_the_manifest_of_the_locked_commit(cli, own: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app", {"acme/base": "==1.0.0"})
    assert cli("lock", cwd=app).exit_code == 0
    # A hand-edited lock that calls the 1.0.0 commit 1.1.0: the commit's own manifest says otherwise.
    text = (app / "mcpz.lock").read_text()
    one_one = own.commits["acme/base"]["1.1.0"]
    (app / "mcpz.lock").write_text(text.replace(own.commits["acme/base"]["1.0.0"], one_one))
    # (the registry's tag v1.0.0 still names the 1.0.0 commit, so the fetch is refused first)
    refused = cli("install", cwd=app)
    assert refused.exit_code == 1
    assert "refusing it" in error_line(refused.stderr)


def test_offline_uses_only_the_cache_and_names_what_is_missing(cli, own: World, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = make_app(tmp_path / "app", {"acme/top": "*"})
    online = cli("lock", cwd=app)
    assert online.exit_code == 0, online.stderr
    text = (app / "mcpz.lock").read_bytes()
    assert cli("install", cwd=app).exit_code == 0

    own.reg.stop()
    down = cli("lock", cwd=app)
    assert down.exit_code == 6
    offline = cli("--json", "lock", "--offline", cwd=app)
    assert offline.exit_code == 0, offline.stderr
    stats = json.loads(offline.stdout)["index"]
    assert stats["requests"] == 0 and stats["from_cache"] > 0
    assert (app / "mcpz.lock").read_bytes() == text
    assert cli("lock", "--check", "--offline", cwd=app).exit_code == 0
    assert cli("tree", cwd=app).exit_code == 0

    # Installing again from the shared object cache needs no registry either.
    import shutil

    shutil.rmtree(app / ".mcpz")
    reinstalled = cli("--json", "install", "--offline", cwd=app)
    assert reinstalled.exit_code == 0, reinstalled.stderr
    assert [a["fetched"] for a in json.loads(reinstalled.stdout)["agents"]] == [False, False]

    # A different project: the cache serves what it has and names what it lacks.
    other = make_app(tmp_path / "other", {"acme/top": "*", "acme/never-seen": "^1"})
    missing = cli("lock", "--offline", cwd=other)
    assert missing.exit_code == 6
    line = error_line(missing.stderr)
    assert "--offline: the cache holds no index entry for acme/never-seen" in line
    assert "without --offline" in line
    assert not (other / "mcpz.lock").exists()
    other_add = cli("add", "acme/base", "--offline", cwd=make_app(tmp_path / "third"))
    assert other_add.exit_code == 0, other_add.stderr
    assert other_add.stdout.splitlines()[0] == 'added acme/base "~=1.1"'


def test_check_lock_fresh_for_push(own: World, tmp_path: Path) -> None:
    from mcpz.deps.flows import check_lock_fresh
    from mcpz.errors import UsageError
    from mcpz.lockfile import StaleLockError

    plain = make_app(tmp_path / "plain")
    check_lock_fresh(plain)  # no dependencies, no lock: nothing to check
    app = make_app(tmp_path / "app", {"acme/top": "*"})
    with pytest.raises(StaleLockError, match=r"mcpz\.lock is missing") as missing:
        check_lock_fresh(app)
    assert isinstance(missing.value, UsageError)
    assert missing.value.exit_code == 9
    # (`mcpz lock` writes it; then check_lock_fresh passes, and fails again after an edit.)
    from typer.testing import CliRunner

    from mcpz.cli.app import app as cli_app

    result = CliRunner().invoke(cli_app, ["lock", "--path", str(app)], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    check_lock_fresh(app)
    check_lock_fresh(app / "mcpz.toml")
    make_app(app, {"acme/top": "*", "acme/base": "^1.0"})
    with pytest.raises(StaleLockError, match=r'out of date.*added acme/base "\^1.0"'):
        check_lock_fresh(app)


# --- pure pieces: the manifest edit, the default specifier -----------------------------------------


def _manifest(text: str) -> Any:
    from mcpz.manifest import parse_manifest

    return parse_manifest(text)


BASE = '# top comment\n[agent]\nname = "acme/app"   # the name\nversion = "0.1.0"\nkind = "plugin"\n'
AGENT = '[agent]\nname = "acme/app"\nversion = "0.1.0"\n'
RUN = '[run]\ncommand = ["python", "server.py"]\n'


@pytest.mark.parametrize(
    ("before", "name", "spec", "after"),
    [
        # No table yet: one is added at the end, after a blank line.
        (BASE, "acme/geo", "^1.2", BASE + '\n[dependencies]\n"acme/geo" = "^1.2"\n'),
        # A sorted table stays sorted; comments, blank lines and the next table stay where they are.
        (
            AGENT + '\n[dependencies]\n# a first\n"acme/a" = "*"\n"acme/z" = ">=1"\n\n' + RUN,
            "acme/m",
            "~=1.0",
            AGENT
            + '\n[dependencies]\n# a first\n"acme/a" = "*"\n"acme/m" = "~=1.0"\n"acme/z" = ">=1"\n\n'
            + RUN,
        ),
        # An existing entry changes in place, its trailing comment kept.
        (
            BASE + '\n[dependencies]\n"acme/z" = ">=1"\n"acme/a" = "*"  # any\n',
            "acme/a",
            "^2",
            BASE + '\n[dependencies]\n"acme/z" = ">=1"\n"acme/a" = "^2"  # any\n',
        ),
        # Removing the last entry drops the table.
        (BASE + '\n[dependencies]\n"acme/a" = "*"\n', "acme/a", None, BASE),
        # Windows line endings stay Windows line endings.
        (
            BASE.replace("\n", "\r\n") + '\r\n[dependencies]\r\n"acme/a" = "*"\r\n',
            "acme/b",
            "*",
            BASE.replace("\n", "\r\n") + '\r\n[dependencies]\r\n"acme/a" = "*"\r\n"acme/b" = "*"\r\n',
        ),
    ],
)
def test_edit_dependency_keeps_the_rest_of_the_file(
    before: str, name: str, spec: str | None, after: str
) -> None:
    from mcpz.deps.manifest_edit import edit_dependency

    edited, kept = edit_dependency(before, _manifest(before), name, spec)
    assert kept
    assert edited == after


def test_edit_dependency_rewrites_an_unusual_layout() -> None:
    from mcpz.deps.manifest_edit import edit_dependency

    # An inline table at the top: no [dependencies] line to edit, so the file is written afresh.
    inline = (
        'dependencies = { "acme/a" = "*" }\n[agent]\nname = "acme/app"\nversion = "0.1.0"\nkind = "plugin"\n'
    )
    manifest = _manifest(inline)
    edited, kept = edit_dependency(inline, manifest, "acme/b", "^1")
    assert not kept
    assert _manifest(edited).dependencies == {"acme/a": "*", "acme/b": "^1"}


@pytest.mark.parametrize(
    ("versions", "expected"),
    [
        ([("1.0.0", False), ("1.4.2", False), ("2.0.0rc1", False)], "~=1.4"),
        ([("0.3.1", False), ("0.4.0", True)], "~=0.3.1"),
        ([("2", False)], "~=2.0"),
        ([("2.0.0b1", False), ("2.0.0b2", True)], ">=2.0.0b1"),
    ],
)
def test_default_specifier(versions: list[tuple[str, bool]], expected: str) -> None:
    from mcpz.deps.flows import default_specifier

    assert default_specifier([{"version": v, "yanked": y} for v, y in versions]) == expected


def test_default_specifier_needs_a_release_that_is_not_yanked() -> None:
    from mcpz.deps.flows import default_specifier
    from mcpz.errors import NotFoundError

    with pytest.raises(NotFoundError):
        default_specifier([{"version": "1.0.0", "yanked": True}])


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["acme/a", "acme/b", "acme/geo", "zz/x", "m/n-1"]),
            st.one_of(st.none(), st.sampled_from(["*", "^1.2", ">=1,<2", "~=0.3.1", "==1.0.0"])),
        ),
        max_size=12,
    )
)
def test_edits_in_any_order_give_the_intended_manifest_and_keep_the_rest(
    ops: list[tuple[str, str | None]],
) -> None:
    from mcpz.deps.manifest_edit import edit_dependency

    text = BASE
    expected: dict[str, str] = {}
    for name, spec in ops:
        if spec is None:
            expected.pop(name, None)
        else:
            expected[name] = spec
        text, kept = edit_dependency(text, _manifest(text), name, spec)
        assert kept
        assert dict(_manifest(text).dependencies) == expected
    assert text.startswith(BASE)


def test_locking_does_not_import_the_installer() -> None:
    # `mcpz lock` is start-up bound on a warm cache: its workflow module must not pull in
    # installing (fetching, verifying, placing agents), which it never uses.
    code = "import sys, mcpz.deps.flows; print('mcpz.deps.install' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
