"""A bare repository of a given number of objects, a share of them unreachable: what gc has to chew.

Built with `git fast-import` (seconds for 100,000 objects): `main` gets one commit per file, the
files spread over folders of 100, so each commit adds five objects (blob, two folder trees, root tree,
commit); a branch `junk` forks from main's tip with its own commits and is then deleted, which
leaves its objects unreachable. Shared by tests/maintenance and bench/bench_gc.py.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

OBJECTS_PER_COMMIT = 5


def build_repo(
    path: Path, objects: int, unreachable: float, *, seed: int = 1, packs: int = 1
) -> dict[str, int]:
    """Make the bare repository at `path`; returns how many objects are reachable and unreachable.

    `packs` > 1 imports main in that many parts, one pack each, as a history of pushes leaves it.
    """
    rng = random.Random(seed)
    commits = max(2, objects // OBJECTS_PER_COMMIT)
    junk = max(1, round(commits * unreachable))
    main = commits - junk
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    stream: list[bytes] = []
    when = 1_700_000_000

    def add_commit(ref: str, number: int, prefix: str, start_from: str | None) -> None:
        nonlocal when
        when += 1
        text = f"{prefix} {number} {rng.getrandbits(128):032x}\n".encode() * 3
        message = f"{prefix} {number}\n".encode()
        stream.append(b"commit %s\ncommitter Bench <bench@example.com> %d +0000\n" % (ref.encode(), when))
        stream.append(b"data %d\n%s" % (len(message), message))
        if start_from is not None:
            stream.append(f"from {start_from}\n".encode())
        stream.append(b"M 100644 inline %s/d%04d/f%06d.txt\n" % (prefix.encode(), number // 100, number))
        stream.append(b"data %d\n%s\n" % (len(text), text))

    parts = max(1, packs)
    for part in range(parts):
        for i in range(main * part // parts, main * (part + 1) // parts):
            first_of_later_part = part > 0 and i == main * part // parts
            add_commit("refs/heads/main", i, "src", "refs/heads/main^0" if first_of_later_part else None)
        if part < parts - 1:
            _import(path, stream)
            stream.clear()
    for i in range(junk):
        add_commit("refs/heads/junk", i, "junk", "refs/heads/main" if i == 0 else None)
    _import(path, stream)
    subprocess.run(["git", "update-ref", "-d", "refs/heads/junk"], cwd=path, check=True)
    subprocess.run(["git", "tag", "v1.0.0", f"main~{main // 2}"], cwd=path, check=True, env=_git_env())
    return {"reachable": main * OBJECTS_PER_COMMIT, "unreachable": junk * OBJECTS_PER_COMMIT}


def _import(path: Path, stream: list[bytes]) -> None:
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=path, input=b"".join(stream), check=True, env=_git_env()
    )


def age(path: Path, seconds: float = 30 * 86400) -> None:
    """Make every file under `path`'s objects look `seconds` old (past the default grace period)."""
    moment = time.time() - seconds
    for file in (path / "objects").rglob("*"):
        if file.is_file():
            os.utime(file, (moment, moment))


def _git_env() -> dict[str, str]:
    return {
        **os.environ,
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
    }
