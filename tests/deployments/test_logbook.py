"""The registry's replica log history: in memory, then on disk in rotating, size-bounded files."""

from __future__ import annotations

import json
from pathlib import Path

from registry_server.deployments.logbook import LogBook

NAME = "acme/echo"


def lines(book: LogBook, n: int = 10_000, **kw: object) -> list[str]:
    return [x.line for x in book.tail(NAME, n, **kw)]  # type: ignore[arg-type]


def test_history_beyond_memory_comes_from_the_files(tmp_path: Path) -> None:
    book = LogBook(max_lines=3, folder=tmp_path)
    for i in range(10):
        book.append(NAME, "r-1", "stderr", [f"line {i}"], ts=1000.0 + i)
    assert lines(book, 2) == ["line 8", "line 9"]  # memory alone
    assert lines(book) == [f"line {i}" for i in range(10)]  # the files reach further back
    assert lines(book, since=1005.0) == [f"line {i}" for i in range(5, 10)]
    assert lines(book, after=7) == ["line 7", "line 8", "line 9"]


def test_a_replica_is_chosen_by_its_id_or_its_start(tmp_path: Path) -> None:
    book = LogBook(max_lines=2, folder=tmp_path)
    book.append(NAME, "r-aa1", "stderr", ["a1", "a2"], ts=1.0)
    book.append(NAME, "r-bb2", "stderr", ["b1"], ts=2.0)
    book.append(NAME, "r-aa1", "stdout", ["a3"], ts=3.0)
    assert lines(book, replica="r-aa") == ["a1", "a2", "a3"]
    assert lines(book, replica="r-bb2") == ["b1"]
    assert lines(book, replica="r-cc") == []


def test_the_files_stay_within_their_bound_oldest_going_first(tmp_path: Path) -> None:
    book = LogBook(max_lines=10, folder=tmp_path, file_bytes=2000, files=3)
    for i in range(500):
        book.append(NAME, "r-1", "stderr", [f"line {i:04d} " + "x" * 40], ts=float(i))
    files = sorted((tmp_path / "acme").iterdir())
    assert [p.name for p in files] == ["echo.jsonl", "echo.jsonl.1", "echo.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in files)
    kept = lines(book)
    assert kept[-1].startswith("line 0499") and len(kept) < 500
    seqs = [x.seq for x in book.tail(NAME, 10_000)]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_a_restart_reads_the_history_and_numbers_on(tmp_path: Path) -> None:
    first = LogBook(folder=tmp_path)
    first.append(NAME, "r-1", "stderr", ["before"], ts=1.0)
    with (tmp_path / "acme" / "echo.jsonl").open("a") as f:
        f.write('{"seq": 99, "ts": 2.0, "repl')  # a crash tore the last line
    second = LogBook(folder=tmp_path)
    assert lines(second) == ["before"]
    second.append(NAME, "r-1", "stderr", ["after"], ts=3.0)
    assert [x.seq for x in second.tail(NAME, 10)] == [1, 2]


def test_forgetting_a_deployment_removes_its_files(tmp_path: Path) -> None:
    book = LogBook(folder=tmp_path, file_bytes=200, files=2)
    for i in range(20):
        book.append(NAME, "r-1", "stderr", [f"line {i}"], ts=float(i))
    book.forget(NAME)
    assert list((tmp_path / "acme").iterdir()) == []
    assert book.tail(NAME, 10) == []


def test_without_a_folder_only_memory(tmp_path: Path) -> None:
    book = LogBook(max_lines=2, folder=tmp_path, files=0)
    book.append(NAME, "r-1", "stderr", ["a", "b", "c"], ts=1.0)
    assert lines(book) == ["b", "c"]
    assert not any(tmp_path.iterdir())


def test_stored_lines_are_json(tmp_path: Path) -> None:
    book = LogBook(folder=tmp_path)
    book.append(NAME, "r-1", "stderr", ['say "hi"\x1b[31m'], ts=1.5)
    [raw] = (tmp_path / "acme" / "echo.jsonl").read_text().splitlines()
    assert json.loads(raw) == {
        "seq": 1,
        "ts": 1.5,
        "replica": "r-1",
        "stream": "stderr",
        "line": 'say "hi"\x1b[31m',
    }
