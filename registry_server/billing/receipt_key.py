"""The registry's receipt key: the Ed25519 key that signs the receipts of paid calls.

Where it comes from, first match wins:

- `MCPZ_REGISTRY_RECEIPT_KEY`: the 32-byte seed in base64url. Registry replicas behind one load
  balancer share their key this way (each has a data folder of its own).
- `{data_dir}/keys/receipts.key`: the raw 32-byte seed, mode 0600 in a 0700 folder; made on first
  start. Back it up with the database: receipts signed with a lost key still verify against the
  key text their holders kept, but no longer against `GET /v1/billing/receipt-key`.

The seed is never logged, shown in an error, or kept anywhere but in the signer.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mcpz.atomic import write_atomic
from mcpz.errors import UsageError
from mcpz.keys import receipts
from mcpz.keys.receipts import Receipt
from mcpz.private import FILE_MODE, private_dir
from registry_server.settings import RegistrySettings, public_url

log = logging.getLogger(__name__)

ENV_VAR = "MCPZ_REGISTRY_RECEIPT_KEY"
ALGORITHM = "ed25519"


def key_path(settings: RegistrySettings) -> Path:
    return settings.data_dir / "keys" / "receipts.key"


def _from_env(text: str) -> Ed25519PrivateKey:
    seed = receipts.decode_b64url(text.strip().rstrip("="), receipts.SEED_BYTES)
    if seed is None:
        raise UsageError(
            f"{ENV_VAR} is not a receipt key: expected 32 bytes in base64url (43 characters)",
            hint="unset it to use {data_dir}/keys/receipts.key, or make one with: "
            "python -c 'import base64,os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())'",
        )
    return receipts.private_key_from_seed(seed)


def _from_file(path: Path) -> Ed25519PrivateKey:
    private_dir(path.parent)
    try:
        seed = path.read_bytes()
    except FileNotFoundError:
        seed = secrets.token_bytes(receipts.SEED_BYTES)
        write_atomic(path, seed, mode=FILE_MODE)
        log.info("made a new receipt key", extra={"path": str(path)})
        return receipts.private_key_from_seed(seed)
    if len(seed) != receipts.SEED_BYTES:
        raise UsageError(
            f"{path} is not a receipt key: it holds {len(seed)} bytes, not a {receipts.SEED_BYTES}-byte seed",
            hint="restore it from a backup; or move it aside, and a new key is made at the next start "
            "(receipts signed with the old key then verify only against its key text)",
        )
    # A copy restored by hand may have come back readable by others.
    os.chmod(path, FILE_MODE)
    return receipts.private_key_from_seed(seed)


class ReceiptSigner:
    """Signs receipts with the registry's key, for its public URL. Built once, at start-up."""

    def __init__(self, settings: RegistrySettings, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        text = env.get(ENV_VAR)
        self._private = _from_env(text) if text else _from_file(key_path(settings))
        self.public_key = receipts.public_key_text(self._private)
        self.registry = public_url(settings)
        self.currency = settings.currency
        self.decimals = settings.currency_decimals
        self.algorithm = ALGORITHM
        log.info("receipt key", extra={"key": self.public_key, "source": "env" if text else "file"})

    def __repr__(self) -> str:
        return f"ReceiptSigner(key={self.public_key!r}, registry={self.registry!r})"

    def sign(
        self,
        *,
        event: str,
        agent: str,
        version: str,
        tool: str,
        price: int,
        time: int,
        request: str,
        response: str,
        currency: str | None = None,
        decimals: int | None = None,
    ) -> Receipt:
        """A receipt for one call. `request`/`response` are `mcpz.keys.receipts.request_digest`
        of the call's params and `response_digest` of the agent's result, taken before `attach`;
        `price` is in base units of `currency` (default: the registry's settlement token)."""
        return receipts.sign(
            event=event,
            agent=agent,
            version=version,
            tool=tool,
            price=price,
            currency=self.currency if currency is None else currency,
            decimals=self.decimals if decimals is None else decimals,
            time=time,
            request=request,
            response=response,
            registry=self.registry,
            private_key=self._private,
            key=self.public_key,
        )
