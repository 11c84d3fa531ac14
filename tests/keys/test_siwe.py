"""EIP-4361 (Sign-In with Ethereum): grammar, round trips, and every refusal of the verifier."""

from __future__ import annotations

import string
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import defunct_hash_message, encode_defunct
from eth_keys.constants import SECPK1_N
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpz.errors import AuthError, UsageError
from mcpz.keys import signing, siwe
from mcpz.keys.siwe import MalformedMessage, SiweMessage

# --------------------------------------------------------------- EIP-4361's own examples (data)

EIP_ADDRESS = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
EIP_STATEMENT = "I accept the ExampleOrg Terms of Service: https://example.com/tos"
EIP_RESOURCES = (
    "ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
    "https://example.com/my-web2-claim.json",
)

EIP_IMPLICIT_SCHEME = """\
example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ExampleOrg Terms of Service: https://example.com/tos

URI: https://example.com/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""

EIP_IMPLICIT_SCHEME_EXPLICIT_PORT = """\
example.com:3388 wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ExampleOrg Terms of Service: https://example.com/tos

URI: https://example.com/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""

EIP_EXPLICIT_SCHEME = """\
https://example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ExampleOrg Terms of Service: https://example.com/tos

URI: https://example.com/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""


@pytest.mark.parametrize(
    ("text", "scheme", "domain"),
    [
        (EIP_IMPLICIT_SCHEME, None, "example.com"),
        (EIP_IMPLICIT_SCHEME_EXPLICIT_PORT, None, "example.com:3388"),
        (EIP_EXPLICIT_SCHEME, "https", "example.com"),
    ],
    ids=["implicit-scheme", "implicit-scheme-explicit-port", "explicit-scheme"],
)
def test_the_eips_examples_parse(text: str, scheme: str | None, domain: str) -> None:
    message = SiweMessage.parse(text)
    assert message == SiweMessage(
        scheme=scheme,
        domain=domain,
        address=EIP_ADDRESS,
        statement=EIP_STATEMENT,
        uri="https://example.com/login",
        chain_id=1,
        nonce="32891756",
        issued_at="2021-09-30T16:25:24Z",
        resources=EIP_RESOURCES,
    )
    assert message.issued_at_datetime == datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)
    assert message.expiration_datetime is None
    assert message.to_text() == text


def test_no_statement_puts_two_empty_lines_between_address_and_uri() -> None:
    message = SiweMessage(
        domain="example.com",
        address=EIP_ADDRESS,
        uri="https://example.com/login",
        chain_id=1,
        nonce="32891756",
        issued_at="2021-09-30T16:25:24Z",
    )
    text = message.to_text()
    assert text.startswith(
        f"example.com wants you to sign in with your Ethereum account:\n{EIP_ADDRESS}\n\n\nURI: "
    )
    assert SiweMessage.parse(text) == message


def test_empty_statement_and_empty_resources_differ_from_absent_ones() -> None:
    base = SiweMessage.parse(EIP_IMPLICIT_SCHEME)
    empty = SiweMessage(**{**_fields(base), "statement": "", "resources": ()})
    text = empty.to_text()
    assert f"{EIP_ADDRESS}\n\n\n\nURI: " in text
    assert text.endswith("Issued At: 2021-09-30T16:25:24Z\nResources:")
    parsed = SiweMessage.parse(text)
    assert parsed.statement == "" and parsed.resources == ()


def test_all_optional_fields_in_order() -> None:
    text = EIP_IMPLICIT_SCHEME.replace(
        "Issued At: 2021-09-30T16:25:24Z\n",
        "Issued At: 2021-09-30T16:25:24Z\n"
        "Expiration Time: 2021-09-30T16:30:24.123+02:00\n"
        "Not Before: 2021-09-30t16:25:24z\n"
        "Request ID: 0a%2F:@!$&'()*+,;=\n",
    )
    message = SiweMessage.parse(text)
    assert message.expiration_datetime == datetime(2021, 9, 30, 14, 30, 24, 123000, tzinfo=UTC)
    assert message.not_before_datetime == datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)
    assert message.request_id == "0a%2F:@!$&'()*+,;="
    assert message.to_text() == text


def _fields(message: SiweMessage) -> dict[str, Any]:
    return {name: getattr(message, name) for name in SiweMessage.__dataclass_fields__}


# --------------------------------------------------------------------- malformed messages

STATEMENT_LINE = f"\n{EIP_STATEMENT}\n"


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("example.com wants", "example.com want", "wants you to sign in"),
        ("example.com wants", "exa mple.com wants", "domain"),
        ("example.com wants", "1https://example.com wants", "scheme"),
        ("example.com wants", "[1::2::3] wants", "IPv6"),
        (EIP_ADDRESS, EIP_ADDRESS.lower(), "EIP-55"),
        (EIP_ADDRESS, EIP_ADDRESS[:-1], "40 hex digits"),
        (EIP_ADDRESS, "0X" + EIP_ADDRESS[2:], "40 hex digits"),
        (EIP_STATEMENT + "\n\n", "", "second empty line before 'URI:'"),  # older libraries' layout
        (STATEMENT_LINE, "\n\n" + EIP_STATEMENT + "\n", "expected an empty line after the statement"),
        ("Terms of Service", '"Terms" of Service', "statement contains '\"'"),
        ("Terms of Service", "Terms of Servicé", "statement contains 'é'"),
        ("Terms of Service", "Terms\tof Service", "statement contains '\\t'"),
        ("Terms of Service", "100% of Service", "statement contains '%'"),
        ("URI: https://example.com/login", "URI: example.com/login", "RFC 3986 URI"),
        ("URI: https://example.com/login", "URI: https://example.com/log in", "RFC 3986 URI"),
        ("URI: https://example.com/login", "uri: https://example.com/login", "case-sensitive"),
        ("Version: 1", "Version: 2", "Version: 1"),
        ("Chain ID: 1", "Chain ID: one", "decimal"),
        ("Chain ID: 1", "Chain ID: ", "decimal"),
        ("Nonce: 32891756", "Nonce: 3289175", "8 or more"),
        ("Nonce: 32891756", "Nonce: 3289175é", "8 or more"),
        ("Nonce: 32891756", "Nonce: 32891756-", "8 or more"),
        ("2021-09-30T16:25:24Z", "2021-09-30 16:25:24Z", "RFC 3339"),
        ("2021-09-30T16:25:24Z", "2021-09-30T16:25:24", "RFC 3339"),
        ("2021-09-30T16:25:24Z", "2021-02-30T16:25:24Z", "not a valid date-time"),
        ("2021-09-30T16:25:24Z", "2021-09-30T24:00:00Z", "out of range"),
        ("2021-09-30T16:25:24Z", "2021-09-30T16:25:24+24:00", "out of range"),
        ("2021-09-30T16:25:24Z", "Wed Oct 05 2011 16:48:00 GMT+0200 (CEST)", "RFC 3339"),
        ("Nonce: 32891756\nIssued", "Issued", "expected 'Nonce: '"),
        ("- https://example.com/my-web2-claim.json", "- not a uri", "resource"),
        ("- https://example.com/my-web2-claim.json", "* https://example.com/x", "resource line"),
        ("Resources:\n", "Resources:\nRequest ID: abc\n", "out of order or repeated"),
        ("Resources:\n", "Request ID: a\nRequest ID: b\nResources:\n", "out of order or repeated"),
        ("Resources:\n", "Hello: there\nResources:\n", "unexpected line"),
    ],
)
def test_grammar_violations_are_refused_clearly(old: str, new: str, says: str) -> None:
    assert old in EIP_IMPLICIT_SCHEME
    with pytest.raises(MalformedMessage) as caught:
        SiweMessage.parse(EIP_IMPLICIT_SCHEME.replace(old, new, 1))
    assert says in str(caught.value)
    assert caught.value.line is not None
    assert caught.value.code == "malformed_message"


def test_line_numbers_point_at_the_offending_line() -> None:
    with pytest.raises(MalformedMessage) as caught:
        SiweMessage.parse(EIP_IMPLICIT_SCHEME.replace("Version: 1", "Version: 2"))
    assert caught.value.line == 7
    assert str(caught.value).startswith("malformed sign-in message: line 7: ")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "wants you to sign in"),
        (EIP_IMPLICIT_SCHEME + "\n", "ends with a line break"),
        (EIP_IMPLICIT_SCHEME.replace("\n", "\r\n"), "carriage return"),
        (EIP_IMPLICIT_SCHEME.split("\nNonce")[0], "the message ends here"),
        (EIP_IMPLICIT_SCHEME.split("\n\nI accept")[0], "the message ends here"),
        ("x" * (siwe.MAX_MESSAGE_CHARS + 1), "longer than"),
    ],
)
def test_truncated_and_oversized_messages_are_refused(text: str, says: str) -> None:
    with pytest.raises(MalformedMessage, match=says):
        SiweMessage.parse(text)


def test_an_expiration_time_that_does_not_parse_is_a_refusal_not_no_expiry() -> None:
    text = EIP_IMPLICIT_SCHEME.replace(
        "Issued At: 2021-09-30T16:25:24Z\n", "Issued At: 2021-09-30T16:25:24Z\nExpiration Time: never\n"
    )
    with pytest.raises(MalformedMessage, match="expiration time 'never'"):
        SiweMessage.parse(text)


def test_the_constructor_checks_fields_too() -> None:
    good = _fields(SiweMessage.parse(EIP_IMPLICIT_SCHEME))
    for field, bad in [
        ("address", EIP_ADDRESS.lower()),
        ("statement", "line\nbreak"),
        ("nonce", "short"),
        ("chain_id", -1),
        ("chain_id", True),
        ("issued_at", "yesterday"),
        ("resources", ("ok://fine", "not a uri")),
        ("request_id", "has space"),
        ("domain", "a/b"),
        ("scheme", "ht tp"),
    ]:
        with pytest.raises(MalformedMessage) as caught:
            SiweMessage(**{**good, field: bad})
        assert caught.value.field == field


def test_chain_id_with_leading_zeros_is_grammatical_and_renders_canonically() -> None:
    text = EIP_IMPLICIT_SCHEME.replace("Chain ID: 1", "Chain ID: 0001")
    message = SiweMessage.parse(text)
    assert message.chain_id == 1
    assert message.to_text() == EIP_IMPLICIT_SCHEME


def test_a_statement_may_look_like_a_field() -> None:
    text = EIP_IMPLICIT_SCHEME.replace(EIP_STATEMENT, "URI: https://evil.example/x")
    assert SiweMessage.parse(text).statement == "URI: https://evil.example/x"


# ------------------------------------------------------------------------------ timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-09-30T16:25:24Z", datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)),
        ("2021-09-30t16:25:24z", datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)),
        ("2021-09-30T16:25:24.5Z", datetime(2021, 9, 30, 16, 25, 24, 500000, tzinfo=UTC)),
        ("2021-09-30T16:25:24.123456789Z", datetime(2021, 9, 30, 16, 25, 24, 123456, tzinfo=UTC)),
        ("2021-09-30T18:25:24+02:00", datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)),
        ("2021-09-30T16:25:24-00:00", datetime(2021, 9, 30, 16, 25, 24, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
        ("2024-02-29T00:00:00Z", datetime(2024, 2, 29, tzinfo=UTC)),
    ],
)
def test_rfc3339_timestamps(text: str, expected: datetime) -> None:
    assert siwe.parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2021-09-30",
        "2021-09-30T16:25Z",
        "2021-09-30T16:25:24.Z",
        "2021-9-30T16:25:24Z",
        "2023-02-29T00:00:00Z",
        "2021-13-01T00:00:00Z",
        "2021-09-30T16:61:00Z",
        "2021-09-30T16:25:24+0200",
        "0000-01-01T00:00:00Z",
        "2021-09-30T16:25:24Z ",
        "\uff12\uff10\uff12\uff11-09-30T16:25:24Z",  # full-width digits
    ],
)
def test_not_rfc3339(text: str) -> None:
    with pytest.raises(ValueError):
        siwe.parse_timestamp(text)


def test_format_timestamp() -> None:
    assert siwe.format_timestamp(datetime(2021, 9, 30, 18, 25, 24, tzinfo=timezone(timedelta(hours=2)))) == (
        "2021-09-30T16:25:24Z"
    )
    assert siwe.format_timestamp(datetime(2021, 9, 30, 16, 25, 24, 120000, tzinfo=UTC)) == (
        "2021-09-30T16:25:24.12Z"
    )
    with pytest.raises(ValueError, match="aware"):
        siwe.format_timestamp(datetime(2021, 9, 30))


def test_generate_nonce() -> None:
    nonces = {siwe.generate_nonce() for _ in range(50)}
    assert len(nonces) == 50
    assert all(len(n) == 24 and n.isascii() and n.isalnum() for n in nonces)
    with pytest.raises(ValueError):
        siwe.generate_nonce(7)


# ---------------------------------------------------------------- round trips (hypothesis)

ALNUM = string.ascii_letters + string.digits
UNRESERVED = ALNUM + "-._~"
SUB_DELIMS = "!$&'()*+,;="
PCHAR = UNRESERVED + SUB_DELIMS + ":@"
STATEMENT_CHARS = UNRESERVED + ":/?#[]@" + SUB_DELIMS + " "

private_keys = st.integers(min_value=1, max_value=SECPK1_N - 1).map(lambda k: k.to_bytes(32, "big"))
addresses = private_keys.map(lambda key: str(Account.from_key(key).address))
pct_encoded = st.tuples(st.sampled_from(string.hexdigits), st.sampled_from(string.hexdigits)).map(
    lambda t: "%" + "".join(t)
)


def _chunks(alphabet: str, max_size: int = 10) -> st.SearchStrategy[str]:
    return st.lists(st.one_of(st.sampled_from(alphabet), pct_encoded), max_size=max_size).map("".join)


labels = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10)
hosts = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.sampled_from(["[::1]", "[2001:db8::7]", "[v1.fe80::a+en1]", "[::ffff:192.0.2.1]", "localhost"]),
    _chunks(UNRESERVED + SUB_DELIMS),
)
authorities = st.builds(
    lambda user, host, port: (
        (f"{user}@" if user is not None else "") + host + (f":{port}" if port is not None else "")
    ),
    st.none() | _chunks(UNRESERVED + SUB_DELIMS + ":", 6),
    hosts,
    st.none() | st.just("") | st.integers(0, 65535).map(str),
)
schemes = st.from_regex(r"[A-Za-z][A-Za-z0-9+.\-]{0,6}", fullmatch=True)
paths = st.lists(_chunks(PCHAR, 6), max_size=4).map(lambda segments: "".join("/" + s for s in segments))
queries = st.none() | _chunks(PCHAR + "/?", 8)
uris = st.one_of(
    st.builds(
        lambda scheme, authority, path, query, fragment: (
            f"{scheme}://{authority}{path}"
            + (f"?{query}" if query is not None else "")
            + (f"#{fragment}" if fragment is not None else "")
        ),
        schemes,
        authorities,
        paths,
        queries,
        queries,
    ),
    st.sampled_from(
        ["urn:isbn:0451450523", "mailto:a@example.com", "did:pkh:eip155:1:0xabc", "x:", "x:/a//b"]
    ),
)


rfc3339 = st.builds(
    lambda date, t, time, fraction, offset: f"{date}{t}{time}{fraction}{offset}",
    st.builds("{:04d}-{:02d}-{:02d}".format, st.integers(1970, 2200), st.integers(1, 12), st.integers(1, 28)),
    st.sampled_from("Tt"),
    st.builds("{:02d}:{:02d}:{:02d}".format, st.integers(0, 23), st.integers(0, 59), st.integers(0, 60)),
    st.sampled_from(["", ".0", ".5", ".123", ".123456789"]),
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+05:30", "-12:45", "+23:59"]),
)


messages = st.builds(
    SiweMessage,
    scheme=st.none() | schemes,
    domain=authorities,
    address=addresses,
    statement=st.none() | st.text(alphabet=STATEMENT_CHARS, max_size=80),
    uri=uris,
    chain_id=st.integers(min_value=0, max_value=2**64),
    nonce=st.text(alphabet=ALNUM, min_size=8, max_size=32),
    issued_at=rfc3339,
    expiration_time=st.none() | rfc3339,
    not_before=st.none() | rfc3339,
    request_id=st.none() | _chunks(PCHAR, 12),
    resources=st.none() | st.lists(uris, max_size=4).map(tuple),
)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_build_parse_round_trip(message: SiweMessage) -> None:
    text = message.to_text()
    assert SiweMessage.parse(text) == message
    assert SiweMessage.parse(text).to_text() == text


@settings(max_examples=300)
@given(st.text(max_size=400))
def test_the_parser_never_crashes_on_garbage(text: str) -> None:
    try:
        SiweMessage.parse(text)
    except MalformedMessage:
        pass


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_the_parser_never_crashes_on_mutations(message: SiweMessage, data: st.DataObject) -> None:
    text = message.to_text()
    position = data.draw(st.integers(0, len(text)))
    edit = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    char = data.draw(st.sampled_from(string.printable + "é\x00"))
    if edit == "insert":
        mutated = text[:position] + char + text[position:]
    elif edit == "delete":
        mutated = text[:position] + text[position + 1 :]
    else:
        mutated = text[:position] + char + text[position + 1 :]
    try:
        parsed = SiweMessage.parse(mutated)
    except MalformedMessage:
        return
    assert SiweMessage.parse(parsed.to_text()) == parsed


def test_pathological_input_is_refused_quickly() -> None:
    tail = "URI: a://" + "%41" * 3000 + "@" * 1000 + " "
    text = f"example.com{siwe.PREAMBLE}\n{EIP_ADDRESS}\n\n\n{tail}"
    with pytest.raises(MalformedMessage, match="URI"):
        SiweMessage.parse(text)


# ------------------------------------------------------------------------------ verification

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
DOMAIN = "registry.example.com"
URI = "https://registry.example.com/api/v1/login"
CHAIN = 324
NONCE = "k7Hq2ZpXw9LmRt4v"
ALICE = Account.from_key(b"\x11" * 32)
BOB = Account.from_key(b"\x22" * 32)


def _message(**changes: Any) -> SiweMessage:
    fields: dict[str, Any] = {
        "domain": DOMAIN,
        "address": ALICE.address,
        "statement": "Sign in to the mcpz registry",
        "uri": URI,
        "chain_id": CHAIN,
        "nonce": NONCE,
        "issued_at": NOW - timedelta(seconds=5),
        "expiration_time": NOW + timedelta(minutes=5),
    }
    fields.update(changes)
    return SiweMessage.create(**fields)


def _verify(text: str, signature: str | bytes, **changes: Any) -> str:
    options: dict[str, Any] = {
        "expected_domain": DOMAIN,
        "expected_uri": URI,
        "expected_chain_id": CHAIN,
        "now": NOW,
        "nonce": NONCE,
    }
    options.update(changes)
    return siwe.verify(text, signature, **options)


def _signed(**changes: Any) -> tuple[str, str]:
    message = _message(**changes)
    key = ALICE.key if message.address == ALICE.address else BOB.key
    return message.to_text(), siwe.sign(message, key)


def test_a_message_signed_by_eth_account_verifies() -> None:
    message = _message()
    # Signed by eth-account directly, as any wallet's personal_sign would.
    signature = Account.sign_message(encode_defunct(text=message.to_text()), ALICE.key).signature
    assert _verify(message.to_text(), "0x" + bytes(signature).hex()) == ALICE.address
    assert _verify(message.to_text(), bytes(signature)) == ALICE.address
    assert siwe.sign(message, ALICE.key) == "0x" + bytes(signature).hex()


def test_v_as_0_or_1_and_unprefixed_hex_are_accepted() -> None:
    text, signature = _signed()
    raw = bytes.fromhex(signature[2:])
    low_v = raw[:64] + bytes([raw[64] - 27])
    assert _verify(text, low_v.hex()) == ALICE.address


def test_sign_accepts_text_and_refuses_another_key() -> None:
    message = _message()
    assert siwe.sign(message.to_text(), ALICE.key) == siwe.sign(message, ALICE)
    with pytest.raises(siwe.KeyMismatch, match=ALICE.address) as caught:
        siwe.sign(message, BOB.key)
    assert isinstance(caught.value, UsageError)
    with pytest.raises(MalformedMessage):
        siwe.sign(message.to_text() + "\n", ALICE.key)


def test_a_bad_private_key_is_refused_without_showing_it() -> None:
    with pytest.raises(signing.InvalidPrivateKey) as caught:
        siwe.sign(_message(), "0x" + "00" * 32)
    assert "00" * 32 not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def _tampered() -> tuple[str, str]:
    text, signature = _signed()
    return text.replace("Sign in to the mcpz registry", "Sign in to the mcpz registry and pay"), signature


def _signed_by_bob_for_alice() -> tuple[str, str]:
    message = _message()
    raw = Account.sign_message(encode_defunct(text=message.to_text()), BOB.key).signature
    return message.to_text(), "0x" + bytes(raw).hex()


REFUSALS: list[tuple[str, Callable[[], tuple[str, str]], dict[str, Any], type[siwe.SiweError]]] = [
    ("malformed message", lambda: (_signed()[0] + "\n", _signed()[1]), {}, siwe.MalformedMessage),
    ("malformed signature: not hex", lambda: (_signed()[0], "0xnothex"), {}, siwe.MalformedSignature),
    ("malformed signature: short", lambda: (_signed()[0], _signed()[1][:-2]), {}, siwe.MalformedSignature),
    (
        "malformed signature: bad v",
        lambda: (_signed()[0], _signed()[1][:-2] + "1d"),
        {},
        siwe.MalformedSignature,
    ),
    (
        "malformed signature: r = 0",
        lambda: (_signed()[0], "0x" + "00" * 32 + "11" * 32 + "1b"),
        {},
        siwe.MalformedSignature,
    ),
    ("wrong domain", _signed, {"expected_domain": "evil.example.com"}, siwe.DomainMismatch),
    ("wrong scheme", lambda: _signed(scheme="http"), {}, siwe.DomainMismatch),
    ("wrong port", _signed, {"expected_domain": "registry.example.com:8443"}, siwe.DomainMismatch),
    ("wrong URI", _signed, {"expected_uri": "https://registry.example.com/login"}, siwe.UriMismatch),
    ("wrong chain id", _signed, {"expected_chain_id": 1}, siwe.ChainIdMismatch),
    ("expired", _signed, {"now": NOW + timedelta(minutes=7)}, siwe.MessageExpired),
    (
        "too old (max_age)",
        lambda: _signed(expiration_time=None),
        {"now": NOW + timedelta(hours=1), "max_age": timedelta(minutes=10)},
        siwe.MessageExpired,
    ),
    ("not yet valid", lambda: _signed(not_before=NOW + timedelta(minutes=2)), {}, siwe.MessageNotYetValid),
    (
        "issued in the future",
        lambda: _signed(issued_at=NOW + timedelta(minutes=2)),
        {},
        siwe.MessageNotYetValid,
    ),
    ("tampered message", _tampered, {}, siwe.TamperedMessage),
    ("signed by another key", _signed_by_bob_for_alice, {}, siwe.TamperedMessage),
    ("wrong signer", _signed, {"expected_address": BOB.address}, siwe.WrongSigner),
    ("unknown nonce", _signed, {"nonce": "aaaaaaaaaaaaaaaa"}, siwe.NonceRefused),
    ("replayed nonce", _signed, {"nonce": lambda nonce: False}, siwe.NonceRefused),
]


@pytest.mark.parametrize(("case", "make", "options", "error"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_has_its_own_error(
    case: str, make: Callable[[], tuple[str, str]], options: dict[str, Any], error: type[siwe.SiweError]
) -> None:
    text, signature = make()
    with pytest.raises(siwe.SiweError) as caught:
        _verify(text, signature, **options)
    assert type(caught.value) is error
    assert isinstance(caught.value, AuthError)
    assert str(caught.value)


def test_refusal_classes_and_codes_are_distinct() -> None:
    classes: list[type[siwe.SiweError]] = [
        siwe.MalformedMessage,
        siwe.MalformedSignature,
        siwe.DomainMismatch,
        siwe.UriMismatch,
        siwe.ChainIdMismatch,
        siwe.MessageExpired,
        siwe.MessageNotYetValid,
        siwe.TamperedMessage,
        siwe.WrongSigner,
        siwe.NonceRefused,
    ]
    assert len({c.code for c in classes}) == len(classes)
    assert all(issubclass(c, siwe.SiweError) for c in classes)
    assert issubclass(siwe.MalformedSignature, signing.MalformedSignature)


def test_a_replayed_nonce_is_refused_and_a_bad_signature_does_not_burn_the_nonce() -> None:
    issued = {NONCE}
    calls: list[str] = []

    def consume(nonce: str) -> bool:
        calls.append(nonce)
        if nonce in issued:
            issued.remove(nonce)
            return True
        return False

    tampered_text, tampered_signature = _tampered()
    with pytest.raises(siwe.TamperedMessage):
        _verify(tampered_text, tampered_signature, nonce=consume)
    with pytest.raises(siwe.MessageExpired):
        _verify(*_signed(), nonce=consume, now=NOW + timedelta(hours=1))
    assert calls == [] and issued == {NONCE}  # only a message that passed every other check reaches it

    text, signature = _signed()
    assert _verify(text, signature, nonce=consume) == ALICE.address
    with pytest.raises(siwe.NonceRefused):
        _verify(text, signature, nonce=consume)
    assert calls == [NONCE, NONCE]


def test_domain_matching_follows_eip_4361_defaults() -> None:
    text, signature = _signed()  # no scheme, no port: https on 443
    for expected in [
        "registry.example.com",
        "https://registry.example.com",
        "https://Registry.Example.COM:443/",
    ]:
        assert _verify(text, signature, expected_domain=expected) == ALICE.address
    assert _verify(text, signature, expected_domain=["localhost:8080", DOMAIN]) == ALICE.address
    with pytest.raises(siwe.DomainMismatch):
        _verify(text, signature, expected_domain="http://registry.example.com")

    local = _message(scheme="http", domain="127.0.0.1:8080")
    signature = siwe.sign(local, ALICE.key)
    assert _verify(local.to_text(), signature, expected_domain="http://127.0.0.1:8080") == ALICE.address
    with pytest.raises(siwe.DomainMismatch):
        _verify(local.to_text(), signature, expected_domain="127.0.0.1:8080")  # that would be https


def test_uri_matching_is_exact() -> None:
    text, signature = _signed()
    assert _verify(text, signature, expected_uri=["https://other.example/", URI]) == ALICE.address
    with pytest.raises(siwe.UriMismatch):
        _verify(text, signature, expected_uri=URI + "/")


def test_clock_skew_bounds() -> None:
    text, signature = _signed(
        issued_at=NOW + timedelta(seconds=59), expiration_time=NOW - timedelta(seconds=59)
    )
    assert _verify(text, signature) == ALICE.address
    with pytest.raises(siwe.MessageNotYetValid):
        _verify(text, signature, clock_skew=timedelta(seconds=30))
    text, signature = _signed(expiration_time=NOW - timedelta(seconds=60))
    with pytest.raises(siwe.MessageExpired):
        _verify(text, signature)
    with pytest.raises(ValueError, match="aware"):
        _verify(text, signature, now=datetime(2025, 6, 1))


def test_contract_wallets_through_the_eip_1271_hook() -> None:
    contract = to_checksum_address("0x" + "ab" * 20)
    message = _message(address=contract)
    text = message.to_text()
    seen: list[tuple[str, bytes, bytes]] = []

    def contract_check(address: str, message_hash: bytes, signature: bytes) -> bool:
        seen.append((address, message_hash, signature))
        return signature == b"\x01" * 130  # e.g. two owners' signatures of a 2-of-n multisig

    assert _verify(text, "0x" + "01" * 130, contract_check=contract_check) == contract
    assert seen == [(contract, signing.personal_hash(text.encode()), b"\x01" * 130)]
    assert seen[0][1] == bytes(defunct_hash_message(text=text))

    with pytest.raises(siwe.MalformedSignature):  # not an ECDSA signature, and no contract vouched
        _verify(text, "0x" + "02" * 130, contract_check=contract_check)
    with pytest.raises(siwe.MalformedSignature):  # no hook: a contract signature cannot be checked
        _verify(text, "0x" + "01" * 130)
    bob_signature = Account.sign_message(encode_defunct(text=text), BOB.key).signature
    with pytest.raises(siwe.TamperedMessage):
        _verify(text, bytes(bob_signature), contract_check=contract_check)

    seen.clear()
    assert _verify(*_signed(), contract_check=contract_check) == ALICE.address
    assert seen == []  # an EOA signature never asks the chain


@settings(max_examples=25, deadline=None)
@given(private_keys, st.none() | st.text(alphabet=STATEMENT_CHARS, max_size=40), st.integers(0, 2**32))
def test_any_signed_message_verifies(key: bytes, statement: str | None, chain_id: int) -> None:
    address = str(Account.from_key(key).address)
    message = _message(address=address, statement=statement, chain_id=chain_id)
    signature = siwe.sign(message, key)
    assert _verify(message.to_text(), signature, expected_chain_id=chain_id) == address
