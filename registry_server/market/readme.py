"""A README's markdown as HTML that is safe to put in a page. Pure.

markdown-it-py renders CommonMark (plus tables and strikethrough) with raw HTML turned off, so
`<script>` and any other tag in the source is shown as text; its link check already refuses
`javascript:`, `vbscript:`, `file:` and `data:` URLs. The result then goes through nh3 (the
Ammonia sanitiser) with an allow-list of tags, attributes and URL schemes, and every link gets
`rel="nofollow noopener noreferrer"`: two independent layers, so a bug in one is not a hole.
"""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt

MAX_SOURCE = 256 * 1024
"""README bytes rendered at most; the rest is cut (and said so)."""

TAGS = {
    "a", "abbr", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
    "hr", "i", "img", "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td",
    "th", "thead", "tr", "ul",
}  # fmt: skip
ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "code": {"class"},
    "th": {"align"},
    "td": {"align"},
    "ol": {"start"},
}
SCHEMES = {"http", "https", "mailto"}

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable(["table", "strikethrough"])


def render(source: str) -> str:
    """Sanitised HTML for the markdown `source`."""
    truncated = len(source.encode("utf-8", "replace")) > MAX_SOURCE
    if truncated:
        source = source.encode("utf-8", "replace")[:MAX_SOURCE].decode("utf-8", "ignore")
    html = _markdown.render(source)
    if truncated:
        html += "<p><em>(README truncated)</em></p>"
    return sanitise(html)


def sanitise(html: str) -> str:
    """Only allow-listed tags, attributes and URL schemes remain."""
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=SCHEMES,
        link_rel="nofollow noopener noreferrer",
        strip_comments=True,
    )
