"""mcpz.lock: stable bytes, round trips, clear errors, staleness."""

from __future__ import annotations

import hashlib
import re
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpz.lockfile import (
    Lock,
    LockedAgent,
    LockfileError,
    build_lock,
    dump_lock,
    is_stale,
    manifest_hash,
    parse_lock,
    stale_changes,
)
from mcpz.resolve import Index, resolve

REGISTRY = "https://registry.example.test"


def commit(name: str, version: str) -> str:
    return hashlib.sha1(f"{name}@{version}".encode()).hexdigest()


def index() -> Index:
    idx = Index()
    idx.add("acme/geo", "1.2.0", commit("acme/geo", "1.2.0"), {"acme/units": ">=1,<2"})
    idx.add("acme/geo", "1.4.2", commit("acme/geo", "1.4.2"), {"acme/units": "^1.1"})
    idx.add("acme/units", "1.0.0", commit("acme/units", "1.0.0"))
    idx.add("acme/units", "1.3.0", commit("acme/units", "1.3.0"), yanked=True)
    idx.add("acme/units", "1.2.0", commit("acme/units", "1.2.0"))
    idx.add("acme/maps", "0.3.0", commit("acme/maps", "0.3.0"), {"acme/geo": ">=1.2", "acme/maps": "*"})
    return idx


MANIFEST = {"acme/maps": "~=0.3", "acme/geo": "^1.2"}


def lock_text(manifest: dict[str, str] = MANIFEST) -> str:
    resolution = resolve(manifest, index())
    return dump_lock(build_lock(resolution, registry=REGISTRY, manifest_dependencies=manifest))


def test_locking_twice_gives_the_same_bytes() -> None:
    first = lock_text()
    assert lock_text() == first
    assert lock_text(dict(reversed(list(MANIFEST.items())))) == first
    # Re-locking against the lock it wrote changes nothing either.
    lock = parse_lock(first)
    again = resolve(MANIFEST, index(), locked=lock.versions())
    assert dump_lock(build_lock(again, registry=REGISTRY, manifest_dependencies=MANIFEST)) == first


def test_the_format() -> None:
    text = lock_text()
    data = tomllib.loads(text)
    assert text.startswith("# mcpz.lock")
    assert data["version"] == 1
    assert data["registry"] == REGISTRY
    # Pinned bytes: sha256 of {"acme/geo":"^1.2","acme/maps":"~=0.3"} (names sorted, no spaces).
    # A change here breaks every mcpz.lock already on disk, so it must be deliberate.
    assert data["manifest-hash"] == (
        "sha256:9006103ad7550540a671163ab2125809dbcc2c98e019c780fad93c485b79ccb7"
    )
    assert data["dependencies"] == {"acme/geo": "^1.2", "acme/maps": "~=0.3"}
    assert [a["name"] for a in data["agent"]] == ["acme/geo", "acme/maps", "acme/units"]
    geo = data["agent"][0]
    assert geo == {
        "name": "acme/geo",
        "version": "1.4.2",
        "commit": commit("acme/geo", "1.4.2"),
        "dependencies": {"acme/units": "^1.1"},
    }
    assert data["agent"][2]["version"] == "1.2.0"  # 1.3.0 is yanked


def test_round_trip_and_tree_from_the_lock() -> None:
    text = lock_text()
    lock = parse_lock(text)
    assert dump_lock(lock) == text
    resolution = lock.to_resolution()
    assert resolution.cycles() == [("acme/maps",)]
    assert [(line.name, line.mark) for line in resolution.tree()] == [
        ("acme/geo", ""),
        ("acme/units", ""),
        ("acme/maps", ""),
        ("acme/geo", "seen"),
        ("acme/maps", "cycle"),
    ]


def test_yanked_locked_agent_is_marked() -> None:
    resolution = resolve({"acme/units": "==1.3.0"}, index())
    lock = build_lock(resolution, registry=REGISTRY, manifest_dependencies={"acme/units": "==1.3.0"})
    text = dump_lock(lock)
    assert "yanked = true" in text
    assert parse_lock(text).agents[0].yanked


def test_the_manifest_hash_is_pinned_on_disk_format() -> None:
    # The hash of {"acme/geo":">=1,<2"}: spacing inside a specifier and key order do not count.
    pinned = "sha256:914cf395e668c6ea0dcabf7b6cb60bcfe703efbbdeff369171ff55f56c068f28"
    assert manifest_hash({"acme/geo": " >=1 , <2 "}) == pinned
    # The empty table: sha256 of the two bytes {}.
    assert manifest_hash({}) == "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def test_staleness() -> None:
    lock = parse_lock(lock_text())
    assert not is_stale(lock, MANIFEST)
    assert not is_stale(lock, {"acme/geo": " ^1.2 ", "acme/maps": "~=0.3"})
    changed = {**MANIFEST, "acme/geo": "^1.4", "acme/units": ">=1"}
    del changed["acme/maps"]
    assert is_stale(lock, changed)
    assert stale_changes(lock, changed) == [
        'acme/geo "^1.2" -> "^1.4"',
        "removed acme/maps",
        'added acme/units ">=1"',
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("version = 1\n", "version = 9\n"), "format version 9 is newer"),
        (lambda t: t.replace("version = 1\n", ""), 'missing "version"'),
        (lambda t: t.replace('registry = "', 'registri = "'), 'unknown key "registri"'),
        (lambda t: t.replace('manifest-hash = "sha256:', 'manifest-hash = "md5:'), "manifest-hash must be"),
        (lambda t: t.replace('name = "acme/units"', 'name = "Acme/Units"'), 'agent[2].name "Acme/Units"'),
        (lambda t: t.replace('version = "1.2.0"', 'version = "one"'), 'agent "acme/units".version "one"'),
        (lambda t: t.replace(commit("acme/maps", "0.3.0"), "main"), 'agent "acme/maps".commit "main"'),
        (lambda t: t.replace('"acme/units" = "^1.1"', '"acme/units" = 7'), '"acme/units" must be a string'),
        (lambda t: t.replace('version = "1.2.0"', 'version = "1.0.0"'), 'needs acme/units "^1.1"'),
        (
            lambda t: t + '\n[[agent]]\nname = "acme/geo"\nversion = "1.0"\ncommit = "' + "a" * 40 + '"\n',
            "twice",
        ),
        (lambda t: t.replace("[[agent]]", "[[agent]]\nbogus = 1", 1), 'unknown key "bogus"'),
        (lambda t: t + "\n[broken", "not valid TOML"),
    ],
)
def test_errors_name_the_key(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LockfileError, match=re.escape(message)) as caught:
        parse_lock(edit(lock_text()))
    assert str(caught.value).startswith("mcpz.lock: ")
    assert caught.value.exit_code == 2


def test_an_agent_without_a_commit_cannot_be_locked() -> None:
    idx = Index()
    idx.add("acme/geo", "1.0", "")
    with pytest.raises(LockfileError, match="no commit id"):
        build_lock(resolve({"acme/geo": ""}, idx), registry=REGISTRY, manifest_dependencies={"acme/geo": ""})


names = st.from_regex(r"[a-z][a-z0-9]{0,6}/[a-z][a-z0-9-]{0,6}[a-z0-9]", fullmatch=True)
specs = st.sampled_from(["", ">=1.0", "<2,>=1.2", "^1.2", "~1.2.3", "==1.0.*", "~=0.3"])


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        names, st.tuples(st.sampled_from(["0.1", "1.0.0", "2.3.4rc1", "1!2.0"]), st.booleans()), max_size=6
    ),
    st.text(max_size=30),
)
def test_any_lock_round_trips(agents: dict[str, tuple[str, bool]], registry: str) -> None:
    # Every agent depends on every agent (specifier "" admits any version), a closed lock.
    locked = tuple(
        LockedAgent(name, version, commit(name, version), {dep: "" for dep in agents}, yanked)
        for name, (version, yanked) in sorted(agents.items())
    )
    lock = Lock(registry=registry, manifest_hash=manifest_hash({}), dependencies={}, agents=locked)
    text = dump_lock(lock)
    assert parse_lock(text) == lock
    assert dump_lock(parse_lock(text)) == text


def test_a_dependency_that_depends_back_on_the_project_round_trips() -> None:
    from mcpz.lockfile import Lock, LockedAgent, dump_lock, manifest_hash, parse_lock

    deps = {"acme/b": ">=1"}
    lock = Lock(
        registry="http://r.example",
        manifest_hash=manifest_hash(deps),
        dependencies=deps,
        agents=(LockedAgent("acme/b", "1.0.0", "a" * 40, {"acme/app": ">=0.1"}),),
        project="acme/app",
    )
    assert parse_lock(dump_lock(lock)) == lock
