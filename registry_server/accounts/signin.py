"""Wallet sign-in (EIP-4361): nonces, the check of a signed message, and the session token it earns.

`sign_in` runs in the caller's session: the message is checked by `mcpz.keys.siwe.verify` (domain, URI,
chain, age, the nonce issued here and, for a contract wallet, EIP-1271 through `eip1271_check`),
the nonce is used up only once everything else passed, and the first sign-in of a wallet creates
its account. A refusal is the `siwe.SiweError` that says why (the route answers 401 with its code).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, delete
from sqlalchemy.orm import Session

from mcpz.errors import McpzError, NetworkError
from mcpz.keys import siwe
from registry_server.accounts import namespaces, tokens
from registry_server.accounts.models import AuthNonce
from registry_server.accounts.service import create_token, namespaces_of

NONCE_LIFETIME = timedelta(minutes=5)
MESSAGE_MAX_AGE = timedelta(minutes=10)
SESSION_LIFETIME = timedelta(days=30)
SESSION_SCOPES = ("read", "publish", "deploy", "call", "admin")
EIP1271_MAGIC = bytes.fromhex("1626ba7e")
EIP1271_ABI = [
    {
        "name": "isValidSignature",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "hash", "type": "bytes32"}, {"name": "signature", "type": "bytes"}],
        "outputs": [{"name": "magicValue", "type": "bytes4"}],
    }
]


@dataclass(frozen=True)
class SignedIn:
    """A sign-in that passed: the session token (its secret shown once) and whose it is."""

    secret: str
    account: str
    address: str
    namespaces: list[str]
    scopes: tuple[str, ...]
    expires_at: datetime | None


def issue_nonce(session: Session, address: str | None, moment: datetime) -> str:
    """A fresh sign-in nonce, usable until `moment + NONCE_LIFETIME` (only by `address`, when
    given); nonces expired by `moment` are dropped, so unused ones never pile up."""
    nonce = siwe.generate_nonce()
    session.execute(delete(AuthNonce).where(AuthNonce.expires_at <= moment))
    session.add(
        AuthNonce(nonce=nonce, address=address, created_at=moment, expires_at=moment + NONCE_LIFETIME)
    )
    return nonce


def nonce_address(session: Session, message: str) -> str | None:
    """The address the message's nonce was issued to, if any (read only: consuming comes last)."""
    try:
        nonce = siwe.SiweMessage.parse(message).nonce
    except siwe.SiweError:
        return None  # verify refuses it, with the reason
    row = session.get(AuthNonce, nonce)
    return row.address if row is not None else None


def consume_nonce(session: Session, nonce: str, moment: datetime) -> bool:
    """Use up `nonce`; False when it is unknown, used or expired at `moment`."""
    result = session.execute(delete(AuthNonce).where(AuthNonce.nonce == nonce, AuthNonce.expires_at > moment))
    return isinstance(result, CursorResult) and result.rowcount == 1


def sign_in(
    session: Session,
    message: str,
    signature: str,
    *,
    registry: str,
    uri: str,
    chain_id: int,
    now: datetime,
    contract_check: siwe.ContractCheck | None = None,
) -> SignedIn:
    """Check a signed sign-in message for `registry` (its canonical public URL) and `uri`; a session
    token for its wallet's account (created on first sign-in). siwe.SiweError when refused,
    NetworkError when the chain cannot be asked about a contract wallet."""
    expected = nonce_address(session, message)

    def consume(nonce: str) -> bool:
        # Called by verify only once everything else passed: a bad signature burns nothing.
        return consume_nonce(session, nonce, now)

    address = siwe.verify(
        message,
        signature,
        expected_domain=registry,
        expected_uri=uri,
        expected_chain_id=chain_id,
        now=now,
        nonce=consume,
        max_age=MESSAGE_MAX_AGE,
        contract_check=contract_check,
        expected_address=expected,
    )
    account = namespaces.account_for_address(session, address)
    token, secret = create_token(
        session, account, SESSION_SCOPES, expires_in=SESSION_LIFETIME, name="wallet sign-in"
    )
    return SignedIn(
        secret=secret,
        account=account.name,
        address=address,
        namespaces=namespaces_of(session, account.id),
        scopes=tuple(s for s in tokens.SCOPES if s in SESSION_SCOPES),
        expires_at=token.expires_at,
    )


def eip1271_check(rpc_url: str) -> siwe.ContractCheck:
    """`isValidSignature(hash, signature)` on the contract at the signer's address, through web3."""

    def check(address: str, message_hash: bytes, signature: bytes) -> bool:
        try:
            from web3 import Web3
            from web3.exceptions import ContractLogicError, Web3Exception

            import mcpz.keys.ethkeys  # noqa: F401  (before web3: it keeps py_ecc's recursion limit out)
        except ImportError as e:
            raise McpzError(
                "contract-wallet sign-in needs web3, which is not installed",
                hint="reinstall mcpz: web3 is one of its dependencies",
            ) from e
        web3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 10}))
        contract = web3.eth.contract(address=Web3.to_checksum_address(address), abi=EIP1271_ABI)
        try:
            result = contract.functions.isValidSignature(message_hash, signature).call()
        except (ContractLogicError, ValueError):
            return False  # reverted, or no contract there: not a valid signature
        except (Web3Exception, OSError) as e:
            raise NetworkError(f"cannot ask the chain about contract wallet {address}: {e}") from e
        except Exception as e:  # requests' and aiohttp's errors, from web3's providers
            raise NetworkError(f"cannot ask the chain about contract wallet {address}: {e}") from e
        return bytes(result) == EIP1271_MAGIC

    return check
