"""Accounts, namespaces and tokens: the operations behind both HTTP routes and operator commands."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mcpz.errors import AuthError, NotFoundError, UsageError
from mcpz.names import part_problem
from registry_server.accounts import tokens
from registry_server.accounts.models import Account, Namespace, Token
from registry_server.orm import utcnow


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account and the token's scopes."""

    account_id: int
    account_name: str
    token_id: int
    scopes: frozenset[str]
    expires_at: datetime | None
    # The resource an OAuth token is bound to (only usable there), None for a plain key.
    resource: str | None = None

    def has(self, scope: str) -> bool:
        return scope in self.scopes


def create_account(session: Session, name: str) -> Account:
    """An account and the namespace of the same name, which it owns."""
    problem = part_problem(name)
    if problem:
        raise UsageError(f'account name "{name}" {problem.replace("part ", "")}')
    if session.scalar(select(Account).where(Account.name == name)) is not None:
        raise UsageError(f'account "{name}" already exists')
    if session.get(Namespace, name) is not None:
        raise UsageError(f'namespace "{name}" is already taken')
    account = Account(name=name, created_at=utcnow())
    session.add(account)
    session.flush()
    session.add(Namespace(name=name, owner_id=account.id, created_at=utcnow()))
    try:
        session.flush()
    except IntegrityError as e:
        raise UsageError(f'account "{name}" already exists') from e
    return account


def account_by_name(session: Session, name: str) -> Account:
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        raise NotFoundError(f'no account "{name}"', hint="create it with: mcpz registry account create NAME")
    return account


def account_by_id(session: Session, account_id: int) -> Account:
    """The account of an authenticated principal (it exists: tokens go with their account)."""
    account = session.get(Account, account_id)
    if account is None:
        raise AuthError("the account of this token no longer exists", hint="sign in again")
    return account


def create_token(
    session: Session,
    account: Account,
    scopes: tuple[str, ...],
    *,
    expires_in: timedelta | None,
    name: str = "",
    resource: str | None = None,
) -> tuple[Token, str]:
    """A new token; returns the row and the secret, which is never seen again. `resource`: the only
    URL it may be used at (an OAuth access token's audience)."""
    secret = tokens.new_secret()
    token = Token(
        account_id=account.id,
        secret_hash=tokens.hash_secret(secret),
        prefix=tokens.display_prefix(secret),
        name=name,
        scopes=",".join(scopes),
        created_at=utcnow(),
        expires_at=utcnow() + expires_in if expires_in else None,
        resource=resource,
    )
    session.add(token)
    session.flush()
    return token, secret


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just created by the operator: `secret` is shown once and stored only as a hash."""

    id: int
    account: str
    secret: str
    scopes: tuple[str, ...]
    expires_at: datetime | None

    def to_dict(self) -> dict[str, object]:
        return {
            "token": self.secret,
            "id": self.id,
            "account": self.account,
            "scopes": list(self.scopes),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What the operator asked for, checked before the database is opened."""

    scopes: tuple[str, ...]
    lifetime: timedelta | None

    @classmethod
    def parse(cls, scope_text: str, expires: str | None, default_days: int | None) -> TokenRequest:
        """`--scope a,b` and `--expires` ("never", a duration such as "30d", or None for the
        registry's default of `default_days`, none: never). UsageError for bad input."""
        try:
            scopes = tokens.parse_scopes(scope_text)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if expires == "never":
            lifetime = None
        elif expires:
            lifetime = parse_duration(expires)
        else:
            lifetime = timedelta(days=default_days) if default_days else None
        return cls(scopes, lifetime)


def issue_token(session: Session, account: str, request: TokenRequest, *, name: str = "") -> IssuedToken:
    """The operator's `mcpz registry token create`: a token for `account`, named or given by its
    wallet address (any case)."""
    from registry_server.accounts.namespaces import find_account

    owner = find_account(session, account)
    token, secret = create_token(session, owner, request.scopes, expires_in=request.lifetime, name=name)
    return IssuedToken(
        id=token.id, account=owner.name, secret=secret, scopes=request.scopes, expires_at=token.expires_at
    )


def authenticate(session: Session, secret: str) -> Principal:
    if not secret.startswith(tokens.PREFIX):
        raise AuthError("the token is not an mcpz token", hint="tokens start with mcpz_")
    token = session.scalar(select(Token).where(Token.secret_hash == tokens.hash_secret(secret)))
    if token is None or token.revoked_at is not None:
        raise AuthError("the token is unknown or revoked", hint="create a new one with `mcpz keys create`")
    moment = utcnow()
    if token.expires_at is not None and token.expires_at <= moment:
        raise AuthError("the token has expired", hint="create a new one with `mcpz keys create`")
    # Written at most once a minute, so reads do not turn into a write each.
    if token.last_used_at is None or moment - token.last_used_at > timedelta(minutes=1):
        token.last_used_at = moment
    account = session.get(Account, token.account_id)
    assert account is not None
    return Principal(
        account_id=account.id,
        account_name=account.name,
        token_id=token.id,
        scopes=frozenset(token.scopes.split(",")),
        expires_at=token.expires_at,
        resource=token.resource,
    )


def names_of(session: Session, account_ids: Iterable[int]) -> dict[int, str]:
    """Account id -> name, for those of `account_ids` that exist."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    rows = session.execute(select(Account.id, Account.name).where(Account.id.in_(ids)))
    return {account_id: name for account_id, name in rows}


def namespaces_of(session: Session, account_id: int) -> list[str]:
    return list(
        session.scalars(
            select(Namespace.name).where(Namespace.owner_id == account_id).order_by(Namespace.name)
        )
    )


def owns_namespace(session: Session, account_id: int, namespace: str) -> bool:
    ns = session.get(Namespace, namespace)
    return ns is not None and ns.owner_id == account_id


def list_tokens(session: Session, account_id: int) -> list[Token]:
    return list(session.scalars(select(Token).where(Token.account_id == account_id).order_by(Token.id)))


def revoke_token(session: Session, account_id: int, token_id: int) -> Token:
    token = session.get(Token, token_id)
    if token is None or token.account_id != account_id:
        raise NotFoundError(f"no key {token_id} on this account", hint="see `mcpz keys list`")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


def parse_duration(text: str) -> timedelta:
    """ "30d", "12h", "90m", "1w" -> timedelta."""
    units = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    text = text.strip().lower()
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise UsageError(f'"{text}" is not a duration', hint='use e.g. "30d", "12h", "90m" or "1w"')
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])
