"""A local settlement chain for development: the test token and McpzSettlement deployed on anvil, or
on the embedded EVM where anvil is not installed.

`start_dev_chain` starts a chain on loopback with anvil's well-known development accounts: anvil (npm
`@foundry-rs/anvil`) where it is found, else mcpz's embedded EVM (mcpz/local/evm.py: eth-tester on
py-evm, from PyPI, in a process of its own), which takes the same command-line options. It deploys
TestToken and McpzSettlement from the committed artifacts (account 0 is admin and operator), and mints
test tokens to the first accounts. Everything is plain JSON-RPC over httpx2: the accounts are unlocked,
so the chain signs the transactions itself and no key library is needed, and the keys come from the
chain's own `--config-out`. Never point this at a chain with real money: the keys are public.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from mcpz.bundled import bundled_path
from mcpz.contracts import SETTLEMENT, TEST_TOKEN, load_artifact
from mcpz.errors import McpzError, UsageError
from mcpz.jsonrpc import JsonRpc

CHAIN_ID = 31337
DEFAULT_PORT = 8545
TEST_ACCOUNTS = 3
MINT = 10_000 * 10**6  # test tokens per account, in base units (6 decimals)
CONFIRMATIONS = 2  # what a local chain needs: it mines a block per transaction and never reorganises
INSTALL_HINT = (
    "install it with `npm ci --prefix contracts` in an mcpz checkout, or set MCPZ_ANVIL to its path"
)
EVM_HINT = "install mcpz with its dependencies (eth-tester[py-evm]), or install anvil: " + INSTALL_HINT
START_TIMEOUT = 30.0
ENGINES = ("auto", "anvil", "evm")
Engine = Literal["auto", "anvil", "evm"]


@dataclass(frozen=True)
class TestKey:
    address: str
    private_key: str
    tokens: int  # test tokens minted to it, base units


@dataclass
class DevChain:
    rpc_url: str
    chain_id: int
    contract: str
    token: str
    operator: str
    keys: list[TestKey]
    engine: str  # "anvil" or "evm": the one that runs
    _process: subprocess.Popen[bytes] = field(repr=False)
    # x402's relayer (docs/x402.md): a development account of its own, with the chain's gas money and
    # no tokens, so that its settlements never take the operator's nonces.
    relayer: str = ""
    relayer_key: str = field(default="", repr=False)

    def settings(self) -> dict[str, Any]:
        """What `mcpz chain dev --json` prints: the chain, the contracts, the funded test keys."""
        return {
            "rpc_url": self.rpc_url,
            "chain_id": self.chain_id,
            "contract": self.contract,
            "token": self.token,
            "engine": self.engine,
            "decimals": 6,
            "operator": self.operator,
            "relayer": self.relayer,
            "confirmations": CONFIRMATIONS,
            "keys": [
                {"address": k.address, "private_key": k.private_key, "tokens": k.tokens} for k in self.keys
            ],
            "env": self.env(),
        }

    def env(self) -> dict[str, str]:
        """The registry settings that watch this chain (the operator key is the chain's account 0, the
        x402 relayer's the account after the test keys)."""
        env = {
            "MCPZ_REGISTRY_SETTLEMENT_RPC": self.rpc_url,
            "MCPZ_REGISTRY_SETTLEMENT_CHAIN_ID": str(self.chain_id),
            "MCPZ_REGISTRY_SETTLEMENT_CONTRACT": self.contract,
            "MCPZ_REGISTRY_SETTLEMENT_CONFIRMATIONS": str(CONFIRMATIONS),
            "MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY": self.keys[0].private_key,
        }
        if self.relayer_key:
            env["MCPZ_REGISTRY_SETTLEMENT_RELAYER_KEY"] = self.relayer_key
        return env

    def give(self, address: str, *, wei: int = 0, tokens: int = 0) -> None:
        """Send `wei` of gas money from the admin account and mint `tokens` test tokens (base units)
        to `address`: what a faucet does on a test network."""
        from eth_abi.abi import encode
        from eth_utils.address import to_checksum_address
        from eth_utils.crypto import keccak

        rpc = _Rpc(self.rpc_url)
        try:
            to = to_checksum_address(address)
            if wei:
                _send(rpc, self.operator, "0x", to=to, value=wei)
            if tokens:
                mint = keccak(text="mint(address,uint256)")[:4] + encode(["address", "uint256"], [to, tokens])
                _send(rpc, self.operator, "0x" + mint.hex(), to=self.token)
        finally:
            rpc.close()

    def mine(self, blocks: int) -> None:
        """Mine `blocks` empty blocks: what a live chain does over time, for confirmations and finality."""
        rpc = _Rpc(self.rpc_url)
        try:
            rpc("anvil_mine", hex(blocks))
        finally:
            rpc.close()

    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


def find_anvil(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """anvil from MCPZ_ANVIL, PATH, or contracts/node_modules (of the current folder, then of mcpz's
    own checkout)."""
    env = os.environ if env is None else env
    if env.get("MCPZ_ANVIL"):
        return Path(env["MCPZ_ANVIL"])
    found = shutil.which("anvil", path=env.get("PATH"))
    if found:
        return Path(found)
    for contracts in ((cwd or Path.cwd()) / "contracts", bundled_path("contracts")):
        modules = contracts / "node_modules"
        # The platform package's binary, not node_modules/.bin/anvil: that is a node wrapper, and
        # stopping the wrapper could leave the chain running.
        for candidate in sorted(modules.glob("@foundry-rs/anvil-*/bin/anvil")):
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def evm_available() -> bool:
    """The embedded EVM's packages are installed (looked up, not imported: that takes a second)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("eth_tester", "eth"))


def pick_engine(engine: Engine = "auto", env: Mapping[str, str] | None = None) -> tuple[str, Path | None]:
    """The engine to run and anvil's binary when it is anvil: `auto` takes anvil when it is found."""
    if engine not in ENGINES:
        raise UsageError(f"unknown chain engine {engine!r}", hint="use one of: " + ", ".join(ENGINES))
    binary = find_anvil(env) if engine != "evm" else None
    if engine == "anvil" or (engine == "auto" and binary is not None):
        if binary is None:
            raise UsageError("anvil is not installed", hint=INSTALL_HINT)
        if not os.access(binary, os.X_OK):
            raise UsageError(f"anvil is not installed at {binary} (MCPZ_ANVIL)", hint=INSTALL_HINT)
        return "anvil", binary
    if not evm_available():
        if engine == "auto":
            raise UsageError(
                "no local chain can run here: anvil is not installed, nor eth-tester", hint=EVM_HINT
            )
        raise UsageError("the embedded EVM needs eth-tester[py-evm], which is not installed", hint=EVM_HINT)
    return "evm", None


def start_dev_chain(
    port: int = DEFAULT_PORT,
    *,
    accounts: int = TEST_ACCOUNTS,
    env: Mapping[str, str] | None = None,
    engine: Engine = "auto",
) -> DevChain:
    """Start a chain on 127.0.0.1:`port` (anvil, or the embedded EVM: `pick_engine`), deploy the
    contracts, fund `accounts` test keys. The caller stops it (`DevChain.stop`)."""
    name, binary = pick_engine(engine, env)
    options = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--chain-id",
        str(CHAIN_ID),
        "--accounts",
        str(max(accounts, 1) + 1),
    ]  # fmt: skip  (the last: x402's relayer)
    if name == "anvil":
        command = [str(binary), *options, "--silent"]
    else:
        command = [sys.executable, "-m", "mcpz.local.evmserver", *options]
    # The chain's errors go to a file, not a pipe: nobody reads a pipe while the chain runs, and a
    # full one would stall it.
    errors = tempfile.TemporaryFile()
    with tempfile.TemporaryDirectory(prefix="mcpz-chain-") as tmp:
        config = Path(tmp) / "accounts.json"
        try:
            process = subprocess.Popen(
                [*command, "--config-out", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        except OSError as e:
            raise UsageError(f"cannot run anvil at {binary}: {e.strerror}", hint=INSTALL_HINT) from None
        try:
            rpc = _Rpc(f"http://127.0.0.1:{port}")
            _wait_ready(name, process, rpc, config, port, errors)
            started = json.loads(config.read_text(encoding="utf-8"))
            return _deploy(name, process, rpc, started, accounts)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            errors.close()


class _Rpc(JsonRpc):
    def __init__(self, url: str) -> None:
        super().__init__(url, f"the local chain at {url}")


def _wait_ready(
    name: str, process: subprocess.Popen[bytes], rpc: _Rpc, config: Path, port: int, errors: IO[bytes]
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            errors.seek(0)
            err = errors.read().decode(errors="replace")
            if "in use" in err.lower():
                raise UsageError(f"port {port} is in use", hint="pass another one with --port")
            last = err.strip().splitlines()[-1] if err.strip() else f"exit code {process.returncode}"
            raise McpzError(f"{_label(name)} stopped at start: {last[:200]}")
        if config.exists() and config.stat().st_size > 0:
            try:
                if int(rpc("eth_chainId"), 16) == CHAIN_ID:
                    return
            except (McpzError, ValueError, TypeError):
                pass  # not listening yet
        time.sleep(0.05)
    raise McpzError(f"{_label(name)} did not answer on port {port} within {START_TIMEOUT:g} s")


def _label(engine: str) -> str:
    return "anvil" if engine == "anvil" else "the embedded EVM"


def _send(rpc: _Rpc, sender: str, data: str, to: str | None = None, value: int = 0) -> dict[str, Any]:
    tx: dict[str, Any] = {"from": sender, "data": data}
    if to is not None:
        tx["to"] = to
    if value:
        tx["value"] = hex(value)
    tx_hash = rpc("eth_sendTransaction", tx)
    for _ in range(200):  # the chain mines each transaction at once; the receipt may trail by a moment
        receipt = rpc("eth_getTransactionReceipt", tx_hash)
        if receipt is not None:
            if int(receipt["status"], 16) != 1:
                raise McpzError(f"a set-up transaction of the local chain reverted: {tx_hash}")
            return receipt  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise McpzError(f"the local chain mined no receipt for {tx_hash}")


def _deploy(
    engine: str, process: subprocess.Popen[bytes], rpc: _Rpc, started: dict[str, Any], accounts: int
) -> DevChain:
    from eth_abi.abi import encode
    from eth_utils.address import to_checksum_address
    from eth_utils.crypto import keccak

    addresses = [to_checksum_address(a) for a in started["available_accounts"]]
    private_keys = list(started["private_keys"])
    admin = addresses[0]
    token_receipt = _send(rpc, admin, load_artifact(TEST_TOKEN).bytecode)
    token = to_checksum_address(token_receipt["contractAddress"])
    args = encode(["address", "address", "address"], [token, admin, admin])
    settlement_receipt = _send(rpc, admin, load_artifact(SETTLEMENT).bytecode + args.hex())
    contract = to_checksum_address(settlement_receipt["contractAddress"])
    mint = keccak(text="mint(address,uint256)")[:4]
    keys = []
    funded = max(accounts, 1)
    for address, key in list(zip(addresses, private_keys, strict=True))[:funded]:
        _send(rpc, admin, "0x" + (mint + encode(["address", "uint256"], [address, MINT])).hex(), to=token)
        keys.append(TestKey(address=address, private_key=key, tokens=MINT))
    rpc.close()
    # The account after the test keys relays x402 payments: the chain gave it gas money, no tokens.
    relayer, relayer_key = (addresses[funded], private_keys[funded]) if len(addresses) > funded else ("", "")
    return DevChain(
        rpc_url=rpc.url,
        chain_id=CHAIN_ID,
        contract=contract,
        token=token,
        operator=admin,
        keys=keys,
        engine=engine,
        _process=process,
        relayer=relayer,
        relayer_key=relayer_key,
    )
