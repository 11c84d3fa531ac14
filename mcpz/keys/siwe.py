"""Sign-In with Ethereum (EIP-4361): the message, its strict parser, and the relying party's checks.

The message grammar is EIP-4361's ABNF, followed to the letter:

    [ scheme "://" ] domain " wants you to sign in with your Ethereum account:" LF
    address LF
    LF
    [ statement LF ]
    LF
    "URI: " uri LF
    "Version: 1" LF
    "Chain ID: " chain-id LF
    "Nonce: " nonce LF
    "Issued At: " issued-at
    [ LF "Expiration Time: " expiration-time ]
    [ LF "Not Before: " not-before ]
    [ LF "Request ID: " request-id ]
    [ LF "Resources:" *( LF "- " URI ) ]

Points of the grammar that are easy to get wrong, and that this module holds to:

- With no statement there are *two* empty lines between the address and `URI:` (address LF, LF, LF);
  a statement adds its own line and one more LF. An empty statement (`""`) is grammatical and
  differs from no statement (`None`); so does an empty `Resources:` list from no list.
- The statement may hold only RFC 3986 `reserved` / `unreserved` characters and spaces: ASCII
  letters, digits and `-._~:/?#[]@!$&'()*+,;=` — no `"`, `%`, `<`, `>`, `{`, `}`, `|`, `\\`, `^`,
  backquote, tab or non-ASCII character.
- No line break after the last field; lines end in LF, never CR LF.
- The address must be EIP-55 checksummed (we refuse all-lower-case addresses that the EIP's
  prose only says SHOULD be checksummed).
- The nonce is at least 8 ASCII letters or digits; timestamps are RFC 3339 `date-time`. A
  timestamp that does not parse makes the whole message malformed — an unreadable
  `Expiration Time` is never read as "no expiry".

`SiweMessage.parse(text)` refuses any deviation with `MalformedMessage`, saying which line and
why. `SiweMessage.parse(text).to_text() == text` for every accepted text, except that a chain id
written with leading zeros (which the ABNF allows) is rendered without them; `verify` always
checks the signature over the text as received.

The relying party's refusals each have their own class and a stable `code` (for the HTTP API):

    AuthError
    └── SiweError                      code
        ├── MalformedMessage           malformed_message   the text is not an EIP-4361 message
        ├── MalformedSignature         malformed_signature not hex / not a recoverable signature
        ├── DomainMismatch             wrong_domain        scheme/domain is not this server's
        ├── UriMismatch                wrong_uri           URI is not the one this server asks for
        ├── ChainIdMismatch            wrong_chain_id
        ├── MessageExpired             expired             past Expiration Time (or max_age)
        ├── MessageNotYetValid         not_yet_valid       before Not Before, or issued in the future
        ├── TamperedMessage            tampered_message    signature recovers to another address
        ├── WrongSigner                wrong_signer        valid, but not the account expected
        └── NonceRefused               nonce_refused       unknown, expired or already used nonce

`MalformedSignature` is also a `mcpz.keys.signing.MalformedSignature`. `KeyMismatch` (a UsageError) is
raised by `sign` when the key is not the message's address.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import string
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import ClassVar

from eth_utils.address import is_checksum_address, to_checksum_address

from mcpz.errors import AuthError, UsageError
from mcpz.keys import signing
from mcpz.keys.signing import PrivateKeyInput

__all__ = [
    "DEFAULT_CLOCK_SKEW",
    "MAX_MESSAGE_CHARS",
    "ChainIdMismatch",
    "ContractCheck",
    "DomainMismatch",
    "KeyMismatch",
    "MalformedMessage",
    "MalformedSignature",
    "MessageExpired",
    "MessageNotYetValid",
    "NonceRefused",
    "SiweError",
    "SiweMessage",
    "TamperedMessage",
    "UriMismatch",
    "WrongSigner",
    "format_timestamp",
    "generate_nonce",
    "parse_timestamp",
    "sign",
    "verify",
]

PREAMBLE = " wants you to sign in with your Ethereum account:"
VERSION = "1"
MAX_MESSAGE_CHARS = 16 * 1024
"""EIP-4361 leaves maximum lengths to implementers; a longer text is refused as malformed."""
DEFAULT_CLOCK_SKEW = timedelta(seconds=60)

ContractCheck = Callable[[str, bytes, bytes], bool]
"""EIP-1271 fallback: `(address, message_hash, signature) -> valid?`.

Called by `verify` only when the signature does not recover to the message's address (a contract
wallet's signature never does). It should call `isValidSignature(message_hash, signature)` on the
contract at `address`, on the chain of the message's chain id, and return True exactly when the
call returns the magic value 0x1626ba7e. `message_hash` is the 32-byte EIP-191 hash of the message
text; `signature` the raw bytes as sent (any length). Return False for "not valid"; raise (e.g.
`mcpz.errors.NetworkError`) when the chain cannot be asked. It runs synchronously: an async server
should run `verify` in a worker thread (`anyio.to_thread.run_sync`) when the hook does I/O.
"""


# ----------------------------------------------------------------------------------------- errors


class SiweError(AuthError):
    """A Sign-In with Ethereum message was refused. `code` is stable, for the HTTP API and logs."""

    code: ClassVar[str] = "siwe_refused"


class MalformedMessage(SiweError):
    """The text is not an EIP-4361 message. `line` (1-based) and `field` say where, when known."""

    code = "malformed_message"

    def __init__(
        self, message: str, *, field: str | None = None, line: int | None = None, hint: str | None = None
    ) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"malformed sign-in message: {where}{message}", hint=hint)
        self.field = field
        self.line = line


class MalformedSignature(SiweError, signing.MalformedSignature):
    code = "malformed_signature"


class DomainMismatch(SiweError):
    code = "wrong_domain"


class UriMismatch(SiweError):
    code = "wrong_uri"


class ChainIdMismatch(SiweError):
    code = "wrong_chain_id"


class MessageExpired(SiweError):
    code = "expired"


class MessageNotYetValid(SiweError):
    code = "not_yet_valid"


class TamperedMessage(SiweError):
    """The signature does not recover to the message's address (and no contract wallet vouched for it)."""

    code = "tampered_message"


class WrongSigner(SiweError):
    """The message is validly signed by its address, but that is not the account the caller expected."""

    code = "wrong_signer"


class NonceRefused(SiweError):
    code = "nonce_refused"


class KeyMismatch(UsageError):
    """`sign` was given a key whose address is not the message's address."""


# ------------------------------------------------------------------ RFC 3986 / 3339 grammar

_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
_USERINFO = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*"
_REG_NAME = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*"
# IPv6 literals are matched loosely here and checked with `ipaddress` below; "v" is case-insensitive.
_IP_LITERAL = rf"\[(?:[0-9A-Fa-f:.]+|[Vv][0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+)\]"
_AUTHORITY_RE = re.compile(
    rf"(?:(?P<userinfo>{_USERINFO})@)?(?P<host>{_IP_LITERAL}|{_REG_NAME})(?::(?P<port>[0-9]*))?"
)
_AUTHORITY_PLAIN = rf"(?:{_USERINFO}@)?(?:{_IP_LITERAL}|{_REG_NAME})(?::[0-9]*)?"
_SEGMENT = rf"{_PCHAR}*"
_SEGMENT_NZ = rf"{_PCHAR}+"
_HIER_PART = (
    rf"(?://(?P<authority>{_AUTHORITY_PLAIN})(?:/{_SEGMENT})*"  # "//" authority path-abempty
    rf"|/(?:{_SEGMENT_NZ}(?:/{_SEGMENT})*)?"  # path-absolute
    rf"|{_SEGMENT_NZ}(?:/{_SEGMENT})*"  # path-rootless
    r"|)"  # path-empty
)
_QUERY = rf"(?:{_PCHAR}|[/?])*"
_URI_RE = re.compile(rf"{_SCHEME}:{_HIER_PART}(?:\?{_QUERY})?(?:#{_QUERY})?")
_SCHEME_RE = re.compile(_SCHEME)
_STATEMENT_RE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;= ]*")
_REQUEST_ID_RE = re.compile(rf"{_PCHAR}*")
_NONCE_RE = re.compile(r"[A-Za-z0-9]{8,}")
_ADDRESS_RE = re.compile(r"0x[0-9A-Fa-f]{40}")
_CHAIN_ID_RE = re.compile(r"[0-9]+")
_DATE_TIME_RE = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<off_hour>[0-9]{2}):(?P<off_minute>[0-9]{2}))"
)
_NONCE_ALPHABET = string.ascii_letters + string.digits
_DEFAULT_PORTS = {"https": 443, "http": 80, "wss": 443, "ws": 80}


def _short(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _authority_problem(value: str) -> str | None:
    match = _AUTHORITY_RE.fullmatch(value)
    if match is None:
        return "is not an RFC 3986 authority ([userinfo@]host[:port])"
    host = match.group("host")
    if host.startswith("[") and host[1:2] not in ("v", "V"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"has an invalid IPv6 address {host}"
    return None


def _uri_problem(value: str) -> str | None:
    match = _URI_RE.fullmatch(value)
    if match is None:
        return "is not an RFC 3986 URI (scheme:hier-part[?query][#fragment], no spaces)"
    authority = match.group("authority")
    if authority is not None:
        return _authority_problem(authority)
    return None


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 `date-time` as an aware datetime in UTC; ValueError if it is not one.

    A leap second (`:60`) reads as the last microsecond of its minute; digits of a fraction past
    microseconds are dropped; `-00:00` ("offset unknown") reads as UTC.
    """
    match = _DATE_TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"{_short(str(text))} is not an RFC 3339 date-time (e.g. 2021-09-30T16:25:24Z)")
    g = {k: int(v) for k, v in match.groupdict().items() if v and k not in ("fraction", "utc", "sign")}
    if not (g["hour"] <= 23 and g["minute"] <= 59 and g["second"] <= 60):
        raise ValueError(f"{_short(text)} has a time of day out of range")
    leap = g["second"] == 60
    fraction = match.group("fraction") or ""
    microsecond = 999_999 if leap else int((fraction + "000000")[:6])
    offset = timedelta(0)
    if match.group("sign"):
        if not (g["off_hour"] <= 23 and g["off_minute"] <= 59):
            raise ValueError(f"{_short(text)} has a UTC offset out of range")
        offset = timedelta(hours=g["off_hour"], minutes=g["off_minute"])
        if match.group("sign") == "-":
            offset = -offset
    try:
        local = datetime(
            g["year"],
            g["month"],
            g["day"],
            g["hour"],
            g["minute"],
            59 if leap else g["second"],
            microsecond,
            tzinfo=timezone(offset),
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        raise ValueError(f"{_short(text)} is not a valid date-time: {e}") from None


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with `Z`, e.g. `2021-09-30T16:25:24Z` (microseconds kept when non-zero)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("format_timestamp needs an aware datetime (e.g. datetime.now(UTC))")
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def generate_nonce(length: int = 24) -> str:
    """A random alphanumeric nonce (24 characters: about 143 bits); EIP-4361 asks for at least 8."""
    if length < 8:
        raise ValueError("an EIP-4361 nonce has at least 8 characters")
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


# -------------------------------------------------------------------------------- the message


def _field_problem(field: str, value: object) -> str | None:
    """Why `value` is not valid for the message field `field`, or None."""
    if field == "chain_id":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"must be a non-negative integer, not {value!r}"
        return None
    if field == "resources":
        if not isinstance(value, tuple):
            return "must be a tuple of URIs"
        for index, item in enumerate(value):
            problem = _field_problem("resource", item)
            if problem:
                return f"item {index + 1} {problem}"
        return None
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if field == "scheme":
        return None if _SCHEME_RE.fullmatch(value) else f"{_short(value)} is not an RFC 3986 scheme"
    if field == "domain":
        problem = _authority_problem(value)
        return f"{_short(value)} {problem}" if problem else None
    if field == "address":
        if not _ADDRESS_RE.fullmatch(value):
            return f"{_short(value)} is not an Ethereum address (0x followed by 40 hex digits)"
        if not is_checksum_address(value):
            return f"{value} is not EIP-55 checksummed (expected {to_checksum_address(value)})"
        return None
    if field == "statement":
        if not _STATEMENT_RE.fullmatch(value):
            bad = next(c for c in value if not _STATEMENT_RE.fullmatch(c))
            return (
                f"contains {bad!r}; a statement may hold only ASCII letters, digits, spaces and "
                "-._~:/?#[]@!$&'()*+,;= (RFC 3986 reserved and unreserved characters)"
            )
        return None
    if field in ("uri", "resource"):
        problem = _uri_problem(value)
        return f"{_short(value)} {problem}" if problem else None
    if field == "nonce":
        if not _NONCE_RE.fullmatch(value):
            return f"{_short(value)} is not 8 or more ASCII letters or digits"
        return None
    if field in ("issued_at", "expiration_time", "not_before"):
        try:
            parse_timestamp(value)
        except ValueError as e:
            return str(e)
        return None
    if field == "request_id":
        if not _REQUEST_ID_RE.fullmatch(value):
            return f"{_short(value)} holds characters outside RFC 3986 pchar"
        return None
    raise AssertionError(field)  # pragma: no cover


_TITLES = {
    "uri": "URI: ",
    "chain_id": "Chain ID: ",
    "nonce": "Nonce: ",
    "issued_at": "Issued At: ",
    "expiration_time": "Expiration Time: ",
    "not_before": "Not Before: ",
    "request_id": "Request ID: ",
}


_FIELD_ORDER = (
    "scheme", "domain", "address", "statement", "uri", "chain_id", "nonce", "issued_at",
    "expiration_time", "not_before", "request_id", "resources",
)  # fmt: skip
_REQUIRED = frozenset({"domain", "address", "uri", "chain_id", "nonce", "issued_at"})


@dataclass(frozen=True, kw_only=True)
class SiweMessage:
    """One EIP-4361 message. Constructing one checks every field against the grammar.

    Timestamps are kept as the exact RFC 3339 text (so a parsed message renders to the same bytes);
    `SiweMessage.create` takes datetimes, and the `*_datetime` properties read them back.
    `statement=""` and `resources=()` are grammatical and distinct from None (see the module doc).
    """

    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: str
    scheme: str | None = None
    statement: str | None = None
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.resources, list):
            object.__setattr__(self, "resources", tuple(self.resources))
        for field in _FIELD_ORDER:
            value = getattr(self, field)
            if value is None and field not in _REQUIRED:
                continue
            problem = _field_problem(field, value)
            if problem:
                raise MalformedMessage(f"{field.replace('_', ' ')} {problem}", field=field)

    @classmethod
    def create(
        cls,
        *,
        domain: str,
        address: str,
        uri: str,
        chain_id: int,
        nonce: str,
        issued_at: datetime,
        scheme: str | None = None,
        statement: str | None = None,
        expiration_time: datetime | None = None,
        not_before: datetime | None = None,
        request_id: str | None = None,
        resources: Collection[str] | None = None,
    ) -> SiweMessage:
        """Build a message from datetimes (rendered in UTC with `Z`)."""
        return cls(
            domain=domain,
            address=address,
            uri=uri,
            chain_id=chain_id,
            nonce=nonce,
            issued_at=format_timestamp(issued_at),
            scheme=scheme,
            statement=statement,
            expiration_time=None if expiration_time is None else format_timestamp(expiration_time),
            not_before=None if not_before is None else format_timestamp(not_before),
            request_id=request_id,
            resources=None if resources is None else tuple(resources),
        )

    @property
    def issued_at_datetime(self) -> datetime:
        return parse_timestamp(self.issued_at)

    @property
    def expiration_datetime(self) -> datetime | None:
        return None if self.expiration_time is None else parse_timestamp(self.expiration_time)

    @property
    def not_before_datetime(self) -> datetime | None:
        return None if self.not_before is None else parse_timestamp(self.not_before)

    def to_text(self) -> str:
        """The message exactly as it is signed."""
        origin = self.domain if self.scheme is None else f"{self.scheme}://{self.domain}"
        lines = [origin + PREAMBLE, self.address, ""]
        if self.statement is not None:
            lines.append(self.statement)
        lines += [
            "",
            f"URI: {self.uri}",
            f"Version: {VERSION}",
            f"Chain ID: {self.chain_id}",
            f"Nonce: {self.nonce}",
            f"Issued At: {self.issued_at}",
        ]
        if self.expiration_time is not None:
            lines.append(f"Expiration Time: {self.expiration_time}")
        if self.not_before is not None:
            lines.append(f"Not Before: {self.not_before}")
        if self.request_id is not None:
            lines.append(f"Request ID: {self.request_id}")
        if self.resources is not None:
            lines.append("Resources:")
            lines += [f"- {resource}" for resource in self.resources]
        return "\n".join(lines)

    @classmethod
    def parse(cls, text: str) -> SiweMessage:
        """Parse an EIP-4361 message; MalformedMessage names the first line that breaks the grammar."""
        if not isinstance(text, str):
            raise MalformedMessage(f"expected text, not {type(text).__name__}")
        if len(text) > MAX_MESSAGE_CHARS:
            raise MalformedMessage(f"longer than {MAX_MESSAGE_CHARS} characters")
        return _Parser(text).message()


class _Parser:
    """A cursor over the message's lines; each step consumes exactly what the ABNF allows there.

    `self.at` is the number of lines read so far, so the line just read is line `self.at` (1-based).
    """

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")
        self.at = 0
        if "\r" in text:
            number = next(i for i, line in enumerate(self.lines) if "\r" in line) + 1
            raise MalformedMessage("holds a carriage return; lines end in LF alone", line=number)

    def fail(
        self, message: str, *, field: str | None = None, line: int | None = None, hint: str | None = None
    ) -> MalformedMessage:
        return MalformedMessage(message, field=field, line=self.at if line is None else line, hint=hint)

    def peek(self, ahead: int = 0) -> str | None:
        index = self.at + ahead
        return self.lines[index] if index < len(self.lines) else None

    def take(self, expected: str) -> str:
        line = self.peek()
        if line is None:
            raise self.fail(f"the message ends here; expected {expected}", line=self.at)
        self.at += 1
        return line

    def check(self, field: str, value: object) -> None:
        problem = _field_problem(field, value)
        if problem:
            raise self.fail(f"{field.replace('_', ' ')} {problem}", field=field)

    def blank(self, after: str) -> None:
        line = self.take(f"an empty line after the {after}")
        if line != "":
            raise self.fail(f"expected an empty line after the {after}, found {_short(line)}")

    def field(self, key: str) -> str:
        title = _TITLES[key]
        line = self.take(repr(title + "..."))
        if not line.startswith(title):
            if line.lower().startswith(title.lower()):
                raise self.fail(f"expected {title!r} (field names are case-sensitive), found {_short(line)}")
            raise self.fail(f"expected {title!r}, found {_short(line)}", field=key)
        value = line[len(title) :]
        if key != "chain_id":
            self.check(key, value)
        return value

    def optional(self, key: str) -> str | None:
        line = self.peek()
        if line is None or not line.startswith(_TITLES[key]):
            return None
        return self.field(key)

    def message(self) -> SiweMessage:
        header = self.take("the header line")
        if not header.endswith(PREAMBLE):
            raise self.fail(
                f"expected '<domain>{PREAMBLE}', found {_short(header)}",
                hint="this is not a Sign-In with Ethereum message",
            )
        origin = header[: -len(PREAMBLE)]
        scheme: str | None
        scheme, separator, domain = origin.partition("://")  # an authority never holds "/"
        if not separator:
            scheme, domain = None, origin
        else:
            self.check("scheme", scheme)
        self.check("domain", domain)

        address = self.take("the address")
        self.check("address", address)
        self.blank("address")

        statement: str | None = None
        if self.peek() == "" and (self.peek(1) or "").startswith(_TITLES["uri"]):
            self.at += 1  # no statement: the second empty line
        elif (self.peek() or "").startswith(_TITLES["uri"]) and (self.peek(1) or "").startswith("Version: "):
            raise self.fail(
                "expected a second empty line before 'URI:' (with no statement the ABNF puts two "
                "empty lines between the address and 'URI:')",
                line=self.at + 1,
                hint="some older SIWE libraries write only one; the message must be rebuilt",
            )
        else:
            statement = self.take("the statement")
            self.check("statement", statement)
            self.blank("statement")

        uri = self.field("uri")
        version_line = self.take(f"'Version: {VERSION}'")
        if version_line != f"Version: {VERSION}":
            raise self.fail(f"expected 'Version: {VERSION}', found {_short(version_line)}", field="version")
        chain_text = self.field("chain_id")
        if not _CHAIN_ID_RE.fullmatch(chain_text):
            raise self.fail(f"chain id {_short(chain_text)} is not a decimal number", field="chain_id")
        nonce = self.field("nonce")
        issued_at = self.field("issued_at")
        expiration_time = self.optional("expiration_time")
        not_before = self.optional("not_before")
        request_id = self.optional("request_id")

        resources: tuple[str, ...] | None = None
        if self.peek() == "Resources:":
            self.at += 1
            items = []
            while (line := self.peek()) is not None and line.startswith("- "):
                self.at += 1
                self.check("resource", line[2:])
                items.append(line[2:])
            resources = tuple(items)

        if self.at < len(self.lines):
            self.unexpected(in_resources=resources is not None)

        return SiweMessage(
            domain=domain,
            address=address,
            uri=uri,
            chain_id=int(chain_text),
            nonce=nonce,
            issued_at=issued_at,
            scheme=scheme,
            statement=statement,
            expiration_time=expiration_time,
            not_before=not_before,
            request_id=request_id,
            resources=resources,
        )

    def unexpected(self, *, in_resources: bool) -> None:
        line = self.lines[self.at]
        number = self.at + 1
        if line == "" and number == len(self.lines):
            raise self.fail("the message ends with a line break; nothing may follow the last field")
        known = [*_TITLES.values(), "Version: ", "Resources:"]
        if any(line.startswith(title) for title in known):
            raise self.fail(
                f"{_short(line)} is out of order or repeated (the optional fields come in the order "
                "Expiration Time, Not Before, Request ID, Resources)",
                line=number,
            )
        if in_resources:
            raise self.fail(f"expected a resource line '- <URI>', found {_short(line)}", line=number)
        raise self.fail(f"unexpected line {_short(line)}", line=number)


# ------------------------------------------------------------------------- sign and verify


def sign(message: SiweMessage | str, private_key: PrivateKeyInput) -> str:
    """Sign a message with EIP-191 `personal_sign`, as a wallet would; returns 0x-hex.

    A text is parsed first (only well-formed messages are signed), and the key must be the
    message's address: a signature by another key would only be refused as tampered.
    """
    parsed = SiweMessage.parse(message) if isinstance(message, str) else message
    text = message if isinstance(message, str) else message.to_text()
    signer = signing.address_of(private_key)
    if signer != parsed.address:
        raise KeyMismatch(
            f"the message is for {parsed.address}, but the key is {signer}",
            hint="build the message with the wallet's own address (`mcpz wallet address`)",
        )
    return signing.personal_sign(text.encode("ascii"), private_key)


def _origin(scheme: str | None, authority: str) -> tuple[str, str | None, str, int | None]:
    """(scheme, userinfo, host, port) with EIP-4361's defaults: https, and the scheme's default port."""
    match = _AUTHORITY_RE.fullmatch(authority)
    if match is None:
        raise ValueError(f"{authority!r} is not an RFC 3986 authority")
    effective = (scheme or "https").lower()
    port_text = match.group("port")
    port = int(port_text) if port_text else _DEFAULT_PORTS.get(effective)
    return (effective, match.group("userinfo"), match.group("host").lower(), port)


def _expected_origin(expected: str) -> tuple[str, str | None, str, int | None]:
    scheme, separator, authority = expected.partition("://")
    if not separator:
        return _origin(None, expected)
    if not _SCHEME_RE.fullmatch(scheme):
        raise ValueError(f"expected_domain {expected!r} has an invalid scheme")
    return _origin(scheme, authority.rstrip("/"))


def _as_set(value: str | Collection[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _recovered(text: str, raw: bytes) -> str | None:
    try:
        return signing.personal_recover(text.encode("ascii"), raw)
    except signing.MalformedSignature:
        return None


def verify(
    message_text: str,
    signature: str | bytes,
    *,
    expected_domain: str | Collection[str],
    expected_uri: str | Collection[str],
    expected_chain_id: int,
    now: datetime,
    nonce: str | Callable[[str], bool],
    expected_address: str | None = None,
    contract_check: ContractCheck | None = None,
    clock_skew: timedelta = DEFAULT_CLOCK_SKEW,
    max_age: timedelta | None = None,
) -> str:
    """Check a signed sign-in message as a relying party must; return the signer's checksum address.

    - `expected_domain`: this server's origin(s), `host[:port]` or `scheme://host[:port]`. Per
      EIP-4361 a missing scheme means https and a missing port the scheme's default, so
      `registry.example.com`, `https://registry.example.com` and `registry.example.com:443` match
      each other; hosts compare case-insensitively. A plain-http server must give `http://...`.
    - `expected_uri`: the URI(s) this server asks clients to sign, compared exactly.
    - `now`: an aware datetime. `clock_skew` is allowed on issued-at, not-before and expiration;
      `max_age`, when given, also refuses messages issued longer ago than that.
    - `nonce`: the nonce this server issued, or a function that says whether a nonce is valid.
      It is called *last*, only when every other check has passed, so it may consume the nonce
      atomically (return False if it was already used): a bad signature never burns a nonce.
    - `expected_address`: when the caller knows which account must sign (e.g. a nonce issued to
      one address), a valid signature by another account is refused with WrongSigner.
    - `contract_check`: EIP-1271 fallback for contract wallets; see `ContractCheck`.

    Raises the SiweError subclass of the first check that fails, in this order: malformed message,
    malformed signature, domain, URI, chain id, time window, signature (tampered), expected
    account, nonce.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("verify needs an aware `now` (e.g. datetime.now(UTC))")
    message = SiweMessage.parse(message_text)
    try:
        raw = signing.decode_signature(signature)
    except signing.SignatureError as e:
        raise MalformedSignature(str(e), hint="send the wallet's signature as 0x-prefixed hex") from e

    if _origin(message.scheme, message.domain) not in {_expected_origin(d) for d in _as_set(expected_domain)}:
        origin = message.domain if message.scheme is None else f"{message.scheme}://{message.domain}"
        raise DomainMismatch(
            f"the message is for {origin}, not this server",
            hint="sign in through this registry's own URL",
        )
    if message.uri not in _as_set(expected_uri):
        raise UriMismatch(f"the message's URI {message.uri} is not the one this server asks to sign")
    if message.chain_id != expected_chain_id:
        raise ChainIdMismatch(
            f"the message is for chain {message.chain_id}; this server uses chain {expected_chain_id}"
        )

    issued_at = message.issued_at_datetime
    if issued_at - clock_skew > now:
        raise MessageNotYetValid(
            f"the message was issued in the future ({message.issued_at})", hint="check this computer's clock"
        )
    not_before = message.not_before_datetime
    if not_before is not None and not_before - clock_skew > now:
        raise MessageNotYetValid(f"the message is not valid before {message.not_before}")
    expiration = message.expiration_datetime
    if expiration is not None and expiration + clock_skew <= now:
        raise MessageExpired(f"the message expired at {message.expiration_time}", hint="sign in again")
    if max_age is not None and issued_at + max_age + clock_skew <= now:
        raise MessageExpired(
            f"the message was issued too long ago ({message.issued_at})", hint="sign in again"
        )

    recovered = _recovered(message_text, raw)
    if recovered != message.address:
        message_hash = signing.personal_hash(message_text.encode("ascii"))
        if contract_check is not None and contract_check(message.address, message_hash, raw):
            pass  # a contract wallet (EIP-1271) vouched for the signature
        elif recovered is None:
            raise MalformedSignature(
                f"the signature is not a recoverable secp256k1 signature ({len(raw)} bytes; expected 65)"
            )
        else:
            raise TamperedMessage(
                f"the signature does not match the message for {message.address}",
                hint="the message was changed after signing, or signed by another key; sign it again",
            )

    if expected_address is not None and expected_address.lower() != message.address.lower():
        raise WrongSigner(f"signed in as {message.address}, but {expected_address} was expected")

    if callable(nonce):
        valid = nonce(message.nonce)
    else:
        valid = hmac.compare_digest(nonce.encode("utf-8"), message.nonce.encode("utf-8"))
    if not valid:
        raise NonceRefused(
            "the nonce is unknown, expired or already used", hint="sign in again to get a fresh nonce"
        )
    return message.address
