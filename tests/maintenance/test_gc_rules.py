"""The small parts of garbage collection: its pure rules, `mcpz cache clean`, bad input, the schedule."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from meshutil import until

from mcpz.sizes import human_bytes, parse_duration
from registry_server.git.pack_checks import RawObject, outside_references
from registry_server.maintenance.plan import StoredFile, needs_rewrite, split_by_age, unsafe_drops


def test_split_by_age_and_when_to_rewrite() -> None:
    packs = [StoredFile("pack-a", 100.0, 10), StoredFile("pack-b", 200.0, 10)]
    loose = [StoredFile("ab" * 20, 50.0, 1), StoredFile("cd" * 20, 300.0, 1)]
    split = split_by_age(packs, loose, cutoff=150.0)
    assert [p.name for p in split.old_packs] == ["pack-a"] and [p.name for p in split.young_packs] == [
        "pack-b"
    ]
    assert [o.name for o in split.old_loose] == ["ab" * 20] and [o.name for o in split.young_loose] == [
        "cd" * 20
    ]
    assert needs_rewrite(split, dropped=0)  # an old loose object gets packed
    one_pack = split_by_age(packs[:1], [], cutoff=150.0)
    assert not needs_rewrite(one_pack, dropped=0) and needs_rewrite(one_pack, dropped=1)
    assert unsafe_drops({b"a", b"b"}, [b"b", b"c"]) == {b"b"}


def test_sizes_and_durations() -> None:
    assert human_bytes(0) == "0 bytes" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 1024**3) == "5.0 GiB"
    assert parse_duration("now") == 0 and parse_duration("2w") == 14 * 86400 and parse_duration("90") == 90
    for bad in ("soon", "-1", "inf", "1y"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def _raw(type_num: int, data: bytes) -> RawObject:
    return RawObject.from_bytes(type_num, data)


def test_outside_references_are_what_a_push_builds_on() -> None:
    blob = _raw(3, b"hello\n")
    old_blob = hashlib.sha1(b"old").hexdigest().encode()
    tree = _raw(
        2, b"100644 a\0" + bytes.fromhex(blob.id.decode()) + b"100644 b\0" + bytes.fromhex(old_blob.decode())
    )
    parent = hashlib.sha1(b"parent").hexdigest().encode()
    commit = _raw(1, b"tree " + tree.id + b"\nparent " + parent + b"\nauthor a <a> 1 +0000\n\nx\n")
    assert outside_references([blob, tree, commit]) == {old_blob, parent}


def test_cache_clean(cli: Any, isolated_env: Path) -> None:
    cache = isolated_env / "cache"
    (cache / "index" / "v1").mkdir(parents=True)
    (cache / "index" / "v1" / "chunk.json").write_bytes(b"x" * 1000)
    (cache / "git" / "v1" / "r.git" / "objects").mkdir(parents=True)
    (cache / "git" / "v1" / "r.git" / "objects" / "pack").write_bytes(b"y" * 3000)
    (cache / ".trash-0123").mkdir()  # what an interrupted clean left
    (cache / ".trash-0123" / "f").write_bytes(b"z" * 10)

    dry = cli("cache", "clean", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["freed_bytes"] == 4010 and planned["dry_run"] is True
    assert {f["name"]: f["bytes"] for f in planned["folders"]} == {
        "index": 1000,
        "git": 3000,
        "(interrupted clean)": 10,
    }
    assert (cache / "git" / "v1" / "r.git").exists()

    done = cli("cache", "clean")
    assert done.exit_code == 0, done.stderr
    assert "freed 3.9 KiB" in done.stdout
    assert list(cache.iterdir()) == []
    again = json.loads(cli("cache", "clean", "--json").stdout)
    assert again["freed_bytes"] == 0 and again["folders"] == []


@pytest.mark.parametrize("command", [("registry", "gc"), ("node", "gc")])
def test_bad_grace_is_one_line_and_exit_2(cli: Any, tmp_path: Path, command: tuple[str, ...]) -> None:
    done = cli(*command, "--data", str(tmp_path / "d"), "--grace", "soon")
    assert done.exit_code == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and "--grace" in lines[0], done.stderr


def test_bad_gc_setting_is_refused(tmp_path: Path) -> None:
    from mcpz.errors import UsageError
    from registry_server.settings import RegistrySettings

    with pytest.raises(UsageError, match="gc_grace"):
        RegistrySettings.load(data_dir=tmp_path, env={"MCPZ_REGISTRY_GC_GRACE": "-5"})


@pytest.mark.slow
def test_gc_interval_runs_gc_while_serving(tmp_path: Path) -> None:
    """With `gc_interval` set, the serving registry collects on its own: an expired nonce goes."""
    from datetime import timedelta

    from conftest import start_registry

    from registry_server.accounts.models import AuthNonce
    from registry_server.db import Database
    from registry_server.orm import utcnow

    live = start_registry(tmp_path / "registry", gc_interval=0.2)
    db = Database(live.database_url)
    try:
        with db.session() as session:
            now = utcnow()
            session.add(AuthNonce(nonce="old", created_at=now, expires_at=now - timedelta(seconds=1)))
            session.commit()

        def gone() -> bool:
            with db.session() as session:
                return session.get(AuthNonce, "old") is None

        until(gone, 20, "the scheduled gc to remove the expired nonce")
    finally:
        db.dispose()
        live.stop()
