"""Each replica's lines kept on the node: rotating JSON-lines files with a size bound."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mcpz.node.replicalogs import ReplicaLogs


def test_lines_rotate_within_the_bound_and_read_back_in_order(tmp_path: Path) -> None:
    logs = ReplicaLogs(tmp_path, file_bytes=1000, files=3)
    for i in range(200):
        logs.write("r-1", 2, "stderr", f"line {i:03d}")
    logs.close_all()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["r-1.jsonl", "r-1.jsonl.1", "r-1.jsonl.2"]
    assert all((tmp_path / f).stat().st_size <= 1000 for f in files)
    kept = list(logs.read("r-1"))
    assert kept[-1]["line"] == "line 199" and len(kept) < 200
    assert [int(x["line"].split()[1]) for x in kept] == list(range(200 - len(kept), 200))
    assert {(x["replica"], x["epoch"], x["stream"]) for x in kept} == {("r-1", 2, "stderr")}


def test_a_reopened_file_goes_on_from_its_size(tmp_path: Path) -> None:
    first = ReplicaLogs(tmp_path, file_bytes=500, files=2)
    for i in range(5):
        first.write("r-1", 1, "stdout", f"first {i}")
    first.close_all()
    second = ReplicaLogs(tmp_path, file_bytes=500, files=2)
    for i in range(20):
        second.write("r-1", 1, "stdout", f"second {i}")
    second.close_all()
    assert all(p.stat().st_size <= 500 for p in tmp_path.iterdir())
    assert json.loads((tmp_path / "r-1.jsonl").read_text().splitlines()[-1])["line"] == "second 19"


def test_off_when_no_files(tmp_path: Path) -> None:
    logs = ReplicaLogs(tmp_path / "logs", files=0)
    logs.write("r-1", 1, "stderr", "nothing kept")
    assert not (tmp_path / "logs").exists()


def test_prune_removes_only_old_files_of_replicas_gone(tmp_path: Path) -> None:
    logs = ReplicaLogs(tmp_path)
    for replica in ("held", "gone-old", "gone-new"):
        logs.write(replica, 1, "stderr", "x")
    logs.close_all()
    old = time.time() - 8 * 86400
    os.utime(tmp_path / "held.jsonl", (old, old))
    os.utime(tmp_path / "gone-old.jsonl", (old, old))
    assert logs.prune({"held"}) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone-new.jsonl", "held.jsonl"]


def test_a_torn_last_line_does_not_swallow_the_next(tmp_path: Path) -> None:
    (tmp_path / "r-1.jsonl").write_text('{"ts": 1, "line": "torn')
    logs = ReplicaLogs(tmp_path)
    logs.write("r-1", 1, "stderr", "whole")
    logs.close_all()
    assert [x["line"] for x in logs.read("r-1")] == ["whole"]
