"""The user's wallet: one Ethereum key, kept encrypted as a standard JSON keystore (Web3 Secret Storage v3).

The keystore lives at `<user data folder>/wallet/keystore.json` (mode 0600, written atomically),
in the format geth, MetaMask exports and eth-account read, so the key can move to and from other
wallets. Its address is readable without the passphrase; the key is only decrypted to sign.

The passphrase comes from, in order: `MCPZ_WALLET_PASSPHRASE`, the OS keyring (service
`mcpz-wallet`, user = the wallet's address; stored there by `create --remember`), or a prompt
the caller supplies (the CLI prompts only when stdin is a terminal). Never from an argument.
Keys and passphrases are never logged, and errors about them never quote them.

New keystores use scrypt with n = 2**18 (geth's "standard" cost, about a second per unlock);
`MCPZ_WALLET_SCRYPT_N` lowers it for throwaway wallets in tests and demos.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils.address import is_address, to_checksum_address

from mcpz.config import data_dir
from mcpz.errors import AuthError, UsageError
from mcpz.keys.ethkeys import Account, LocalAccount

__all__ = [
    "KEYRING_SERVICE",
    "PASSPHRASE_ENV",
    "SCRYPT_N_ENV",
    "InvalidKeystore",
    "KeyProvider",
    "NoPassphrase",
    "NoWallet",
    "Wallet",
    "WalletExists",
    "WrongPassphrase",
    "forget_passphrase",
    "get_passphrase",
    "keystore_path",
    "remember_passphrase",
    "wallet_key",
]

KEYRING_SERVICE = "mcpz-wallet"
PASSPHRASE_ENV = "MCPZ_WALLET_PASSPHRASE"
SCRYPT_N_ENV = "MCPZ_WALLET_SCRYPT_N"
DEFAULT_SCRYPT_N = 2**18
MIN_SCRYPT_N = 2**10
log = logging.getLogger(__name__)


class NoWallet(UsageError):
    def __init__(self, path: Path) -> None:
        super().__init__(f"no wallet at {path}", hint="create one with `mcpz wallet create` (or `import`)")


class WalletExists(UsageError):
    pass


class InvalidKeystore(UsageError):
    pass


class WrongPassphrase(AuthError):
    pass


class NoPassphrase(UsageError):
    """The passphrase was not given (no variable, keyring or terminal): the user's to supply."""


def keystore_path(env: Mapping[str, str] | None = None) -> Path:
    return data_dir(env) / "wallet" / "keystore.json"


def _scrypt_n(env: Mapping[str, str]) -> int:
    text = env.get(SCRYPT_N_ENV)
    if not text:
        return DEFAULT_SCRYPT_N
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < MIN_SCRYPT_N or n & (n - 1):
        raise UsageError(f"{SCRYPT_N_ENV} must be a power of two >= {MIN_SCRYPT_N}, not {text!r}")
    return n


def _write_private(path: Path, text: str, *, overwrite: bool) -> None:
    """Write `text` to `path` with mode 0600, atomically; refuse to replace a file unless `overwrite`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if `path` exists: no race between check and write
            os.unlink(tmp)
    except FileExistsError:
        os.unlink(tmp)
        raise WalletExists(f"a wallet exists already at {path}", hint="see `mcpz wallet address`") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _parse_keystore(text: str, source: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise InvalidKeystore(f"{source} is not a JSON keystore: {e}") from None
    has_crypto = isinstance(data, dict) and ("crypto" in data or "Crypto" in data)
    if not isinstance(data, dict) or data.get("version") != 3 or not has_crypto:
        raise InvalidKeystore(f"{source} is not a version 3 JSON keystore")
    address = str(data.get("address", ""))
    if not is_address(address if address.startswith("0x") else "0x" + address):
        raise InvalidKeystore(f"{source} has no address", hint="a keystore exported by a wallet carries one")
    return data


@dataclass(frozen=True)
class Wallet:
    """An encrypted key on disk. `address` is known without the passphrase."""

    path: Path
    address: str
    keystore: Mapping[str, Any]

    @classmethod
    def load(cls, path: Path | None = None, env: Mapping[str, str] | None = None) -> Wallet:
        path = path or keystore_path(env)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NoWallet(path) from None
        data = _parse_keystore(text, str(path))
        raw = str(data["address"])
        return cls(path, str(to_checksum_address(raw if raw.startswith("0x") else "0x" + raw)), data)

    @classmethod
    def exists(cls, path: Path | None = None, env: Mapping[str, str] | None = None) -> bool:
        return (path or keystore_path(env)).exists()

    @classmethod
    def create(
        cls, passphrase: str, *, path: Path | None = None, env: Mapping[str, str] | None = None
    ) -> Wallet:
        """A new random key, encrypted with `passphrase`."""
        return cls._store(Account.create(), passphrase, path=path, env=env)

    @classmethod
    def import_key(
        cls,
        private_key: str,
        passphrase: str,
        *,
        path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Wallet:
        """Keep an existing private key (64 hex digits, 0x optional), encrypted with `passphrase`."""
        text = private_key.strip()
        if not re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", text):
            raise UsageError("that is not a private key: expected 64 hex digits (0x optional)")
        try:
            account = Account.from_key(text)
        except (ValueError, TypeError):
            raise UsageError("that is not a valid secp256k1 private key") from None
        return cls._store(account, passphrase, path=path, env=env)

    @classmethod
    def import_keystore(
        cls,
        keystore_text: str,
        passphrase: str,
        *,
        path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Wallet:
        """Keep a JSON keystore as it is, once `passphrase` is shown to open it."""
        env = os.environ if env is None else env
        data = _parse_keystore(keystore_text, "the keystore")
        path = path or keystore_path(env)
        candidate = cls(path, str(to_checksum_address(_hex_address(data))), data)
        candidate.unlock(passphrase)
        _write_private(path, json.dumps(data), overwrite=False)
        return candidate

    @classmethod
    def _store(
        cls,
        account: LocalAccount,
        passphrase: str,
        *,
        path: Path | None,
        env: Mapping[str, str] | None,
    ) -> Wallet:
        env = os.environ if env is None else env
        if not passphrase:
            raise UsageError("the passphrase may not be empty")
        path = path or keystore_path(env)
        if path.exists():
            raise WalletExists(
                f"a wallet exists already at {path}",
                hint="see `mcpz wallet address`; move that file away first to replace it",
            )
        data = Account.encrypt(account.key, passphrase, kdf="scrypt", iterations=_scrypt_n(env))
        _write_private(path, json.dumps(data), overwrite=False)
        log.info("wallet %s written to %s", account.address, path)
        return cls(path, str(account.address), data)

    def unlock(self, passphrase: str) -> LocalAccount:
        """The decrypted key, as an eth-account signer; WrongPassphrase if it does not open."""
        try:
            key = Account.decrypt(dict(self.keystore), passphrase)
        except (ValueError, TypeError, KeyError):
            raise WrongPassphrase(
                f"the passphrase does not open the wallet {self.address}",
                hint=f"check {PASSPHRASE_ENV} or the passphrase kept in the OS keyring",
            ) from None
        account: LocalAccount = Account.from_key(key)
        if account.address != self.address:
            raise InvalidKeystore(f"{self.path} holds the key of {account.address}, not of {self.address}")
        return account

    def to_json(self) -> str:
        """The keystore as JSON: encrypted, safe to back up (the passphrase is still needed)."""
        return json.dumps(dict(self.keystore), indent=2)

    def stage_successor(self, account: LocalAccount, passphrase: str) -> Wallet:
        """Write `account` beside this keystore as `pending-<address>.json`, before a key rotation.

        The key is on disk before the registry hears of it, so a crash cannot lose the new key.
        """
        pending = self.path.with_name(f"pending-{account.address}.json")
        return Wallet._store(account, passphrase, path=pending, env=None)

    def replace_with(self, successor: Wallet) -> tuple[Wallet, Path]:
        """After a rotation: keep this keystore as `retired-<address>.json`, make `successor` the wallet.

        Returns the wallet now in use and where the old keystore went.
        """
        retired = self.path.with_name(f"retired-{self.address}.json")
        os.replace(self.path, retired)
        os.replace(successor.path, self.path)
        return Wallet(self.path, successor.address, successor.keystore), retired


def _hex_address(data: Mapping[str, Any]) -> str:
    raw = str(data["address"])
    return raw if raw.startswith("0x") else "0x" + raw


# ---------------------------------------------------------------------------------- passphrase


def _keyring() -> Any | None:
    """The keyring module when a usable backend exists, else None."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 1) <= 0:
        return None
    return keyring


def get_passphrase(
    address: str,
    *,
    env: Mapping[str, str] | None = None,
    prompt: Callable[[], str] | None = None,
) -> str:
    """The wallet's passphrase: MCPZ_WALLET_PASSPHRASE, else the OS keyring, else `prompt()`."""
    env = os.environ if env is None else env
    if env.get(PASSPHRASE_ENV):
        return env[PASSPHRASE_ENV]
    keyring = _keyring()
    if keyring is not None:
        from keyring.errors import KeyringError

        try:
            stored = keyring.get_password(KEYRING_SERVICE, address)
        except KeyringError as e:
            log.info("keyring lookup failed: %s", type(e).__name__)
            stored = None
        if stored:
            return str(stored)
    if prompt is not None:
        return prompt()
    raise NoPassphrase(
        f"the wallet {address} needs its passphrase",
        hint=f"set {PASSPHRASE_ENV}, keep it in the OS keyring (`mcpz wallet create --remember`), "
        "or run in a terminal to be asked",
    )


def remember_passphrase(address: str, passphrase: str) -> bool:
    """Keep the passphrase in the OS keyring; False when there is no keyring."""
    keyring = _keyring()
    if keyring is None:
        return False
    from keyring.errors import KeyringError

    try:
        keyring.set_password(KEYRING_SERVICE, address, passphrase)
    except KeyringError as e:
        log.info("keyring store failed: %s", type(e).__name__)
        return False
    return True


def forget_passphrase(address: str) -> bool:
    keyring = _keyring()
    if keyring is None:
        return False
    from keyring.errors import KeyringError, PasswordDeleteError

    try:
        keyring.delete_password(KEYRING_SERVICE, address)
    except (PasswordDeleteError, KeyringError):
        return False
    return True


KeyProvider = Callable[[], LocalAccount | None]
"""What signing workflows take instead of prompting: called once, before anything changes, it
answers the unlocked key, or None for "no wallet: go on unsigned"."""


def wallet_key(
    prompt: Callable[[str], Callable[[], str] | None] | None = None,
    *,
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> KeyProvider:
    """The user's wallet as a key provider: None when there is none, else the key unlocked with
    the passphrase from MCPZ_WALLET_PASSPHRASE, the OS keyring, or `prompt(address)` (the CLI
    passes a terminal prompt; the library never asks). No passphrase raises `NoPassphrase`."""

    def provide() -> LocalAccount | None:
        if not Wallet.exists(path, env):
            return None
        wallet = Wallet.load(path, env)
        asker = prompt(wallet.address) if prompt is not None else None
        return wallet.unlock(get_passphrase(wallet.address, env=env, prompt=asker))

    return provide
