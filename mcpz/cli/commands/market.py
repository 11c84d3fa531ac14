"""`mcpz market search | info | review | reviews | reply | report | list | unlist`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from mcpz.cli.common import RegistryOpt, TokenOpt, run, settings, token_for
from mcpz.cli.output import out
from mcpz.client.market import SORTS, Listing, ListingInfo, Market, Review
from mcpz.errors import AuthError

T = TypeVar("T")

# This module's commands; cli/app.py mounts them by name when one of them runs.
app = typer.Typer()
market_app = typer.Typer(
    help="The marketplace: search agents, read their listings, review the ones you used.",
    no_args_is_help=True,
)
app.add_typer(market_app, name="market")

NameArg = Annotated[str, typer.Argument(help="The agent: namespace/name.")]
ReviewIdArg = Annotated[int, typer.Argument(help="The review's id (see `mcpz market reviews NAME`).")]


def _market(
    registry: str | None, token: str | None, fn: Callable[[Market], Awaitable[T]], *, need_token: bool = False
) -> T:
    from mcpz.client.registry import connect

    url = settings(registry).registry
    secret = token_for(url, token)
    if need_token and secret is None:
        raise AuthError(f"no token for {url}", hint="run `mcpz login` or set MCPZ_TOKEN")

    async def call() -> T:
        async with connect(url, secret) as client:
            return await fn(Market(client))

    return run(call)


def _rating(listing: Listing) -> str:
    return f"{listing.rating:.1f} ({listing.reviews})" if listing.rating is not None else "-"


@market_app.command("search")
def search(
    query: Annotated[list[str] | None, typer.Argument(help="Words to find (none: browse).")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="agent or plugin.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only listings with this tag.")] = None,
    free: Annotated[bool, typer.Option("--free", help="Only free listings.")] = False,
    min_rating: Annotated[float | None, typer.Option("--min-rating", help="Average stars, 1-5.")] = None,
    sort: Annotated[str, typer.Option("--sort", help=f"One of: {', '.join(SORTS)}.")] = "relevance",
    limit: Annotated[int, typer.Option("--limit", "-n", help="Results at most (1-100).")] = 20,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Search the marketplace: name, description, README, tags, tool names and descriptions.

    Example: mcpz market search weather forecast --sort popular
    """
    text = " ".join(query or [])
    found = _market(
        registry,
        token,
        lambda m: m.search(
            text,
            kind=kind,
            tag=tag,
            free=True if free else None,
            min_rating=min_rating,
            sort=sort,
            limit=limit,
        ),
    )
    o = out()
    if found.corrected:
        o.info(f'showing results for "{found.query}"')
    if not found.results and found.suggestions:
        o.info("no agent matches; closest names: " + ", ".join(found.suggestions))

    def render(console: Console) -> None:
        if not found.results:
            console.print("no agent matches", markup=False)
            return
        table = Table("name", "version", "rating", "calls 30d", "tools", "description", box=None)
        for item in found.results:
            tools = ", ".join(item.tools[:3]) + (" ..." if len(item.tools) > 3 else "")
            table.add_row(
                item.name, item.version, _rating(item), str(item.calls_30d), tools, item.description
            )
        console.print(table)

    o.data([item.to_json() for item in found.results], render)


@market_app.command("info")
def info(name: NameArg, registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """A listing: description, tags, rating, usage, tools, versions and the tool changelog."""
    found: ListingInfo = _market(registry, token, lambda m: m.info(name))

    def render(console: Console) -> None:
        item, figures = found.listing, found.figures
        lines = [
            f"{item.name} {item.version}" + ("" if item.listed else "  (unlisted)"),
            item.description,
            f"kind: {item.kind}   license: {item.license or '-'}   pricing: {item.pricing}",
            f"tags: {', '.join(item.tags) or '-'}",
            f"owner wallet: {found.owner_address or '-'}",
            f"rating: {_rating(item)}",
            f"calls 30d: {figures.calls_30d}   callers: {figures.callers_30d}   success: "
            + (f"{figures.success_rate:.1%}" if figures.success_rate is not None else "-")
            + (
                f"   p50 {figures.p50_ms:.1f} ms   p95 {figures.p95_ms:.1f} ms"
                if figures.p50_ms is not None
                else ""
            ),
        ]
        for line in lines:
            console.print(line, markup=False)
        if found.tools:
            console.print("tools:", markup=False)
            for tool in found.tools:
                console.print(f"  {tool['name']}  {tool.get('description') or ''}", markup=False)
        console.print("versions:", markup=False)
        for v in reversed(found.versions):
            mark = "  (yanked)" if v.yanked else ""
            tools = "no tools recorded" if v.tools is None else f"{len(v.tools)} tools"
            observed = ", observed" if v.tools_observed else ""
            console.print(f"  {v.version}  {v.published_at[:10]}  {tools}{observed}{mark}", markup=False)
        for change in found.changelog:
            parts = [f"+{t}" for t in change.added] + [f"-{t}" for t in change.removed]
            parts += [f"~{t}" for t in change.changed]
            flag = "  BREAKING" if change.breaking else ""
            console.print(
                f"  {change.older} -> {change.newer}: {' '.join(parts) or 'no tool changes'}{flag}",
                markup=False,
            )

    out().data(found.to_json(), render)


def _render_reviews(reviews: list[Review]) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        if not reviews:
            console.print("no reviews", markup=False)
        for r in reviews:
            edited = f", edited {r.edits}x" if r.edits else ""
            stars = "*" * r.stars + "." * (5 - r.stars)
            console.print(
                f"#{r.id} {stars} {r.reviewer} ({r.calls} calls, v{r.version}{edited})", markup=False
            )
            if r.text:
                console.print(f"  {r.text}", markup=False)
            if r.reply:
                console.print(f"  reply from {r.replied_by}: {r.reply}", markup=False)

    return render


@market_app.command("reviews")
def reviews(
    name: NameArg,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Reviews at most (1-100).")] = 50,
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """An agent's reviews, newest first, each with the reviewer's number of calls."""
    found = _market(registry, token, lambda m: m.reviews(name, limit=limit))
    out().data([r.to_json() for r in found], _render_reviews(found))


@market_app.command("review")
def review(
    name: NameArg,
    stars: Annotated[int, typer.Option("--stars", "-s", help="1 to 5.")],
    message: Annotated[str, typer.Option("--message", "-m", help="What you think of it.")] = "",
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Review an agent you have called (one review per agent: writing again replaces it)."""
    written = _market(registry, token, lambda m: m.review(name, stars, message), need_token=True)
    out().data(written.to_json(), _render_reviews([written]))


@market_app.command("reply")
def reply(
    review_id: ReviewIdArg,
    message: Annotated[str, typer.Option("--message", "-m", help="Your reply.")],
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Reply to a review of your agent (once per review)."""
    written = _market(registry, token, lambda m: m.reply(review_id, message), need_token=True)
    out().data(written.to_json(), _render_reviews([written]))


@market_app.command("report")
def report(
    review_id: ReviewIdArg,
    message: Annotated[str, typer.Option("--message", "-m", help="Why it should go.")] = "",
    registry: RegistryOpt = None,
    token: TokenOpt = None,
) -> None:
    """Report a review (spam, abuse); enough reports hide it until an admin decides."""
    found = _market(registry, token, lambda m: m.report(review_id, message), need_token=True)
    o = out()
    o.data(found.to_json(), lambda console: console.print(f"reported review #{found.id}", markup=False))


def _set_listed(name: str, listed: bool, registry: str | None, token: str | None) -> None:
    item = _market(registry, token, lambda m: m.set_listed(name, listed), need_token=True)
    state = "listed" if item.listed else "unlisted"
    out().data(item.to_json(), lambda console: console.print(f"{item.name} is {state}", markup=False))


@market_app.command("list")
def list_(name: NameArg, registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Show your agent in search and the registry API again."""
    _set_listed(name, True, registry, token)


@market_app.command("unlist")
def unlist(name: NameArg, registry: RegistryOpt = None, token: TokenOpt = None) -> None:
    """Leave your agent out of search and the registry API (its page and releases stay)."""
    _set_listed(name, False, registry, token)
