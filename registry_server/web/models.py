"""Browser sessions: one row per signed-in browser, found by the sha256 of its cookie.

Schema changes go through Alembic (migration 0010).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from registry_server.orm import Base, UTCDateTime


class WebSession(Base):
    __tablename__ = "web_sessions"

    # sha256 of the cookie's secret: the secret itself is never stored.
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    # The wallet that signed the sign-in message.
    address: Mapped[str] = mapped_column(String(42))
    # Random, per session: every form of a signed-in page carries it, and every POST must match it.
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
