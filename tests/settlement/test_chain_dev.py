"""`mcpz chain dev` as a user runs it: a subprocess that prints the chain's settings, serves a chain
with the contracts deployed, and stops cleanly (exit 0, the chain gone) on Ctrl-C; on anvil and on the
embedded EVM, with the same settings."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from chainutil import INSTALL_HINT, _free_port, anvil_binary

from mcpz.contracts import SETTLEMENT, TEST_TOKEN, load_artifact

pytestmark = pytest.mark.slow


def read_json_object(process: subprocess.Popen[str]) -> dict[str, object]:
    """The first JSON object on `process`'s stdout (printed indented, so up to its closing line)."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.rstrip() == "}":
            break
    data: dict[str, object] = json.loads("".join(lines))
    return data


@pytest.mark.parametrize("engine", ["anvil", "evm"])
def test_chain_dev_serves_the_contracts_and_stops_on_ctrl_c(engine: str) -> None:
    env = dict(os.environ)
    if engine == "anvil":
        binary = anvil_binary()
        if binary is None:
            pytest.skip(INSTALL_HINT)
        env["MCPZ_ANVIL"] = str(binary)
    web3 = pytest.importorskip("web3")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mcpz", "chain", "dev", "--json", "--port", str(port), "--engine", engine],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        info = read_json_object(process)
        assert info["rpc_url"] == f"http://127.0.0.1:{port}" and info["chain_id"] == 31337
        assert info["engine"] == engine
        # anvil's development keys and so its contract addresses, whichever engine runs.
        assert info["contract"] == "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
        w3 = web3.Web3(web3.Web3.HTTPProvider(str(info["rpc_url"])))
        contract = w3.eth.contract(address=info["contract"], abi=load_artifact(SETTLEMENT).abi)
        assert contract.functions.token().call() == info["token"]
        token = w3.eth.contract(address=info["token"], abi=load_artifact(TEST_TOKEN).abi)
        keys = info["keys"]
        assert isinstance(keys, list) and len(keys) >= 2
        for key in keys:
            assert token.functions.balanceOf(key["address"]).call() == key["tokens"] > 0
            assert w3.eth.get_balance(key["address"]) > 0  # gas for deposits
            assert w3.eth.account.from_key(key["private_key"]).address == key["address"]
        settings = info["env"]
        assert (
            isinstance(settings, dict) and settings["MCPZ_REGISTRY_SETTLEMENT_CONTRACT"] == info["contract"]
        )
        # x402's relayer: an account of its own (not the operator's, not a test key), with gas money.
        relayer = w3.eth.account.from_key(settings["MCPZ_REGISTRY_SETTLEMENT_RELAYER_KEY"]).address
        assert relayer == info["relayer"] != info["operator"]
        assert relayer not in {key["address"] for key in keys}
        assert w3.eth.get_balance(relayer) > 0

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""
        assert f"({engine})" in (process.stderr.read() if process.stderr else "")
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the chain is stopped with it
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_chain_dev_without_anvil_says_how_to_install_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-anvil-here"
    process = subprocess.run(
        [sys.executable, "-m", "mcpz", "chain", "dev", "--port", str(_free_port())],
        capture_output=True,
        text=True,
        env={**os.environ, "MCPZ_ANVIL": str(missing)},
        timeout=60,
    )
    assert process.returncode == 2
    assert f"anvil is not installed at {missing}" in process.stderr
    assert "npm ci --prefix contracts" in process.stderr


def test_an_unknown_engine_is_a_usage_error() -> None:
    process = subprocess.run(
        [sys.executable, "-m", "mcpz", "chain", "dev", "--engine", "ganache", "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 2
    assert "unknown chain engine 'ganache'" in process.stderr and "auto, anvil, evm" in process.stderr
    assert "Traceback" not in process.stderr


def test_the_embedded_evm_says_when_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.run(
            [sys.executable, "-m", "mcpz", "chain", "dev", "--engine", "evm", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert process.returncode == 2
    assert f"port {port} is in use" in process.stderr.splitlines()[0]
