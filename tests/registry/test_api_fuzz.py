"""Schemathesis against the registry's own OpenAPI document, in-process (ASGI), with and without a
token: no answer is a 5xx, and every answer matches what the document says of it.

Bounded to run in seconds (MCPZ_FUZZ_EXAMPLES examples per operation, 5 by default);
`bench/fuzz_api.py` runs the same test for longer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from registry_server.accounts import service as accounts
from registry_server.accounts import tokens
from registry_server.app import create_app
from registry_server.settings import RegistrySettings
from registry_server.state import RegistryState

# No 5xx, and every answer as documented: status, content type, headers, body. Not schemathesis'
# positive_data_acceptance: free-form strings the routes parse further (times like "7d", a message to
# sign) are documented as strings with a 400, and a 400 for a schema-valid string is not a defect.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = int(os.environ.get("MCPZ_FUZZ_EXAMPLES", "5"))


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    data = tmp_path_factory.mktemp("fuzz-registry")
    config = RegistrySettings.load(data_dir=data, env={})
    state = RegistryState.open(config)
    try:
        with state.db.session() as session:
            account = accounts.create_account(session, "fuzzer")
            _row, token = accounts.create_token(
                session, account, tokens.parse_scopes(",".join(tokens.SCOPES)), expires_in=None
            )
    finally:
        state.close()
    app = create_app(config)
    yield schemathesis.openapi.from_asgi("/openapi.json", app), token
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="MCPZ_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def fuzz(schema: Any, headers: dict[str, str]) -> list[str]:
    """Every operation of `schema` for EXAMPLES cases; what failed, one entry per operation.

    (A loop rather than schemathesis' pytest plugin, whose lazy fixtures need pytest internals
    that pytest 9 no longer has.)"""
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if headers and operation.label == "DELETE /v1/keys/{key_id}":
            # It would revoke the fuzzer's own key, and every later call would be a 401; the
            # anonymous run covers it, test_registry_api revokes keys for real.
            continue

        @given(case=operation.as_strategy())
        @BOUNDED
        def call(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            call()
        except BaseException as e:  # every failing operation is reported, not only the first
            if isinstance(e, KeyboardInterrupt):
                raise
            failures.append(f"{operation.label}: {e}")
    return failures


def test_anonymous_calls_answer_as_the_document_says(fuzz_world: tuple[Any, str]) -> None:
    failures = fuzz(fuzz_world[0], {})
    assert not failures, "\n\n".join(failures)


def test_calls_with_a_token_answer_as_the_document_says(fuzz_world: tuple[Any, str]) -> None:
    failures = fuzz(fuzz_world[0], {"Authorization": f"Bearer {fuzz_world[1]}"})
    assert not failures, "\n\n".join(failures)
