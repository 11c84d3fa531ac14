"""Folders and files only their owner may read, whatever the process umask.

`mkdir(mode=...)` and `open(..., mode)` are both filtered by the umask, which may be 0o000 (then
0o777 folders) or may strip the owner's own bits; so the mode is set explicitly after creation.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) and make it 0700: it holds secrets or a database."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty if missing, and make it 0600 (an existing file keeps its content)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path
