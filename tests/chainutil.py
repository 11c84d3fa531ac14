"""A real local chain for settlement tests: anvil (npm @foundry-rs/anvil) or mcpz's embedded EVM
(mcpz/local/evm.py, a subprocess) on a free loopback port, and helpers to deploy the committed contract
artifacts and send transactions with web3.

anvil is found through MCPZ_ANVIL, then contracts/node_modules (`npm ci --prefix contracts`, which .ci/run
does), then PATH. Tests that need it skip, saying how to install it, when it is missing (and fail in CI).
The embedded EVM comes with mcpz's dependencies; it answers the same dev methods the tests use
(`anvil_mine`, `evm_snapshot`, `evm_revert`) except `anvil_setBalance`, for which `fund` sends ether.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import mcpz.keys.ethkeys  # noqa: F401  (before web3: it keeps py_ecc's recursion limit out)
from mcpz.contracts import SETTLEMENT, TEST_TOKEN, load_artifact
from mcpz.keys.ethkeys import Account, LocalAccount

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "contracts" / "node_modules"
INSTALL_HINT = "anvil is not installed: run `npm ci --prefix contracts` (or set MCPZ_ANVIL to its path)"

CHAIN_ID = 31337
# Keys of our own, funded at start with anvil_setBalance: no test depends on anvil's default mnemonic.
KEYS = 3


def anvil_binary() -> Path | None:
    explicit = os.environ.get("MCPZ_ANVIL")
    if explicit:
        return Path(explicit)
    # The platform package's binary itself, not node_modules/.bin/anvil: that is a node wrapper, and
    # stopping the wrapper could leave the chain running.
    for candidate in sorted(MODULES.glob("@foundry-rs/anvil-*/bin/anvil")):
        if os.access(candidate, os.X_OK):
            return candidate
    wrapper = MODULES / ".bin" / "anvil"
    if wrapper.exists():
        return wrapper
    found = shutil.which("anvil")
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Anvil:
    """A running local chain: anvil, or the embedded EVM when `engine` is "evm"."""

    process: subprocess.Popen[bytes]
    rpc_url: str
    w3: Any
    keys: tuple[LocalAccount, ...]
    engine: str = "anvil"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def fund(self, address: str, wei: int = 10**20) -> None:
        if self.engine == "anvil":
            self.w3.provider.make_request("anvil_setBalance", [address, hex(wei)])
            return
        # The embedded EVM's dev accounts are unlocked and hold a million ether each.
        [dev, *_] = self.w3.eth.accounts
        tx_hash = self.w3.eth.send_transaction({"from": dev, "to": address, "value": wei})
        self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)

    def set_next_timestamp(self, timestamp: int) -> None:
        self.w3.provider.make_request("evm_setNextBlockTimestamp", [timestamp])


def start_anvil() -> Anvil:
    binary = anvil_binary()
    if binary is None:
        # In CI a missing chain must not pass as a skip: the settlement tests would silently stop running.
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(INSTALL_HINT)
        pytest.skip(INSTALL_HINT)
    return _start("anvil", [str(binary), "--silent"])


def start_evm() -> Anvil:
    """The embedded EVM, as `mcpz chain dev --engine evm` runs it."""
    return _start("evm", [sys.executable, "-m", "mcpz.local.evmserver"])


def _start(engine: str, command: list[str]) -> Anvil:
    web3 = pytest.importorskip("web3", reason="settlement tests need web3 (a dependency of mcpz)")
    last_error: Exception | None = None
    for _attempt in range(3):  # another process may take the free port between probe and bind
        port = _free_port()
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(CHAIN_ID),
             "--accounts", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        rpc_url = f"http://127.0.0.1:{port}"
        w3 = web3.Web3(web3.Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        deadline = time.monotonic() + 30
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if w3.eth.chain_id == CHAIN_ID:
                    keys = tuple(Account.create() for _ in range(KEYS))
                    chain = Anvil(process, rpc_url, w3, keys, engine)
                    for key in chain.keys:
                        chain.fund(key.address)
                    return chain
            except Exception as e:  # connection refused until the chain listens
                last_error = e
            time.sleep(0.05)
        process.kill()
        _, err = process.communicate()
        last_error = RuntimeError(
            f"{engine} did not start on port {port}: {err.decode(errors='replace')[-500:]}"
        )
    raise RuntimeError(str(last_error))


def transact(anvil: Anvil, call: Any, sender: LocalAccount, gas: int | None = None) -> Any:
    """Sign `call` (a contract function bound to its arguments, or a deployment) with `sender`'s key, send
    it and wait for its receipt. A revert surfaces as web3's ContractCustomError from gas estimation."""
    w3 = anvil.w3
    params: dict[str, Any] = {
        "from": sender.address,
        "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
        "chainId": CHAIN_ID,
    }
    if gas is not None:
        params["gas"] = gas
    tx = call.build_transaction(params)
    signed = sender.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.01)
    assert receipt["status"] == 1, f"transaction reverted: {receipt}"
    return receipt


def error_selector(abi: Sequence[dict[str, Any]], name: str) -> str:
    from web3 import Web3

    entry = next(e for e in abi if e.get("type") == "error" and e["name"] == name)
    signature = f"{name}({','.join(i['type'] for i in entry['inputs'])})"
    return "0x" + Web3.keccak(text=signature)[:4].hex()


@dataclass
class Settlement:
    """A fresh TestToken and McpzSettlement: admin is the chain's key 0, operator key 1, `user` key 2."""

    anvil: Anvil
    token: Any
    contract: Any
    admin: LocalAccount
    operator: LocalAccount
    user: LocalAccount
    abi: list[dict[str, Any]] = field(default_factory=list)

    def send(self, call: Any, sender: LocalAccount) -> Any:
        return transact(self.anvil, call, sender)

    def reverts(self, error: str, call: Any, sender: LocalAccount) -> None:
        """`call` from `sender` is refused with the contract's custom error `error`."""
        from web3.exceptions import ContractCustomError

        with pytest.raises(ContractCustomError) as caught:
            transact(self.anvil, call, sender)
        data = caught.value.data if isinstance(caught.value.data, str) else str(caught.value.data)
        assert data.startswith(error_selector(self.abi, error)), f"expected {error}, got {data}"

    def events(self, receipt: Any, name: str) -> list[Any]:
        """The contract's `name` events in `receipt` (the token's own logs are skipped, not warned about)."""
        from web3.logs import DISCARD

        return list(getattr(self.contract.events, name)().process_receipt(receipt, errors=DISCARD))

    def mint(self, to: str, amount: int) -> None:
        self.send(self.token.functions.mint(to, amount), self.admin)

    def new_account(self) -> LocalAccount:
        account: LocalAccount = Account.create()
        self.anvil.fund(account.address)
        return account

    def balance(self, address: str) -> int:
        value: int = self.token.functions.balanceOf(address).call()
        return value

    def deposit(self, sender: LocalAccount, account: str, amount: int) -> Any:
        self.mint(sender.address, amount)
        self.send(self.token.functions.approve(self.contract.address, amount), sender)
        return self.send(self.contract.functions.deposit(account, amount), sender)


def deploy(anvil: Anvil, sender: LocalAccount, artifact_name: str, *args: Any) -> Any:
    artifact = load_artifact(artifact_name)
    factory = anvil.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = transact(anvil, factory.constructor(*args), sender)
    return anvil.w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)


def deploy_settlement(anvil: Anvil) -> Settlement:
    admin, operator, user = anvil.keys
    token = deploy(anvil, admin, TEST_TOKEN)
    contract = deploy(anvil, admin, SETTLEMENT, token.address, admin.address, operator.address)
    return Settlement(anvil, token, contract, admin, operator, user, abi=load_artifact(SETTLEMENT).abi)


class Miner:
    """Mines a block every few moments while the command waits, as a live chain would."""

    def __init__(self, settlement: Settlement) -> None:
        self.settlement = settlement
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            self.settlement.anvil.w3.provider.make_request("anvil_mine", ["0x1"])

    def __enter__(self) -> Miner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


# --- a live registry settling on the chain, and the user's wallet ----------------------------------

WALLET_PASSPHRASE = "Quiet-Harbour-Lamp-41"


def settlement_registry(data_dir: Path, settlement: Settlement, confirmations: int, **settings: Any) -> Any:
    """A live registry (conftest.start_registry) watching `settlement`'s contract; the caller stops it.
    Its operator key, if any, comes from MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY (monkeypatch it)."""
    from conftest import start_registry

    return start_registry(
        data_dir,
        settlement_rpc=settlement.anvil.rpc_url,
        settlement_chain_id=CHAIN_ID,
        settlement_contract=settlement.contract.address,
        settlement_confirmations=confirmations,
        settlement_poll_interval=0.1,
        **settings,
    )


def user_wallet(
    monkeypatch: pytest.MonkeyPatch, settlement: Settlement, key: LocalAccount | None = None
) -> LocalAccount:
    """The user's own wallet, as `mcpz wallet create` keeps it (unlocked by MCPZ_WALLET_PASSPHRASE),
    with gas money on the chain and no tokens yet."""
    from mcpz.keys.wallet import Wallet

    monkeypatch.setenv("MCPZ_WALLET_SCRYPT_N", "1024")
    monkeypatch.setenv("MCPZ_WALLET_PASSPHRASE", WALLET_PASSPHRASE)
    account: LocalAccount = key or Account.create()
    Wallet.import_key(account.key.hex(), WALLET_PASSPHRASE)
    settlement.anvil.fund(account.address)
    return account


def settlement_chain(settlement: Settlement) -> Any:
    """The registry's view of `settlement`'s contract (registry_server.settlement.chain)."""
    from registry_server.settlement.chain import SettlementChain

    return SettlementChain(settlement.anvil.rpc_url, settlement.contract.address, CHAIN_ID)
