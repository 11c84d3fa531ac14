"""A full run's logs: one JSON object per line, no ANSI codes, and none of the secrets it used.

Registry and node are real processes; a wallet is created and signs in with a passphrase, publishes,
mints a node key and a call key; the node runs the agent, which the gateway calls with both the
login token and the call key. Then every log the run left is read (the registry's stderr, the
node's, the replica log files on the node and the registry's log history) and grepped for every
token and the passphrase.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from meshutil import until
from registryproc import RegistryProcess

PASSPHRASE = "tangerine orbit 7 velvet"
AGENT = "acme/weather"
MARKER = "echo asked for"


@pytest.mark.slow
def test_a_full_run_logs_json_lines_without_secrets(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        MCPZ_WALLET_PASSPHRASE=PASSPHRASE,
        MCPZ_WALLET_SCRYPT_N=str(2**10),  # a throwaway key: cheap to unlock
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",  # the token lands in a file we read
    )
    registry = RegistryProcess((tmp_path / "registry-data").resolve(), tmp_path / "registry.log", env={})
    transcripts: list[str] = []

    def mcpz(*args: str, cwd: Path = tmp_path, extra: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mcpz", *args],
            cwd=cwd,
            env=env | (extra or {}),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        transcripts.append(done.stderr)
        assert done.returncode == 0, f"mcpz {' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    node: subprocess.Popen[bytes] | None = None
    node_log = tmp_path / "node.log"
    registry.start()
    try:
        mcpz("login", "--wallet", "--create-wallet", "--registry", registry.url)
        env["MCPZ_REGISTRY"] = registry.url
        credentials = Path(env["MCPZ_CONFIG_DIR"]) / "credentials.toml"
        login_token = tomllib.loads(credentials.read_text())["tokens"][registry.url]
        mcpz("namespace", "create", "acme")
        mcpz("init", "weather", "--name", AGENT, "--template", "python")
        work = tmp_path / "weather"
        server = work / "server.py"
        # The replica writes a line to stderr on each call: the replica logs have something in them.
        server.write_text(
            server.read_text().replace(
                '    """Return the text unchanged: the smallest possible tool."""\n',
                '    """Return the text unchanged: the smallest possible tool."""\n'
                f'    import sys\n\n    print("{MARKER}", len(text), file=sys.stderr, flush=True)\n',
            )
        )
        mcpz("commit", "-m", "say something on stderr", cwd=work)
        mcpz("push", cwd=work)
        node_token = mcpz("keys", "create", "--scope", "node", "--name", "n1").strip()
        call_token = mcpz("keys", "create", "--scope", "call", "--name", "c1").strip()
        assert node_token and call_token
        with node_log.open("wb") as out:
            node = subprocess.Popen(
                [sys.executable, "-m", "mcpz", "--json", "node", "run", "--name", "n1",
                 "--data", str(tmp_path / "node-data")],
                env=env | {"MCPZ_TOKEN": node_token},
                # stdout is the command's result (a JSON document once it stops); its log is stderr.
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=out,
            )  # fmt: skip
        mcpz("deploy", f"{AGENT}@0.1.0", "--wait", "--timeout", "60")
        assert "hello" in mcpz("call", AGENT, "echo", "text=hello")
        assert "again" in mcpz("call", AGENT, "echo", "text=again", extra={"MCPZ_TOKEN": call_token})
        until(lambda: mcpz("logs", AGENT).count(MARKER) >= 2, 30, "the replica's lines on the registry")
    finally:
        if node is not None:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        registry.stop()

    secrets = {"passphrase": PASSPHRASE, "login token": login_token, "node token": node_token,
               "call token": call_token}  # fmt: skip
    replica_files = sorted((tmp_path / "node-data" / "logs").glob("*.jsonl*"))
    history_files = sorted((tmp_path / "registry-data" / "logs").rglob("*.jsonl*"))
    assert replica_files and history_files
    logs = {
        "registry": registry.log.read_text(),
        "node": node_log.read_text(),
        **{f"replica log {p.name}": p.read_text() for p in replica_files},
        **{f"registry history {p.name}": p.read_text() for p in history_files},
        **{f"command {i}": text for i, text in enumerate(transcripts)},
    }
    assert sum(text.count(MARKER) for name, text in logs.items() if name.startswith("replica")) >= 2
    for name, text in logs.items():
        for what, secret in secrets.items():
            assert secret not in text, f"the {what} is in the {name} log"
        assert "\x1b[" not in text, f"an ANSI escape code in the {name} log"
    # The registry's request lines say whose request it was and for which agent.
    requests = [json.loads(line) for line in logs["registry"].splitlines() if '"msg": "request"' in line]
    assert all(r["request_id"] for r in requests)
    deploy = [r for r in requests if (r["method"], r["path"]) == ("POST", "/v1/deployments")]
    assert deploy and all(r.get("account") and r.get("agent") == AGENT for r in deploy), deploy
    pushes = [r for r in requests if r["path"].endswith("/git-receive-pack")]
    assert pushes and all(r.get("agent") == AGENT and r.get("account") for r in pushes), pushes
    for name in ("registry", "node", *[n for n in logs if n.startswith(("replica", "registry history"))]):
        for line in logs[name].splitlines():
            try:
                assert isinstance(json.loads(line), dict)
            except (ValueError, AssertionError):
                pytest.fail(f"a line of the {name} log is not a JSON object: {line!r}")
