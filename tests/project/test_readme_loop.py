"""The README's loop, run exactly as written: its code block, extracted from README.md, in a shell.

The block is taken from README.md on every run (there is no second copy): the one `bash` block
under "## The loop". Two things differ from a user's terminal, both outside the block: the
registry's port 8080 becomes a free port (so the test never collides with anything on 8080), and the
wallet passphrase comes from MCPZ_WALLET_PASSPHRASE because stdin is not a terminal (the README says
so). Background commands run as the README starts them (`&`), and the README's own last line stops
them; a trap and a process-group kill clean up whatever a failure leaves behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PORT = "8080"


def readme_loop() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## The loop\n", 1)
    assert len(section) == 2, 'README.md has a "## The loop" section'
    block = re.search(r"```bash\n(.*?)```", section[1], re.S)
    assert block, "the loop section holds a bash block"
    return block.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_loop_names_every_step_of_the_issue() -> None:
    loop = readme_loop()
    for step in (
        "mcpz registry serve",
        "login --wallet",
        "namespace create",
        "\ncd ",
        "mcpz push",
        "keys create --scope node",
        "mcpz node run",
        "mcpz deploy",
        "mcpz call acme/weather",
        "mcpz usage",
    ):
        assert step in loop, step
    assert PORT in loop
    assert "registry token create" not in loop, "the loop needs no operator"


@pytest.mark.slow
def test_the_readme_loop_runs_as_written(tmp_path: Path) -> None:
    loop = readme_loop().replace(PORT, str(free_port()))
    script = (
        # Cleanup only: whatever the block started and did not stop (it stops both itself).
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\nset -euo pipefail\n" + loop
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPZ_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(tmp_path / "home"),
        MCPZ_CONFIG_DIR=str(tmp_path / "config"),
        MCPZ_DATA_DIR=str(tmp_path / "data"),
        MCPZ_CACHE_DIR=str(tmp_path / "cache"),
        MCPZ_WALLET_PASSPHRASE="correct horse battery staple",
        MCPZ_WALLET_SCRYPT_N=str(2**10),  # a throwaway key: cheap to unlock
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        NO_COLOR="1",
        COLUMNS="100",
        GIT_CONFIG_GLOBAL=os.environ["GIT_CONFIG_GLOBAL"],
        GIT_CONFIG_NOSYSTEM="1",
    )
    (tmp_path / "home").mkdir()
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"the README loop did not finish in 300 s\n{stdout}\n{stderr[-4000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"stdout:\n{stdout}\nstderr:\n{stderr[-6000:]}"
    lines = stdout.splitlines()
    # The local call and the call through the gateway both answered 42.
    assert lines.count("42") == 2, stdout
    assert "published acme/weather 0.1.0" in stdout
    assert "acme/weather 0.1.0 is published from this commit" in stdout
    assert re.search(r"acme/weather\s+add\s+1\b", stdout), stdout
    assert "FAIL" not in stdout
    assert "Traceback" not in stderr
    # What the loop left behind: an agent folder, a registry data folder, a node's.
    assert (work / "weather" / "mcpz.toml").is_file()
    assert (work / "registry-data").is_dir() and (work / "node-data").is_dir()
