"""The settlement operator's key (the account that commits payout batches and signs vouchers) and
x402's relayer key (the account that submits payers' transferWithAuthorization, docs/x402.md).

Where each comes from, first match wins, and never from the database or the settings file itself:

- `MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY` (`..._RELAYER_KEY`): the private key in hex.
- the keystore (Ethereum's encrypted JSON) named by `settlement_operator_keystore`
  (`settlement_relayer_keystore`), its passphrase in `MCPZ_REGISTRY_SETTLEMENT_OPERATOR_PASSPHRASE`
  (`..._RELAYER_PASSPHRASE`).

Neither is needed to credit deposits, so a registry without one still watches the chain. A key is
never logged, shown in an error, or kept anywhere but in its `Operator`.

The relayer is an account of its own so that its transactions' nonces never race the payout job's
(which takes the operator's); transferWithAuthorization needs no role on the contract.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from mcpz.errors import UsageError
from mcpz.keys.ethkeys import Account, LocalAccount
from registry_server.settings import RegistrySettings

KEY_VAR = "MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY"
PASSPHRASE_VAR = "MCPZ_REGISTRY_SETTLEMENT_OPERATOR_PASSPHRASE"
RELAYER_KEY_VAR = "MCPZ_REGISTRY_SETTLEMENT_RELAYER_KEY"
RELAYER_PASSPHRASE_VAR = "MCPZ_REGISTRY_SETTLEMENT_RELAYER_PASSPHRASE"


class Operator:
    """Holds the operator's account; its repr names only the address."""

    def __init__(self, account: LocalAccount, source: str) -> None:
        self._account = account
        self.address: str = account.address
        self.source = source

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self.address!r}, source={self.source!r})"

    @property
    def account(self) -> LocalAccount:
        return self._account


def load_operator(settings: RegistrySettings, env: Mapping[str, str] | None = None) -> Operator | None:
    """The operator's key, or None when none is configured."""
    return _load(
        "operator", KEY_VAR, PASSPHRASE_VAR, "settlement_operator_keystore",
        settings.settlement_operator_keystore, env,
    )  # fmt: skip


def load_relayer(settings: RegistrySettings, env: Mapping[str, str] | None = None) -> Operator | None:
    """x402's relayer key, or None when none is configured."""
    return _load(
        "relayer", RELAYER_KEY_VAR, RELAYER_PASSPHRASE_VAR, "settlement_relayer_keystore",
        settings.settlement_relayer_keystore, env,
    )  # fmt: skip


def _load(
    role: str, key_var: str, passphrase_var: str, setting: str, keystore: str, env: Mapping[str, str] | None
) -> Operator | None:
    env = os.environ if env is None else env
    text = env.get(key_var, "").strip()
    if text:
        try:
            return Operator(Account.from_key(text), "env")
        except Exception:  # the message could quote the key: say only what is wrong with it
            raise UsageError(
                f"{key_var} is not a private key",
                hint=f"set it to the {role}'s 32-byte key in hex (0x and 64 hex digits), or unset it",
            ) from None
    if not keystore:
        return None
    path = Path(keystore).expanduser()
    passphrase = env.get(passphrase_var)
    if passphrase is None:
        raise UsageError(
            f"{setting} is set but {passphrase_var} is not",
            hint=f"export {passphrase_var} with the keystore's passphrase",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(
            f"cannot read the {role} keystore {path}: {type(e).__name__}",
            hint=f"point {setting} at an Ethereum keystore (JSON) file",
        ) from None
    try:
        key = Account.decrypt(data, passphrase)
    except Exception:
        raise UsageError(
            f"cannot decrypt the {role} keystore {path}: wrong passphrase or not a keystore",
            hint=f"check {passphrase_var}",
        ) from None
    return Operator(Account.from_key(key), "keystore")
