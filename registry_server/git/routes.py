"""Git's smart HTTP protocol at /git/{namespace}/{name}.git, served by dulwich in worker threads.

The ASGI side streams the request body in and the response out; dulwich's handlers run in a
thread and exchange bytes with it through bounded memory streams. Responses are buffered into
~64 KB chunks: one ASGI message per pkt-line made large clones several times slower.
"""

from __future__ import annotations

import logging
import tempfile
import zlib
from collections.abc import Callable
from io import BytesIO
from typing import IO, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from dulwich.errors import GitProtocolError
from dulwich.protocol import ReceivableProtocol, pkt_line
from dulwich.repo import MemoryRepo
from dulwich.server import Backend
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from registry_server.accounts.auth import Forbidden, Unauthenticated, principal_from_headers, require
from registry_server.body_limits import body_limit
from registry_server.git.pack_reuse import ReusingUploadPackHandler
from registry_server.git.receive import PushContext, RegistryReceivePack
from registry_server.git.recovery import remove_if_empty
from registry_server.http import repository_agent_name
from registry_server.openapi import AgentPart, Namespace, text_errors
from registry_server.state import RegistryState

# The logger keeps its name from before the domain packages, so logging configs still match.
log = logging.getLogger("registry_server.git_http")
CHUNK = 64 * 1024
INFLATE_STEP = 256 * 1024  # most bytes one zlib call may produce from a gzip body
SERVICES = ("git-upload-pack", "git-receive-pack")

router = APIRouter(tags=["git"])


class _Backend(Backend):  # type: ignore[misc]
    def __init__(self, repo: Any) -> None:
        self.repo = repo

    def open_repository(self, path: str) -> Any:
        return self.repo


class GitProtocol(ReceivableProtocol):  # type: ignore[misc]
    """dulwich's protocol as the registry reads it: an empty pkt-line ("0004") reads as an empty
    line instead of failing an `assert` in `read(0)` (an AssertionError out of a worker thread)."""

    def read(self, size: int) -> bytes:
        return b"" if size == 0 else bytes(super().read(size))


class _ChunkWriter:
    """Collects handler output into chunks and hands each to the event loop."""

    def __init__(self, send_chunk: Callable[[bytes], None]) -> None:
        self._buf = bytearray()
        self._send = send_chunk

    def write(self, data: bytes) -> int:
        self._buf += data
        if len(self._buf) >= CHUNK:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buf:
            self._send(bytes(self._buf))
            self._buf.clear()


class GitResponse(Response):
    """Runs a dulwich handler in a thread and streams what it writes."""

    def __init__(
        self, media_type: str, run: Callable[[Callable[[bytes], int]], None], prefix: bytes = b""
    ) -> None:
        super().__init__(
            media_type=media_type, headers={"Cache-Control": "no-cache, max-age=0, must-revalidate"}
        )
        self._run = run
        self._prefix = prefix
        # Streamed: the length is not known up front.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        sender, receiver = anyio.create_memory_object_stream[bytes](8)

        def work() -> None:
            writer = _ChunkWriter(lambda chunk: anyio.from_thread.run(sender.send, chunk))
            try:
                if self._prefix:
                    writer.write(self._prefix)
                self._run(writer.write)
                writer.flush()
            except GitProtocolError as e:  # a malformed or cut-off request: the client's to see
                log.info("git client sent a request the protocol does not allow: %s", e)
            finally:
                anyio.from_thread.run(sender.aclose)

        async with anyio.create_task_group() as tg:

            async def worker() -> None:
                await anyio.to_thread.run_sync(work)

            tg.start_soon(worker)
            async with receiver:
                async for chunk in receiver:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _auth_error(e: Unauthenticated | Forbidden) -> Response:
    if isinstance(e, Unauthenticated):
        return PlainTextResponse(
            f"{e.message}\n", status_code=401, headers={"WWW-Authenticate": 'Basic realm="mcpz"'}
        )
    return PlainTextResponse(f"{e.message}\n", status_code=403)


class BodyRefused(Exception):
    """A git request body that is not read on: too large (413) or not valid gzip (400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        # The rest of the body stays unread: the connection cannot carry another request.
        return PlainTextResponse(
            f"{self.message}\n", status_code=self.status, headers={"Connection": "close"}
        )


class _Spool:
    """Writes a body into a temp file, inflating gzip at most INFLATE_STEP bytes at a time, and
    refuses it as soon as it passes `limit` bytes (inflated): a small gzip of zeros never gets to
    make gigabytes, in memory or on disk."""

    def __init__(self, limit: int, gzip: bool) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=4 * 1024 * 1024)
        self.limit = limit
        self.size = 0
        self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise BodyRefused(413, f"request body over the limit of {self.limit} bytes")
        self.file.write(data)

    def feed(self, chunk: bytes) -> None:
        """Inflates `chunk` (runs in a worker thread: inflating is CPU work)."""
        assert self.inflate is not None
        data = chunk
        try:
            while data and not self.inflate.eof:
                self.write(self.inflate.decompress(data, INFLATE_STEP))
                data = self.inflate.unconsumed_tail
        except zlib.error as e:
            raise BodyRefused(400, f"the gzip body is corrupt: {e}") from None

    def finish(self) -> IO[bytes]:
        if self.inflate is not None:
            try:
                while not self.inflate.eof and (rest := self.inflate.decompress(b"", INFLATE_STEP)):
                    self.write(rest)
            except zlib.error as e:
                raise BodyRefused(400, f"the gzip body is corrupt: {e}") from None
        self.file.seek(0)
        return self.file


async def _spool_body(request: Request, limit: int) -> IO[bytes]:
    """The request body, un-gzipped, in a temp file; BodyRefused past `limit` bytes or on bad gzip."""
    spool = _Spool(limit, request.headers.get("content-encoding", "").lower() == "gzip")
    try:
        async for chunk in request.stream():
            if spool.inflate is not None:
                await anyio.to_thread.run_sync(spool.feed, chunk)
            else:
                spool.write(chunk)
        return await anyio.to_thread.run_sync(spool.finish)
    except BaseException:
        spool.file.close()
        raise


@router.get(
    "/git/{namespace}/{name}/info/refs",
    summary="Git smart HTTP ref advertisement",
    responses=text_errors(401, 403, 404),
)
async def info_refs(namespace: Namespace, name: AgentPart, request: Request, service: str = "") -> Response:
    state: RegistryState = request.app.state.registry
    agent = repository_agent_name(namespace, name)
    if agent is None:
        return PlainTextResponse("not a repository\n", status_code=404)
    if service not in SERVICES:
        return PlainTextResponse("only git's smart HTTP protocol is served\n", status_code=403)
    try:
        principal = principal_from_headers(state.db, request.headers)
        if service == "git-receive-pack":
            require(principal, "publish", agent.split("/")[0], db=state.db)
    except (Unauthenticated, Forbidden) as e:
        return _auth_error(e)
    repo: Any = state.repos.open(agent)
    if repo is None:
        if service == "git-upload-pack":
            return PlainTextResponse(f"no agent {agent}\n", status_code=404)
        # A push to a new name: advertise no refs; the repository is made once the push comes.
        repo = MemoryRepo()
    prefix = pkt_line(f"# service={service}\n".encode()) + pkt_line(None)

    def run(write: Callable[[bytes], int]) -> None:
        proto = GitProtocol(BytesIO().read, write)
        handler_cls = ReusingUploadPackHandler if service == "git-upload-pack" else RegistryReceivePack
        kwargs: dict[str, Any] = {}
        if handler_cls is RegistryReceivePack:
            kwargs["ctx"] = None
        handler = handler_cls(
            _Backend(repo), [agent], proto, stateless_rpc=True, advertise_refs=True, **kwargs
        )
        handler.handle()
        repo.close()

    return GitResponse(f"application/x-{service}-advertisement", run, prefix)


@router.post(
    "/git/{namespace}/{name}/git-upload-pack",
    summary="Git smart HTTP fetch",
    responses=text_errors(401, 403, 404, 413, 415),
)
async def upload_pack(namespace: Namespace, name: AgentPart, request: Request) -> Response:
    state: RegistryState = request.app.state.registry
    agent = repository_agent_name(namespace, name)
    repo = state.repos.open(agent) if agent else None
    if repo is None or agent is None:
        return PlainTextResponse("not a repository\n", status_code=404)
    if request.headers.get("content-type") != "application/x-git-upload-pack-request":
        return PlainTextResponse("invalid content type\n", status_code=415)
    try:
        body = await _spool_body(request, state.settings.max_request_bytes)
    except BodyRefused as e:
        repo.close()
        return e.response()
    except ClientDisconnect:
        # A fetch abandoned mid-request: nobody reads this answer.
        repo.close()
        return Response(status_code=400)

    def run(write: Callable[[bytes], int]) -> None:
        sent = 0

        def counted(data: bytes) -> int:
            nonlocal sent
            sent += len(data)
            return write(data)

        outcome = "error"
        try:
            proto = GitProtocol(body.read, counted)
            ReusingUploadPackHandler(_Backend(repo), [agent], proto, stateless_rpc=True).handle()
            outcome = "ok"
        finally:
            repo.close()
            body.close()
            state.metrics.git("fetch", outcome, sent)

    return GitResponse("application/x-git-upload-pack-result", run)


@router.post(
    "/git/{namespace}/{name}/git-receive-pack",
    summary="Git smart HTTP push (publishes v* tags)",
    responses=text_errors(401, 403, 404, 413, 415),
)
async def receive_pack(namespace: Namespace, name: AgentPart, request: Request) -> Response:
    state: RegistryState = request.app.state.registry
    agent = repository_agent_name(namespace, name)
    if agent is None:
        return PlainTextResponse("not a repository\n", status_code=404)
    try:
        principal = require(
            principal_from_headers(state.db, request.headers), "publish", agent.split("/")[0], db=state.db
        )
    except (Unauthenticated, Forbidden) as e:
        return _auth_error(e)
    if request.headers.get("content-type") != "application/x-git-receive-pack-request":
        return PlainTextResponse("invalid content type\n", status_code=415)
    # Ref commands plus the pack; the pack's own limit is enforced while it is indexed, so that a
    # pack a little over it gets git's own refusal; a body far over it is refused here unread.
    try:
        body = await _spool_body(request, body_limit(request.url.path, state.settings))
    except BodyRefused as e:
        return e.response()
    except ClientDisconnect:
        # An abandoned push: nobody reads this answer, and nothing of it was kept.
        return Response(status_code=400)
    ctx = PushContext(
        name=agent,
        principal=principal,
        db=state.db,
        repos=state.repos,
        max_push_bytes=state.settings.max_push_bytes,
        on_published=state.on_published,
    )

    def run(write: Callable[[bytes], int]) -> None:
        # Made only once the whole body is here, so a client that goes away leaves nothing behind;
        # held while in use, so that another push's clean-up below leaves it alone.
        received = body.seek(0, 2)
        body.seek(0)
        outcome = "error"
        state.repos.hold(agent)
        try:
            repo = state.repos.create(agent)
            try:
                proto = GitProtocol(body.read, write)
                RegistryReceivePack(_Backend(repo), [agent], proto, ctx=ctx, stateless_rpc=True).handle()
                outcome = "ok"
            finally:
                repo.close()
        finally:
            state.metrics.git("push", outcome, received)
            body.close()
            state.repos.release(agent)
            # A refused or broken push to a new name leaves no empty repository behind.
            remove_if_empty(state.repos, agent)

    return GitResponse("application/x-git-receive-pack-result", run)
