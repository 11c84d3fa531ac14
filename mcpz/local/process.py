"""How an agent folder is started: its `[run] command`, environment and working folder.

`agent_process` turns a folder's manifest into the exact process to start, and says what is
wrong (a plugin, a missing program) before anything runs. `run_agent` starts that process in
the foreground with stdio passed through, as `mcpz run` does.

A command whose first word is `python` or `python3` runs under the interpreter that runs
mcpz (`sys.executable`), so an agent written with the `mcp` SDK runs wherever mcpz is
installed, virtual environment or not.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from mcpz.errors import AgentError, UsageError
from mcpz.manifest import MANIFEST_FILE, Manifest, load_manifest

logger = logging.getLogger(__name__)

PYTHON_WORDS = ("python", "python3")


@dataclass(frozen=True)
class AgentProcess:
    """The process that serves an agent: what `mcpz run` starts and the MCP client talks to."""

    name: str
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(repr=False)

    @property
    def display(self) -> str:
        """The command as written in the manifest, for messages."""
        return " ".join(self.argv)


def agent_process(
    folder: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    manifest: Manifest | None = None,
) -> AgentProcess:
    """Resolve the agent in `folder` to the process that serves it.

    `env` is the environment to start from (default: `os.environ`); the manifest's
    `[run] env` is merged over it. Raises ManifestError for a missing or invalid manifest,
    UsageError for a plugin, AgentError when the program cannot be found.
    """
    path = Path(folder).resolve()
    if not path.is_dir():
        problem = "is not a folder" if path.exists() else "does not exist"
        raise UsageError(f"{folder} {problem}", hint="give the path of an agent's folder")
    if manifest is None:
        manifest = load_manifest(path)
    if manifest.run is None:
        raise UsageError(
            f"{manifest.name} is a plugin: agents import it, it is not run on its own",
            hint="run an agent that depends on it instead",
        )
    merged = dict(os.environ if env is None else env)
    merged.update(manifest.run.env)
    first, *rest = manifest.run.command
    program = _find_program(first, path, merged, manifest.name)
    return AgentProcess(name=manifest.name, argv=(program, *rest), cwd=path, env=merged)


def _find_program(word: str, cwd: Path, env: Mapping[str, str], name: str) -> str:
    if word in PYTHON_WORDS:
        return sys.executable
    hint = f"install it, or fix [run].command in {MANIFEST_FILE}"
    if os.sep in word or (os.altsep is not None and os.altsep in word):
        candidate = cwd / word
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        problem = "is not executable" if candidate.is_file() else "does not exist"
        raise AgentError(f'cannot start {name}: command "{word}" {problem} in {cwd}', hint=hint)
    found = shutil.which(word, path=env.get("PATH", os.defpath))
    if found is None:
        raise AgentError(f'cannot start {name}: command "{word}" not found on PATH', hint=hint)
    return found


def run_agent(
    folder: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run the agent in `folder` in the foreground, stdio passed through; return its exit code.

    `args` are appended to the manifest's command. A process ended by a signal returns
    128 + the signal number, as a shell reports it. Ctrl-C reaches the agent (it shares the
    terminal) and mcpz waits for the agent to exit; a SIGTERM sent to mcpz is forwarded.
    """
    process = agent_process(folder, env=env)
    argv = [*process.argv, *args]
    logger.info("starting %s: %s (in %s)", process.name, " ".join(argv), process.cwd)
    try:
        child = subprocess.Popen(argv, cwd=process.cwd, env=dict(process.env))
    except OSError as e:
        raise AgentError(
            f"cannot start {process.name}: {e.strerror or e}",
            hint=f"check [run].command in {MANIFEST_FILE}",
        ) from e
    with _forward_sigterm(child):
        while True:
            try:
                code = child.wait()
                break
            except KeyboardInterrupt:
                # The agent got the same Ctrl-C from the terminal: let it decide when to stop.
                continue
    return 128 - code if code < 0 else code


@contextmanager
def _forward_sigterm(child: subprocess.Popen[bytes]) -> Iterator[None]:
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, frame: FrameType | None) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
