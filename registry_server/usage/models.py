"""The table of usage events: one row per `tools/call` the gateway relayed.

Schema changes go through Alembic (migration 0004). The table shares `models.Base`, so its foreign
key to accounts resolves. Rows are written only by `usage.UsageRecorder`, idempotently by `id`.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from registry_server.orm import Base
from registry_server.usage.events import UsageEvent


class UsageEventRow(Base):
    """A `usage.events.UsageEvent` as stored, with the digest that tells a retry from a conflict."""

    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_account_started", "account_id", "started_us"),
        Index("ix_usage_agent_started", "agent", "started_us"),
        # Priced events not rated yet: what billing's rater claims (migration 0011).
        Index(
            "ix_usage_unrated",
            "started_us",
            sqlite_where=text("price > 0 AND rated IS NULL"),
            postgresql_where=text("price > 0 AND rated IS NULL"),
        ),
        # The calls paid from one hold: what releasing it counts.
        Index("ix_usage_hold", "hold", sqlite_where=text("hold != ''"), postgresql_where=text("hold != ''")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    agent: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    tool: Mapped[str] = mapped_column(String(256))
    deployment: Mapped[str] = mapped_column(String(200))
    replica_id: Mapped[str] = mapped_column(String(128))
    node_id: Mapped[str] = mapped_column(String(128))
    # Microseconds, as integers: they compare and sum exactly on both backends.
    started_us: Mapped[int] = mapped_column(BigInteger)
    duration_us: Mapped[int] = mapped_column(BigInteger)
    outcome: Mapped[str] = mapped_column(String(32))
    bytes_in: Mapped[int] = mapped_column(BigInteger)
    bytes_out: Mapped[int] = mapped_column(BigInteger)
    # sha256 of the event's canonical JSON (`UsageEvent.digest`).
    digest: Mapped[str] = mapped_column(String(64))
    # Billing: the price the gateway captured (0: free, or not charged), its plan and hold, and the
    # ledger transaction that rated it (None until rated; never set twice).
    price: Mapped[int] = mapped_column(BigInteger, default=0)
    plan: Mapped[str] = mapped_column(String(16), default="")
    hold: Mapped[str] = mapped_column(String(64), default="")
    rated: Mapped[str | None] = mapped_column(String(128), nullable=True)

    def event(self) -> UsageEvent:
        return UsageEvent.from_dict({name: getattr(self, name) for name in UsageEvent.__dataclass_fields__})
