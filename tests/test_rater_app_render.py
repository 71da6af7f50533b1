"""apps/render.py: untrusted model output becomes inert HTML (the browser half is in test_rater_app_browser.py)."""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.render import render_conversation, render_markdown, sanitize

ATTACKS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)></svg>",
    "<iframe src='http://evil.example/'></iframe>",
    "<a href='javascript:alert(1)'>x</a>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click](&#106;avascript:alert(1))",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[vb](vbscript:msgbox(1))",
    "![pixel](http://evil.example/track.png)",
    "![pixel](https://evil.example/track.png \"title\")",
    "<http://evil.example/x>",
    "<style>@import url(http://evil.example/x.css)</style>",
    "<link rel=stylesheet href=http://evil.example/y.css>",
    "```html\n<script>alert(1)</script>\n```",
    "```x\" onmouseover=\"alert(1)\n```",
    "<div style=\"background:url(http://evil.example/z)\">x</div>",
]


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "img", "iframe", "svg", "style", "link", "object", "embed", "video", "audio", "source",
                   "meta", "base", "form", "input", "frame", "math"}:
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            value = "".join((value or "").split()).lower()
            if name.startswith("on") or name in {"style", "src", "srcset", "background", "poster", "formaction"}:
                self.found.append(f"{tag}[{name}]")
            if name in {"href", "action", "cite"} and ":" in value.split("/")[0] \
                    and not value.startswith(("http:", "https:", "mailto:")):
                self.found.append(f"{tag}[{name}={value}]")


def _dangerous(html: str) -> list[str]:
    """Every element or attribute in rendered HTML that could run code or fetch something by itself."""
    parser = _Elements()
    parser.feed(html)
    parser.close()
    return parser.found


def test_attacks_come_out_inert():
    for attack in ATTACKS:
        out = render_markdown(attack)
        assert _dangerous(out) == [], (attack, out)


def test_markdown_still_renders():
    out = render_markdown("# Title\n\n**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n[docs](https://example.org)")
    assert "<h1>Title</h1>" in out and "<strong>bold</strong>" in out and "<code>code</code>" in out
    assert "<table>" in out and "<td>1</td>" in out
    assert '<a href="https://example.org"' in out and 'rel="noopener noreferrer nofollow"' in out


def test_code_is_highlighted_with_pygments_classes_only():
    out = render_markdown("```python\ndef f(x):\n    return x + 1\n```")
    assert '<span class="k">def</span>' in out and '<span class="nf">f</span>' in out
    # A fence's info string cannot smuggle the page's own classes in.
    out = render_markdown("```fixed inset-0 z-50\nx\n```")
    assert "inset" not in out and "language-" not in out


def test_remote_images_become_a_visible_placeholder():
    out = render_markdown("see ![chart](http://evil.example/c.png)")
    assert "[image not loaded: chart]" in out and "<img" not in out


def test_conversation_labels_each_turn_and_escapes_roles():
    out = render_conversation([{"role": "user", "content": "hi"}, {"role": "<b onclick=x>bot", "content": "**yo**"}])
    assert out.count('class="pf-turn"') == 2 and "<strong>yo</strong>" in out
    assert _dangerous(out) == [] and "&lt;b onclick=x&gt;bot" in out


def test_sanitize_alone_strips_raw_html_attacks():
    # The last layer holds even if the Markdown renderer let raw HTML through.
    for attack in ATTACKS:
        assert _dangerous(sanitize(attack)) == [], attack


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("<>\"'=/:;()[]!#`*-_ \nabcjsvxlimgonerrhtp&{}$")), max_size=120))
def test_no_input_produces_active_content(text):
    assert _dangerous(render_markdown(text)) == []
