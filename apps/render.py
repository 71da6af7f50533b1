"""Model output as safe HTML: Markdown with code highlighting, and nothing that can run or call out.

Model output is untrusted. Three layers, each enough on its own for the common attacks:
1. markdown-it with raw HTML off: `<script>`, `<img onerror=...>` and friends come out as visible text;
2. our own image rule: a Markdown image becomes a text placeholder, so no remote image is ever fetched
   (a fetch would tell an outsider that, and when, a rater looked at the item);
3. nh3 (ammonia) on the result: an allow-list of tags, attributes, CSS classes and URL schemes
   (http, https, mailto), so a bug in 1 or 2 still cannot produce a script, an event handler, a
   `javascript:` link, an image or a style attribute.
"""

from __future__ import annotations

import html
from typing import Any, Iterable

import nh3
from markdown_it import MarkdownIt
from pygments import highlight as pygments_highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.token import STANDARD_TYPES
from pygments.util import ClassNotFound

# Our own classes plus Pygments' short token classes ("k", "s2", ...): nothing else survives, so an
# output cannot borrow the page's own classes (say, a full-screen overlay) through a fence's info string.
_OWN_CLASSES = {"pf-md", "pf-turn", "pf-role", "pf-image-blocked", "highlight"}
_ALLOWED_CLASSES = _OWN_CLASSES | {c for c in STANDARD_TYPES.values() if c}
_TAGS = set(nh3.ALLOWED_TAGS) - {"img", "map", "area"}
_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "ol": {"start"},
    "th": {"align"},
    "td": {"align"},
}
# `class` is not listed above: nh3 wants it only in allowed_classes, which filters the names themselves.
_URL_SCHEMES = {"http", "https", "mailto"}

_formatter = HtmlFormatter(nowrap=True)


def _highlight(code: str, lang: str, _attrs: str) -> str:
    try:
        lexer = get_lexer_by_name(lang.strip().lower()) if lang else None
    except ClassNotFound:
        lexer = None
    body = pygments_highlight(code, lexer, _formatter) if lexer else html.escape(code)
    return f'<pre class="highlight"><code>{body}</code></pre>'


def _blocked_image(_renderer: Any, tokens: Any, idx: int, _options: Any, _env: Any) -> str:
    token = tokens[idx]
    alt = "".join(child.content for child in token.children or []) or "image"
    src = token.attrGet("src") or ""
    return (f'<span class="pf-image-blocked" title="{html.escape(str(src))}">'
            f"[image not loaded: {html.escape(alt)}]</span>")


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False,
                                   "highlight": _highlight})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _blocked_image)
    return md


_md = _markdown()


def sanitize(fragment: str) -> str:
    """The allow-list pass (layer 3): applied to everything we hand the browser as HTML."""
    return nh3.clean(
        fragment,
        tags=_TAGS,
        clean_content_tags={"script", "style"},
        attributes=_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        allowed_classes={tag: _ALLOWED_CLASSES for tag in ("code", "pre", "span", "div")},
        strip_comments=True,
    )


def render_markdown(text: str) -> str:
    """Untrusted Markdown -> sanitized HTML inside a scrolling `.pf-md` panel."""
    return sanitize(f'<div class="pf-md">{_md.render(text or "")}</div>')


def render_conversation(turns: Iterable[dict[str, Any]]) -> str:
    """A multi-turn conversation, one labelled block per turn."""
    parts = []
    for turn in turns:
        role = str(turn.get("role", "")) or "turn"
        body = _md.render(str(turn.get("content", "")))
        parts.append(f'<div class="pf-turn"><div class="pf-role">{html.escape(role)}</div>{body}</div>')
    return sanitize("".join(parts))


def code_css(scope: str = ".highlight") -> str:
    """Pygments colours for highlighted code, scoped to our panels."""
    return HtmlFormatter().get_style_defs(scope)
