"""The `mcpz` command: a thin typer layer over the library.

`main` answers `mcpz --version` before importing typer, so that the commonest probe of an
installed tool costs one interpreter start and nothing more; `status`, `log` and `diff` take the
typer-free fast path of `cli/fast.py` when their arguments are plain.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from mcpz._version import __version__

        sys.stdout.write(f"mcpz {__version__}\n")
        return
    from mcpz.cli import fast

    code = fast.run(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from mcpz.cli.app import app

    app()
