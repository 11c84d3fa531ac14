"""Namespaces and their keys: wallet accounts, members, transfers, key rotations.

The operations behind the routes of `registry_server.accounts.routes`, each in the caller's session.
Every signature is checked here with `mcpz.keys.signing` before anything is stored: the registry keeps
only statements that the namespace's key (or a member's) really signed, so what it serves to
nodes can be checked by them without trusting it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from eth_utils.address import to_checksum_address
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mcpz.errors import NotFoundError, RefusedError, UsageError
from mcpz.keys import signing
from mcpz.names import part_problem
from registry_server.accounts.auth import Forbidden
from registry_server.accounts.models import (
    ROLES,
    Account,
    KeyRotation,
    Namespace,
    NamespaceMember,
)
from registry_server.accounts.service import create_account
from registry_server.orm import utcnow

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def is_address(text: str) -> bool:
    return bool(_ADDRESS.fullmatch(text))


def checksum(address: str) -> str:
    if not is_address(address):
        raise UsageError(f"{address!r} is not an Ethereum address (0x followed by 40 hex digits)")
    return str(to_checksum_address(address))


# ------------------------------------------------------------------------------- accounts


def account_for_address(session: Session, address: str) -> Account:
    """The account of a wallet address; the first sign-in creates it, owning the namespace `0x...`.

    Two first sign-ins of one wallet at once both get the account: the one that loses the race to
    create it (a unique violation, in a savepoint) reads the winner's.
    """
    address = checksum(address)
    account = session.scalar(select(Account).where(Account.address == address))
    if account is not None:
        return account
    try:
        with session.begin_nested():
            account = create_account(session, address.lower())
            account.address = address
            session.flush()
    except (IntegrityError, UsageError) as e:
        # UsageError: create_account saw the other's committed row ("already exists").
        account = session.scalar(select(Account).where(Account.address == address))
        if account is None:
            raise RefusedError(
                f"the account of {address} could not be created: its name or namespace is taken",
                status=409,
                hint="sign in again",
            ) from e
    return account


def find_account(session: Session, who: str) -> Account:
    """An account by name or by wallet address."""
    if is_address(who):
        account = session.scalar(select(Account).where(Account.address == checksum(who)))
        if account is None:
            account = session.scalar(select(Account).where(Account.name == who.lower()))
    else:
        account = session.scalar(select(Account).where(Account.name == who))
    if account is None:
        raise NotFoundError(
            f'no account "{who}"',
            hint="a wallet's account exists once it has signed in (`mcpz login --wallet`)",
        )
    return account


# ----------------------------------------------------------------------------- namespaces


def get_namespace(session: Session, name: str) -> Namespace:
    namespace = session.get(Namespace, name)
    if namespace is None:
        raise NotFoundError(f'no namespace "{name}"', hint=f"claim it with `mcpz namespace create {name}`")
    return namespace


def role_of(session: Session, account_id: int, namespace: str) -> str | None:
    """ "owner" for the namespace's owner, the member role for a member, else None."""
    ns = session.get(Namespace, namespace)
    if ns is None:
        return None
    if ns.owner_id == account_id:
        return "owner"
    return session.scalar(
        select(NamespaceMember.role).where(
            NamespaceMember.namespace == namespace, NamespaceMember.account_id == account_id
        )
    )


def may_publish(session: Session, account_id: int, namespace: str) -> bool:
    return role_of(session, account_id, namespace) in ROLES


def colleagues(session: Session, account_id: int) -> set[int]:
    """The account itself and every account that owns or is a member of a namespace it owns or
    is a member of: those whose nodes may run its deployments, or it theirs."""
    mine = (
        select(Namespace.name)
        .where(Namespace.owner_id == account_id)
        .union(select(NamespaceMember.namespace).where(NamespaceMember.account_id == account_id))
    )
    names = list(session.scalars(mine))
    found = {account_id}
    if names:
        found.update(session.scalars(select(Namespace.owner_id).where(Namespace.name.in_(names))))
        found.update(
            session.scalars(select(NamespaceMember.account_id).where(NamespaceMember.namespace.in_(names)))
        )
    return found


def _require_manager(session: Session, account: Account, namespace: str) -> Namespace:
    ns = get_namespace(session, namespace)
    if role_of(session, account.id, namespace) != "owner":
        raise Forbidden(f'account "{account.name}" may not manage the members of "{namespace}"')
    return ns


def _require_owner(session: Session, account: Account, namespace: str) -> Namespace:
    ns = get_namespace(session, namespace)
    if ns.owner_id != account.id:
        raise Forbidden(f'only the owner of "{namespace}" may do this')
    return ns


def create_namespace(session: Session, account: Account, name: str) -> Namespace:
    problem = part_problem(name)
    if problem:
        raise UsageError(f'namespace "{name}" {problem.replace("part ", "")}')
    if is_address(name) and name != (account.address or "").lower():
        raise Forbidden(
            f'"{name}" is a wallet address: only that wallet\'s account owns it',
            hint="choose a name that is not an address",
        )
    if session.get(Namespace, name) is not None:
        raise RefusedError(f'namespace "{name}" is already taken', status=409)
    namespace = Namespace(name=name, owner_id=account.id, created_at=utcnow())
    session.add(namespace)
    session.flush()
    return namespace


@dataclass(frozen=True)
class Member:
    account: str
    address: str | None
    role: str


def members(session: Session, namespace: str) -> list[Member]:
    ns = get_namespace(session, namespace)
    owner = session.get(Account, ns.owner_id)
    assert owner is not None
    found = [Member(owner.name, owner.address, "owner")]
    rows = session.execute(
        select(Account.name, Account.address, NamespaceMember.role)
        .join(NamespaceMember, NamespaceMember.account_id == Account.id)
        .where(NamespaceMember.namespace == namespace)
        .order_by(Account.name)
    )
    found += [Member(name, address, role) for name, address, role in rows]
    return found


def set_member(session: Session, actor: Account, namespace: str, who: str, role: str) -> None:
    if role not in ROLES:
        raise UsageError(f'unknown role "{role}"', hint=f"use one of: {', '.join(ROLES)}")
    ns = _require_manager(session, actor, namespace)
    account = find_account(session, who)
    if account.id == ns.owner_id:
        raise UsageError(
            f'"{who}" owns "{namespace}" already', hint="to hand it over, use `mcpz namespace transfer`"
        )
    row = session.scalar(
        select(NamespaceMember).where(
            NamespaceMember.namespace == namespace, NamespaceMember.account_id == account.id
        )
    )
    if row is None:
        session.add(
            NamespaceMember(namespace=namespace, account_id=account.id, role=role, created_at=utcnow())
        )
    else:
        row.role = role
    session.flush()


def remove_member(session: Session, actor: Account, namespace: str, who: str) -> None:
    ns = _require_manager(session, actor, namespace)
    account = find_account(session, who)
    if account.id == ns.owner_id:
        raise UsageError(f'"{who}" owns "{namespace}"; the owner cannot be removed')
    row = session.scalar(
        select(NamespaceMember).where(
            NamespaceMember.namespace == namespace, NamespaceMember.account_id == account.id
        )
    )
    if row is None:
        raise NotFoundError(f'"{who}" is not a member of "{namespace}"')
    session.delete(row)
    session.flush()


# ----------------------------------------------------------------------------- keys


def owner_address(session: Session, namespace: str) -> str | None:
    ns = get_namespace(session, namespace)
    owner = session.get(Account, ns.owner_id)
    return owner.address if owner is not None else None


def rotations(session: Session, namespace: str | None = None) -> list[KeyRotation]:
    query = select(KeyRotation).order_by(KeyRotation.namespace, KeyRotation.sequence)
    if namespace is not None:
        query = query.where(KeyRotation.namespace == namespace)
    return list(session.scalars(query))


def rotation_document(row: KeyRotation) -> dict[str, Any]:
    """One signed rotation as GET /v1/namespaces/{ns}/keys lists it."""
    return {
        "namespace": row.namespace,
        "old_address": row.old_address,
        "new_address": row.new_address,
        "sequence": row.sequence,
        "statement": row.statement,
        "signature": row.signature,
        "created_at": row.created_at,
    }


def keys_document(session: Session, namespace: str, registry: str) -> dict[str, Any]:
    """The owner's key and the chain of signed rotations that led to it, for `registry` (its public
    URL): what GET /v1/namespaces/{ns}/keys answers and what a deploy frame carries to a node."""
    return {
        "registry": registry,
        "namespace": namespace,
        "owner_address": owner_address(session, namespace),
        "rotations": [rotation_document(r) for r in rotations(session, namespace)],
    }


def key_sequence(session: Session, namespace: str) -> int:
    """The sequence of the namespace's last rotation (0: never rotated)."""
    value = session.scalar(select(func.max(KeyRotation.sequence)).where(KeyRotation.namespace == namespace))
    return int(value or 0)


def _record_rotation(
    session: Session, registry: str, namespace: str, old: str, new: str, signature: str
) -> KeyRotation:
    statement = signing.KeyRotationStatement(
        registry=registry,
        namespace=namespace,
        old_address=old,
        new_address=new,
        sequence=key_sequence(session, namespace) + 1,
    )
    signing.verify_rotation(statement, signature)
    row = KeyRotation(
        namespace=namespace,
        old_address=old,
        new_address=new,
        sequence=statement.sequence,
        statement=statement.to_text(),
        signature=signature,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise RefusedError(
            f'the key of "{namespace}" changed meanwhile', status=409, hint="fetch it again and retry"
        ) from None
    return row


def transfer(
    session: Session, actor: Account, namespace: str, to: str, signature: str | None, registry: str
) -> KeyRotation | None:
    """Make `to` the owner. When the old owner has a key, its rotation statement must be signed by it."""
    ns = _require_owner(session, actor, namespace)
    target = find_account(session, to)
    if target.id == ns.owner_id:
        raise UsageError(f'"{to}" owns "{namespace}" already')
    rotation = None
    if actor.address is not None:
        if target.address is None:
            raise UsageError(
                f'"{to}" has no wallet: nodes could not check its releases',
                hint="the new owner signs in with `mcpz login --wallet` first",
            )
        if not signature:
            raise UsageError("a transfer needs the rotation statement signed by your wallet")
        rotation = _record_rotation(session, registry, namespace, actor.address, target.address, signature)
    ns.owner_id = target.id
    for row in session.scalars(
        select(NamespaceMember).where(
            NamespaceMember.namespace == namespace, NamespaceMember.account_id == target.id
        )
    ):
        session.delete(row)
    session.flush()
    return rotation


def owned_namespaces(session: Session, account_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Namespace.name).where(Namespace.owner_id == account_id).order_by(Namespace.name)
        )
    )


def rotate_account_key(
    session: Session,
    account: Account,
    new_address: str,
    signatures: dict[str, tuple[str, str]],
    registry: str,
) -> list[KeyRotation]:
    """Move the account to a new key: one rotation per owned namespace, signed by the old key and the new.

    `signatures` maps each namespace the account owns to (old key's signature, new key's
    signature) over that namespace's rotation statement. All or nothing.
    """
    if account.address is None:
        raise UsageError(
            "this account has no wallet key to rotate", hint="sign in with `mcpz login --wallet`"
        )
    new_address = checksum(new_address)
    if new_address == account.address:
        raise UsageError("the new key is the current key")
    if session.scalar(select(Account).where(Account.address == new_address)) is not None:
        raise RefusedError(f"{new_address} already belongs to an account", status=409)
    owned = owned_namespaces(session, account.id)
    if not owned:
        raise UsageError("this account owns no namespace, so there is nothing to rotate")
    if set(signatures) != set(owned):
        missing = sorted(set(owned) - set(signatures))
        extra = sorted(set(signatures) - set(owned))
        raise UsageError(
            "a key rotation must cover exactly the namespaces the account owns"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not owned: {', '.join(extra)}" if extra else "")
        )
    done = []
    for namespace in owned:
        old_signature, new_signature = signatures[namespace]
        row = _record_rotation(session, registry, namespace, account.address, new_address, old_signature)
        # The new key proves it is held, so no one rotates a namespace to a key nobody has.
        signing.verify_statement(
            signing.KeyRotationStatement.parse(row.statement), new_signature, signers=new_address
        )
        done.append(row)
    account.address = new_address
    session.flush()
    return done


# ------------------------------------------------------------------------- release signatures


def allowed_signers(session: Session, namespace: str) -> list[str]:
    """Addresses that may sign the namespace's releases: its owner and its members, that have one."""
    return [m.address for m in members(session, namespace) if m.address]
