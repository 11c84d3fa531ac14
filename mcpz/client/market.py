"""The marketplace from the client side: search, listings, reviews (the `/v1/market/...` API).

Every answer is a typed dataclass; `to_json()` gives the plain dict `--json` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mcpz.client.registry import RegistryClient
from mcpz.errors import UsageError
from mcpz.names import AgentName

SORTS = ("relevance", "popular", "rating", "new")
KINDS = ("agent", "plugin")
MAX_LIMIT = 100


@dataclass(frozen=True)
class Listing:
    name: str
    description: str
    version: str
    kind: str
    license: str
    tags: list[str]
    tools: list[str]
    pricing: str
    rating: float | None
    rating_bayes: float
    reviews: int
    calls_30d: int
    callers_30d: int
    listed: bool
    created_at: str
    updated_at: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Listing:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SearchResults:
    query: str
    """The terms searched for; a corrected typo shows here."""
    corrected: bool
    suggestions: list[str]
    more: bool
    results: list[Listing]


@dataclass(frozen=True)
class Figures:
    calls_30d: int
    callers_30d: int
    ok_30d: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class VersionInfo:
    version: str
    commit: str
    yanked: bool
    yank_reason: str
    published_at: str
    tools: list[dict[str, Any]] | None
    tools_digest: str | None
    tools_observed: bool
    signers: list[str]


@dataclass(frozen=True)
class ToolChanges:
    older: str
    newer: str
    added: list[str]
    removed: list[str]
    changed: list[str]
    breaking: bool


@dataclass(frozen=True)
class ListingInfo:
    listing: Listing
    namespace: str
    owner_address: str | None
    readme_html: str
    tools: list[dict[str, Any]]
    versions: list[VersionInfo]
    changelog: list[ToolChanges]
    figures: Figures
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return self.raw


@dataclass(frozen=True)
class Review:
    id: int
    agent: str
    reviewer: str
    stars: int
    text: str
    version: str
    calls: int
    created_at: str
    updated_at: str
    edits: int
    reply: str | None
    replied_by: str | None
    hidden: bool
    reports: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Review:
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _name(text: str) -> str:
    return str(AgentName.parse(text))


def _info(data: dict[str, Any]) -> ListingInfo:
    return ListingInfo(
        listing=Listing.from_json(data),
        namespace=data["namespace"],
        owner_address=data["owner_address"],
        readme_html=data["readme_html"],
        tools=data["tools_detail"],
        versions=[
            VersionInfo(
                version=v["version"],
                commit=v["commit"],
                yanked=v["yanked"],
                yank_reason=v["yank_reason"],
                published_at=v["published_at"],
                tools=v["tools"],
                tools_digest=v["tools_digest"],
                tools_observed=v["tools_observed"],
                signers=[s["signer"] for s in v["signatures"]],
            )
            for v in data["versions"]
        ],
        changelog=[
            ToolChanges(
                older=c["older"],
                newer=c["newer"],
                added=c["added"],
                removed=c["removed"],
                changed=[t["tool"] for t in c["changed"]],
                breaking=c["breaking"],
            )
            for c in data["changelog"]
        ],
        figures=Figures(**data["figures"]),
        raw=data,
    )


class Market:
    """The marketplace of the registry `client` talks to."""

    def __init__(self, client: RegistryClient) -> None:
        self.client = client

    async def search(
        self,
        query: str = "",
        *,
        kind: str | None = None,
        tag: str | None = None,
        free: bool | None = None,
        min_rating: float | None = None,
        namespace: str | None = None,
        sort: str = "relevance",
        limit: int = 20,
        offset: int = 0,
    ) -> SearchResults:
        if sort not in SORTS:
            raise UsageError(f'unknown sort "{sort}"', hint=f"use one of: {', '.join(SORTS)}")
        if kind is not None and kind not in KINDS:
            raise UsageError(f'unknown kind "{kind}"', hint=f"use one of: {', '.join(KINDS)}")
        if not 1 <= limit <= MAX_LIMIT:
            raise UsageError(f"--limit must be 1 to {MAX_LIMIT}")
        if min_rating is not None and not 1 <= min_rating <= 5:
            raise UsageError("--min-rating must be 1 to 5")
        params: dict[str, Any] = {"q": query, "sort": sort, "limit": limit, "offset": offset}
        optional = {"kind": kind, "tag": tag, "min_rating": min_rating, "namespace": namespace}
        params.update({key: value for key, value in optional.items() if value is not None})
        if free is not None:
            params["free"] = "true" if free else "false"
        data = await self.client.json("GET", "/v1/market/search", params=params)
        return SearchResults(
            query=data["query"],
            corrected=data["corrected"],
            suggestions=data["suggestions"],
            more=data["more"],
            results=[Listing.from_json(item) for item in data["results"]],
        )

    async def info(self, name: str) -> ListingInfo:
        return _info(await self.client.json("GET", f"/v1/market/agents/{_name(name)}"))

    async def reviews(self, name: str, *, limit: int = 50, offset: int = 0) -> list[Review]:
        data = await self.client.json(
            "GET", f"/v1/market/agents/{_name(name)}/reviews", params={"limit": limit, "offset": offset}
        )
        return [Review.from_json(item) for item in data["reviews"]]

    async def review(self, name: str, stars: int, text: str = "") -> Review:
        """Write or replace your review; the registry refuses it unless you called the agent."""
        if not 1 <= stars <= 5:
            raise UsageError(f"--stars must be 1 to 5, not {stars}")
        data = await self.client.json(
            "PUT", f"/v1/market/agents/{_name(name)}/review", json={"stars": stars, "text": text}
        )
        return Review.from_json(data)

    async def reply(self, review_id: int, text: str) -> Review:
        if not text.strip():
            raise UsageError("the reply is empty", hint="pass it with -m TEXT")
        data = await self.client.json("POST", f"/v1/market/reviews/{review_id}/reply", json={"text": text})
        return Review.from_json(data)

    async def report(self, review_id: int, reason: str = "") -> Review:
        data = await self.client.json(
            "POST", f"/v1/market/reviews/{review_id}/report", json={"reason": reason}
        )
        return Review.from_json(data)

    async def set_listed(self, name: str, listed: bool) -> Listing:
        action = "list" if listed else "unlist"
        return Listing.from_json(await self.client.json("POST", f"/v1/market/agents/{_name(name)}/{action}"))
