"""Structured logs: one JSON object per line, with the request id when there is one."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# What a request's lines say about whom and what it is for (account, agent), filled in as it is
# learned. A dict the request's middleware made: dependencies run in worker threads with a copy of
# the context, and a copy still holds this same dict.
_fields: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("log_fields", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            line["request_id"] = rid
        fields = _fields.get()
        if fields:
            line.update(fields)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def note(**fields: str) -> None:
    """Add `fields` to every further log line of the current request (nothing outside one)."""
    held = _fields.get()
    if held is not None:
        held.update(fields)


def begin_request() -> contextvars.Token[dict[str, str] | None]:
    """Start a request's fields (see `note`); give the token to `end_request` when it is done."""
    return _fields.set({})


def end_request(token: contextvars.Token[dict[str, str] | None]) -> None:
    _fields.reset(token)


def configure(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("registry_server", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # Our middleware logs every request as JSON; uvicorn's access log would say it twice.
    logging.getLogger("uvicorn.access").disabled = True
