"""The settlement operator's key: the account that commits payout batches and signs vouchers.

Where it comes from, first match wins, and never from the database or the settings file itself:

- `MCPZ_REGISTRY_SETTLEMENT_OPERATOR_KEY`: the private key in hex.
- the keystore (Ethereum's encrypted JSON) named by `settlement_operator_keystore`, its passphrase in
  `MCPZ_REGISTRY_SETTLEMENT_OPERATOR_PASSPHRASE`.

Neither is needed to credit deposits, so a registry without one still watches the chain. The key is
never logged, shown in an error, or kept anywhere but in the `Operator`.
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


class Operator:
    """Holds the operator's account; its repr names only the address."""

    def __init__(self, account: LocalAccount, source: str) -> None:
        self._account = account
        self.address: str = account.address
        self.source = source

    def __repr__(self) -> str:
        return f"Operator(address={self.address!r}, source={self.source!r})"

    @property
    def account(self) -> LocalAccount:
        return self._account


def load_operator(settings: RegistrySettings, env: Mapping[str, str] | None = None) -> Operator | None:
    """The operator's key, or None when none is configured."""
    env = os.environ if env is None else env
    text = env.get(KEY_VAR, "").strip()
    if text:
        try:
            return Operator(Account.from_key(text), "env")
        except Exception:  # the message could quote the key: say only what is wrong with it
            raise UsageError(
                f"{KEY_VAR} is not a private key",
                hint="set it to the operator's 32-byte key in hex (0x and 64 hex digits), or unset it",
            ) from None
    if not settings.settlement_operator_keystore:
        return None
    path = Path(settings.settlement_operator_keystore).expanduser()
    passphrase = env.get(PASSPHRASE_VAR)
    if passphrase is None:
        raise UsageError(
            f"settlement_operator_keystore is set but {PASSPHRASE_VAR} is not",
            hint=f"export {PASSPHRASE_VAR} with the keystore's passphrase",
        )
    try:
        keystore = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(
            f"cannot read the operator keystore {path}: {type(e).__name__}",
            hint="point settlement_operator_keystore at an Ethereum keystore (JSON) file",
        ) from None
    try:
        key = Account.decrypt(keystore, passphrase)
    except Exception:
        raise UsageError(
            f"cannot decrypt the operator keystore {path}: wrong passphrase or not a keystore",
            hint=f"check {PASSPHRASE_VAR}",
        ) from None
    return Operator(Account.from_key(key), "keystore")
