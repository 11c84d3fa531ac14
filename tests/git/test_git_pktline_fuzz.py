"""Garbage pkt-lines, read as the registry reads a fetch: only git's protocol errors come out.

The fetch negotiation body goes to dulwich's upload-pack handler through `GitProtocol`, exactly
as `git_http.upload_pack` hands it over; whatever the body, the handler either answers or raises
`GitProtocolError` (which the route logs and ends the response on), never anything else.
(Mesh frames, SIWE messages and JSON bodies have their own garbage tests: test_mesh_protocol,
test_siwe, test_jsonlimits.)
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from dulwich.errors import GitProtocolError
from dulwich.repo import Repo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from registry_server.git.pack_reuse import ReusingUploadPackHandler
from registry_server.git.routes import GitProtocol, _Backend

WORDS = [b"want ", b"have ", b"done", b"deepen ", b"shallow ", b"filter ", b"deepen-since ", b"\n"]

payloads = st.lists(
    st.one_of(
        st.binary(max_size=40),
        st.tuples(st.sampled_from(WORDS), st.binary(max_size=44)).map(b"".join),
        st.tuples(st.sampled_from(WORDS), st.text("0123456789abcdef", min_size=40, max_size=40)).map(
            lambda t: t[0] + t[1].encode() + b"\n"
        ),
    ),
    max_size=8,
)


def pkt_lines(items: list[bytes], skews: list[int]) -> bytes:
    """`items` as pkt-lines, some with a length prefix off by `skew`, some flushes."""
    out = []
    for item, skew in zip(items, skews + [0] * len(items), strict=False):
        out.append(b"%04x" % max(0, len(item) + 4 + skew) + item if item != b"0000" else item)
    return b"".join(out)


bodies = st.one_of(
    st.binary(max_size=300),
    st.builds(
        pkt_lines,
        payloads.map(lambda items: [i if i else b"0000" for i in items]),
        st.lists(st.sampled_from([0, 0, 0, 1, -1, -4, 3]), max_size=8),
    ),
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    path: Path = tmp_path_factory.mktemp("pkt") / "a.git"
    path.mkdir()
    repository = Repo.init_bare(str(path))
    yield repository
    repository.close()


def fetch(repo: Repo, body: bytes) -> None:
    proto = GitProtocol(BytesIO(body).read, BytesIO().write)
    ReusingUploadPackHandler(_Backend(repo), ["acme/a"], proto, stateless_rpc=True).handle()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies)
def test_garbage_negotiations_raise_only_git_protocol_errors(repo: Any, body: bytes) -> None:
    try:
        fetch(repo, body)
    except GitProtocolError:
        pass


def test_an_empty_pkt_line_does_not_fail_an_assertion(repo: Repo) -> None:
    """dulwich's ReceivableProtocol asserted on the zero-byte read an empty pkt-line ("0004") asks."""
    try:
        fetch(repo, b"0004" + b"0014" + b"x" * 16)
    except GitProtocolError:
        pass
