"""The rater app in a real browser: Debian's Chromium driven by playwright against a real `prefloop serve`.

Set PREFLOOP_SCREENSHOTS=docs/screenshots to also write the README screenshots there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import func, select

from collect import db
from collect.formats import read_records
from collect.ingest import import_dataset, import_records
from apps.rater_app import SKIP_REASONS
from collect.models import Assignment, Judgment, Rater
from collect.projects import ProjectSettings, add_rater, create_project
from tests.browser import chromium, gradio_login, running_server, wait_idle
from tests.postgres import free_port

pytestmark = pytest.mark.browser

XSS_LEFT = """Here is my answer.
<script>window.__pwned = 'script'; alert('script')</script>
<img src="http://evil.example/onerror.png" onerror="window.__pwned='onerror'">
<svg onload="window.__pwned='svg'"></svg>
<iframe src="http://evil.example/frame"></iframe>
<a href="javascript:window.__pwned='raw-link'">raw link</a>
[markdown link](javascript:window.__pwned='md-link')
![tracking pixel](http://evil.example/pixel.png)
<style>@import url(http://evil.example/x.css); body { background: url(http://evil.example/bg.png) }</style>
<link rel="stylesheet" href="http://evil.example/y.css">
<div onmouseover="window.__pwned='hover'" style="position:fixed;inset:0">hover me</div>
PAYLOAD-END-LEFT"""
XSS_RIGHT = """${window.__pwned = 'template'} {{constructor.constructor('window.__pwned = "handlebars"')()}}
<details open ontoggle="window.__pwned='toggle'"><summary>x</summary></details>
<video><source onerror="window.__pwned='video'"></video>
<object data="http://evil.example/o.swf"></object>
<form action="javascript:window.__pwned='form'"><button>go</button></form>
```html
<script>window.__pwned = 'fenced'</script>
```
PAYLOAD-END-RIGHT"""


@pytest.fixture(scope="module")
def site(tmp_path_factory, data_dir):
    """One server for the module: projects for the keyboard, XSS, sensitive-content and screenshot tests."""
    root = tmp_path_factory.mktemp("rater-browser")
    url = f"sqlite:///{root / 'prefloop.db'}"
    db.upgrade(url)
    with db.session_scope(url) as s:
        kb = create_project(s, "keyboard", ProjectSettings(overlap=1, rubric=[{"name": "helpfulness"}]))
        import_dataset(s, kb, [{"prompt": f"question {i}", "response_a": f"answer a{i}",
                                "response_b": f"answer b{i}"} for i in range(8)])
        add_rater(s, "ann", "ann-pw", projects=[kb])
        xss = create_project(s, "xss", ProjectSettings(overlap=1, guidelines="<script>window.__pwned='guide'</script>"))
        import_dataset(s, xss, [{"prompt": "<img src=x onerror=\"window.__pwned='prompt'\"> question",
                                 "response_a": XSS_LEFT, "response_b": XSS_RIGHT}])
        add_rater(s, "xena", "xena-pw", projects=[xss])
        sens = create_project(s, "sensitive", ProjectSettings(overlap=1))
        import_dataset(s, sens, [{"prompt": "a violent question", "response_a": "SECRET-VIOLENT-A",
                                  "response_b": "SECRET-VIOLENT-B", "tags": ["sensitive:violence"]}])
        add_rater(s, "sam", "sam-pw", projects=[sens], sensitive_opt_in=["violence"])
        demo = create_project(s, "alpaca-eval demo", ProjectSettings(
            overlap=3, pay_rate=24.0, rubric=[{"name": "helpfulness", "description": "follows the instruction"},
                                              {"name": "honesty", "description": "no made-up facts"}],
            guidelines="Compare the two answers to the instruction. Prefer the one a careful expert would send."))
        records = read_records(data_dir / "alpaca_eval" / "gpt-3.5-turbo-0301.annotations.json", "alpaca-eval")
        for r in records:
            r.judgments = []
        import_records(s, demo, [r for r in records if "```" in (r.response_a or "") + (r.response_b or "")][:3])
        add_rater(s, "dana", "dana-pw", projects=[demo])
        tabs = create_project(s, "tabs", ProjectSettings(overlap=1))
        import_dataset(s, tabs, [{"prompt": f"tab question {i}", "response_a": f"tab a{i}",
                                  "response_b": f"tab b{i}"} for i in range(6)])
        add_rater(s, "tia", "tia-pw", projects=[tabs])
        drafts = create_project(s, "drafts", ProjectSettings(overlap=1, rubric=[{"name": "helpfulness"},
                                                                                 {"name": "honesty"}]))
        import_dataset(s, drafts, [{"prompt": f"draft question {i}", "response_a": f"draft a{i}",
                                    "response_b": f"draft b{i}"} for i in range(4)])
        add_rater(s, "dora", "dora-pw", projects=[drafts])
        sens_drafts = create_project(s, "sensitive drafts", ProjectSettings(overlap=1))
        import_dataset(s, sens_drafts, [{"prompt": "a violent draft question", "response_a": "VIOLENT-DRAFT-A",
                                         "response_b": "VIOLENT-DRAFT-B", "tags": ["sensitive:violence"]}])
        add_rater(s, "suri", "suri-pw", projects=[sens_drafts], sensitive_opt_in=["violence"])
        refusals = create_project(s, "refusals", ProjectSettings(overlap=1))
        import_dataset(s, refusals, [{"prompt": f"refused question {i}", "response_a": f"refused a{i}",
                                      "response_b": f"refused b{i}"} for i in range(4)])
        add_rater(s, "rex", "rex-pw", projects=[refusals])
    with running_server(url, free_port(), log_path=root / "server.log") as base_url:
        with chromium() as browser:
            yield {"url": url, "base_url": base_url, "browser": browser}


def _screen_text(page, selector: str) -> str:
    """Our own content in a component, without Gradio's progress overlay."""
    return page.evaluate("""s => Array.from(document.querySelectorAll(s + ' .pf-turn, ' + s + ' .pf-md'))
                                  .map(e => e.innerText).join('\\n')""", selector)


def _shown(page) -> str:
    return page.locator("#pf-shown textarea, #pf-shown input").first.input_value()


def _wait_for_item(page, text: str) -> None:
    """Wait until the page shows an item whose prompt has `text`, and no event is pending."""
    page.locator("#pf-choice").wait_for(timeout=30_000)
    page.wait_for_function("t => document.querySelector('#pf-conversation').innerText.includes(t)", arg=text)
    wait_idle(page)


def _wait_moved_on(page, before: str) -> str:
    page.wait_for_function("b => document.querySelector('#pf-shown textarea, #pf-shown input').value !== b",
                           arg=before)
    wait_idle(page)
    return _shown(page)


def _judge_by_keyboard(page, key: str) -> None:
    before = _shown(page)
    page.keyboard.press(key)
    page.locator("#pf-choice input:checked").wait_for()
    page.keyboard.press("Enter")
    _wait_moved_on(page, before)


def _both_bad_checked(page) -> bool:
    return page.locator("#pf-both-bad input[type=checkbox]").is_checked()


def test_keyboard_only_judging_and_undo(site):
    page = site["browser"].new_page()
    started = time.time()
    gradio_login(page, site["base_url"], "ann", "ann-pw", "#pf-choice")
    _wait_for_item(page, "question")
    assert "Enter" in page.locator("#pf-keys").inner_text()  # the keys are shown on screen
    page.locator("#pf-conversation").click()  # focus on the page, not in a text field
    seen = []
    for key in ["1", "4", "3"]:  # A much better, B better, tie
        seen.append((key, _screen_text(page, "#pf-conversation"), _screen_text(page, "#pf-left")))
        _judge_by_keyboard(page, key)
    page.keyboard.press("u")
    page.wait_for_function("document.querySelector('#pf-banner').innerText.includes('taken back')")
    wait_idle(page)
    assert _screen_text(page, "#pf-conversation") == seen[2][1]  # the undone pair is back on screen
    finished = time.time()

    with db.session_scope(site["url"]) as s:
        ann_id = s.scalar(select(Rater.id).where(Rater.name == "ann"))
        rows = [(j, s.get(Assignment, j.assignment_id), j) for j in
                s.scalars(select(Judgment).where(Judgment.rater_id == ann_id).order_by(Judgment.id))]
        rows = [(j, a, a.pair.prompt.conversation[-1]["content"], a.pair.response_a.content) for j, a, _ in rows]
        undone_prompts = [a.pair.prompt.conversation[-1]["content"] for a in s.scalars(
            select(Assignment).where(Assignment.rater_id == ann_id, Assignment.status == "open"))]
    assert len(rows) == 2  # three submitted, one taken back
    screen_choice = {"1": 2, "4": -1}
    for (key, conversation, left), (judgment, assignment, prompt, response_a) in zip(seen[:2], rows):
        assert prompt in conversation  # the judgment is about the pair that was on screen
        left_is_a = left.strip().endswith(response_a)
        assert judgment.left_is_a == assignment.left_is_a == left_is_a  # the side the rater really saw
        assert judgment.choice == screen_choice[key] * (1 if left_is_a else -1)  # stored relative to A/B
        assert 0 < judgment.active_seconds <= finished - started  # server-measured, never more than wall time
        assert started - 1 <= judgment.submitted_at.timestamp() - _utc_offset() <= finished + 1
    assert len(undone_prompts) == 1 and undone_prompts[0] in seen[2][1]  # the undone pair is open again

    # b toggles the both-bad flag; the undone pair is judged again, flagged both bad.
    assert not _both_bad_checked(page)
    for expected in (True, False, True):
        page.keyboard.press("b")
        page.wait_for_function("c => document.querySelector('#pf-both-bad input[type=checkbox]').checked === c",
                               arg=expected)
    _judge_by_keyboard(page, "2")
    # s skips the next pair with the reason selected on screen, and a new pair is served.
    reason = SKIP_REASONS[1]
    page.locator("#pf-skip-reason").get_by_text(reason, exact=True).click()
    page.locator("#pf-conversation").click()  # back on the page, out of the radio group
    skipped_prompt, skipped_shown = _screen_text(page, "#pf-conversation"), _shown(page)
    page.keyboard.press("s")
    page.wait_for_function("b => document.querySelector('#pf-shown textarea, #pf-shown input').value !== b",
                           arg=skipped_shown)
    page.locator("#pf-banner").get_by_text("Skipped").wait_for()
    last_shown = _shown(page)
    assert last_shown and _screen_text(page, "#pf-conversation") not in ("", skipped_prompt)
    # Skip clicked with the mouse keeps the focus on its button; Enter on the next pair still submits that pair.
    page.locator("#pf-skip").click()
    page.wait_for_function("b => document.querySelector('#pf-shown textarea, #pf-shown input').value !== b",
                           arg=last_shown)
    wait_idle(page)
    after_mouse_skip = _shown(page)
    _judge_by_keyboard(page, "2")
    page.close()

    with db.session_scope(site["url"]) as s:
        redone = s.scalar(select(Judgment).where(Judgment.rater_id == ann_id,
                                                 Judgment.assignment_id != int(after_mouse_skip))
                          .order_by(Judgment.id.desc()).limit(1))
        redone_prompt = s.get(Assignment, redone.assignment_id).pair.prompt.conversation[-1]["content"]
        assert redone_prompt in seen[2][1]  # the undone pair, judged again
        assert redone.both_bad is True  # b pressed three times
        assert redone.choice == (1 if redone.left_is_a else -1)  # "2": the left response is better
        skipped = s.get(Assignment, int(skipped_shown))
        assert (skipped.rater_id, skipped.status, skipped.skip_reason) == (ann_id, "skipped", reason)
        assert skipped.pair.prompt.conversation[-1]["content"] in skipped_prompt
        assert s.scalar(select(func.count(Judgment.id)).where(Judgment.pair_id == skipped.pair_id)) == 0
        assert s.get(Assignment, int(last_shown)).status == "skipped"  # the mouse's skip
        assert s.get(Assignment, int(after_mouse_skip)).status == "submitted"  # Enter submitted, did not skip it


def _utc_offset() -> float:
    # submitted_at is naive UTC; .timestamp() reads it as local time.
    return -time.timezone if time.localtime().tm_isdst == 0 else -time.altzone


def test_model_output_is_inert(site):
    context = site["browser"].new_context()
    outside: list[str] = []

    def guard(route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    gradio_login(page, site["base_url"], "xena", "xena-pw", "#pf-choice")
    # Which response is shown on the left is drawn at random per assignment: wait for both, either side.
    page.wait_for_function("""() => {
        const text = document.querySelector('#pf-left').innerText + document.querySelector('#pf-right').innerText;
        return text.includes('PAYLOAD-END-LEFT') && text.includes('PAYLOAD-END-RIGHT');
    }""")
    page.get_by_text("Guidelines").click()  # open the accordion: the guidelines are rendered too
    for selector in ["#pf-left", "#pf-right", "#pf-conversation"]:
        page.locator(selector).hover()
        page.locator(selector).click(position={"x": 5, "y": 5})
    page.wait_for_timeout(500)
    found = page.evaluate("""() => {
        const bad = [];
        // Our rendered content only: Gradio's own widgets around it carry style attributes of their own.
        const roots = document.querySelectorAll(
            ':is(#pf-left, #pf-right, #pf-conversation, #pf-guidelines) :is(.pf-md, .pf-turn)');
        if (roots.length < 4) bad.push('content missing');
        for (const root of roots) {
            for (const el of [root, ...root.querySelectorAll('*')]) {
                if (['SCRIPT', 'IMG', 'IFRAME', 'SVG', 'STYLE', 'LINK', 'OBJECT', 'VIDEO', 'SOURCE', 'FORM']
                    .includes(el.tagName.toUpperCase())) bad.push(el.tagName);
                for (const a of el.attributes) {
                    if (a.name.startsWith('on') || a.name === 'style' || a.name === 'src') bad.push(a.name);
                    if (a.name === 'href' && !/^(https?:|mailto:)/i.test(a.value)) bad.push(a.value);
                }
            }
        }
        return {bad, pwned: window.__pwned === undefined ? null : String(window.__pwned)};
    }""")
    assert found == {"bad": [], "pwned": None}
    assert dialogs == [] and outside == []
    a_side, b_side = ("#pf-left", "#pf-right") if "PAYLOAD-END-LEFT" in _screen_text(page, "#pf-left") \
        else ("#pf-right", "#pf-left")
    assert "[image not loaded: tracking pixel]" in _screen_text(page, a_side)  # shown, as text
    assert "${window.__pwned" in _screen_text(page, b_side)  # template syntax stays text
    context.close()


def test_sensitive_items_are_hidden_until_revealed(site):
    page = site["browser"].new_page()
    gradio_login(page, site["base_url"], "sam", "sam-pw", "#pf-choice")
    page.wait_for_function("document.querySelector('#pf-banner').innerText.includes('Content warning')")
    assert "violence" in page.locator("#pf-banner").inner_text()
    assert "SECRET-VIOLENT" not in page.content()  # withheld, not merely blurred
    assert page.locator("#pf-left .pf-blurred").count() == 1
    page.keyboard.press("1")
    page.keyboard.press("Enter")  # judging before revealing is refused, and the warning stays in view
    page.locator("#pf-alert").get_by_text("show the content before judging").wait_for()
    assert "Content warning" in page.locator("#pf-banner").inner_text()
    page.locator("#pf-reveal").click()
    page.wait_for_function("document.querySelector('#pf-left').innerText.includes('SECRET-VIOLENT')")
    assert page.locator("#pf-alert").inner_text().strip() == ""  # the next screen clears the refusal
    with db.session_scope(site["url"]) as s:
        sam = s.scalar(select(Rater).where(Rater.name == "sam"))
        (assignment,) = s.scalars(select(Assignment).where(Assignment.rater_id == sam.id)).all()
        assert assignment.revealed_at is not None and assignment.status == "open"
        assert s.scalar(select(Judgment).where(Judgment.rater_id == sam.id)) is None

    # His own page lists the project's sensitive categories, his opt-in ticked; he opts out there.
    page.get_by_role("tab", name="My stats").click()
    page.locator("#pf-opt-in").get_by_text("violence", exact=True).wait_for()
    boxes = page.locator("#pf-opt-in input[type=checkbox]")
    assert boxes.count() == 1 and boxes.first.is_checked()
    boxes.first.uncheck()
    page.get_by_role("button", name="Save my choice", exact=True).click()
    page.locator("#pf-opt-in-msg").get_by_text("will not be shown").wait_for()
    with db.session_scope(site["url"]) as s:
        assert s.scalar(select(Rater.sensitive_opt_in).where(Rater.name == "sam")) == []
    page.close()


def test_screenshots(site, tmp_path):
    out_dirs = [tmp_path] + ([Path(os.environ["PREFLOOP_SCREENSHOTS"])] if os.environ.get("PREFLOOP_SCREENSHOTS")
                             else [])
    page = site["browser"].new_page(viewport={"width": 1280, "height": 1000})
    gradio_login(page, site["base_url"], "dana", "dana-pw", "#pf-choice")
    page.locator(':is(#pf-left, #pf-right) pre').first.wait_for()  # a code answer, highlighted
    wait_idle(page)
    page.locator("#pf-choice input").nth(1).click()
    page.locator("#pf-criterion-0 input").nth(1).click()
    shots = {"rater-app.png": page.screenshot(full_page=True)}
    before = _shown(page)
    page.get_by_role("button", name="Submit  [Enter]", exact=True).click()
    page.wait_for_function("b => document.querySelector('#pf-shown textarea, #pf-shown input').value !== b",
                           arg=before)
    page.get_by_role("tab", name="My stats").click()
    page.wait_for_function("document.querySelector('#pf-stats').innerText.includes('Judgments today')")
    assert "Judgments today\t1" in page.locator("#pf-stats").inner_text()
    shots["rater-stats.png"] = page.screenshot()
    page.close()
    for out in out_dirs:
        out.mkdir(parents=True, exist_ok=True)
        for name, png in shots.items():
            (out / name).write_bytes(png)
    for png in shots.values():
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(png) < 1_500_000


def test_a_stale_second_tab_moves_on_to_the_current_item(site):
    context = site["browser"].new_context()
    first = context.new_page()
    gradio_login(first, site["base_url"], "tia", "tia-pw", "#pf-choice")
    _wait_for_item(first, "tab question")
    second = context.new_page()  # a second tab of the same logged-in rater: the same item
    second.goto(site["base_url"] + "/")
    _wait_for_item(second, "tab question")
    old = _shown(first)
    assert _shown(second) == old

    # The first tab judges the item and moves on; the second still shows it.
    first.locator("#pf-conversation").click()
    _judge_by_keyboard(first, "1")
    current = _shown(first)
    assert current != old and _shown(second) == old
    # A refusal that is the rater's own doing stays one: no choice made, on an item still open, in the first tab.
    first.locator("#pf-submit").click()
    first.locator("#pf-alert").get_by_text("choose which response").wait_for()
    assert _shown(first) == current

    # The second tab's submission finds its item judged: no error, and the rater's current item comes up.
    second.locator("#pf-choice input").nth(4).click()
    second.locator("#pf-submit").click()
    assert _wait_moved_on(second, old) == current
    assert "already handled in another tab" in second.locator("#pf-banner").inner_text()
    assert second.locator("#pf-alert").inner_text().strip() == ""
    assert _screen_text(second, "#pf-conversation") == _screen_text(first, "#pf-conversation")

    # The same for a skip: the first tab skips, the second tab's skip of that item moves it on too.
    first.locator("#pf-skip").click()
    skipped_then = _wait_moved_on(first, current)
    second.locator("#pf-conversation").click()
    second.keyboard.press("s")
    assert _wait_moved_on(second, current) == skipped_then
    assert "already handled in another tab" in second.locator("#pf-banner").inner_text()
    context.close()

    with db.session_scope(site["url"]) as s:
        tia = s.scalar(select(Rater.id).where(Rater.name == "tia"))
        judgments = s.scalars(select(Judgment).where(Judgment.rater_id == tia)).all()
        assert [(j.assignment_id, j.choice) for j in judgments] == [(int(old), 2 if judgments[0].left_is_a else -2)]
        assert s.get(Assignment, int(current)).status == "skipped"  # skipped once, by the first tab
        assert s.get(Assignment, int(skipped_then)).status == "open"
        assert s.scalar(select(func.count(Assignment.id)).where(Assignment.rater_id == tia,
                                                                 Assignment.status == "open")) == 1


def _draft_on_screen(page) -> tuple:
    return page.evaluate("""() => [
        Array.from(document.querySelectorAll('#pf-choice input')).findIndex(i => i.checked),
        document.querySelector('#pf-both-bad input').checked,
        Array.from(document.querySelectorAll('#pf-criterion-1 input')).findIndex(i => i.checked),
        document.querySelector('#pf-rationale textarea').value]""")


def _paste_rationale(page, text: str) -> None:
    """Set in one go, as a paste does: one input event, not one a key."""
    page.locator("#pf-rationale textarea").fill(text)
    page.locator("#pf-conversation").click()


def _type_rationale(page, text: str) -> None:
    """Typed key by key at the end of the rationale, as a rater does (a draft is saved on each key)."""
    box = page.locator("#pf-rationale textarea")
    box.click()
    box.press("End")
    box.press_sequentially(text)
    page.locator("#pf-conversation").click()  # the textbox loses the focus


def _stored_draft(page, assignment_id: str):
    return page.evaluate("id => (JSON.parse(localStorage.getItem('pf-draft:' + id)) || {}).values || null",
                         assignment_id)


def test_a_draft_survives_a_reload_of_its_item_only(site):
    context = site["browser"].new_context()
    page = context.new_page()
    gradio_login(page, site["base_url"], "dora", "dora-pw", "#pf-choice")
    _wait_for_item(page, "draft question")
    first = _shown(page)
    page.locator("#pf-choice input").nth(3).click()
    page.locator("#pf-both-bad input").check()
    page.locator("#pf-criterion-1 input").nth(0).click()
    _paste_rationale(page, "B cites its source")
    assert _draft_on_screen(page) == [3, True, 0, "B cites its source"]

    page.reload()
    _wait_for_item(page, "draft question")
    assert _shown(page) == first
    page.wait_for_function("document.querySelector('#pf-rationale textarea').value === 'B cites its source'")
    assert _draft_on_screen(page) == [3, True, 0, "B cites its source"]

    # Submitted as restored: the draft is what the server records, and then it is gone.
    page.locator("#pf-submit").click()
    second = _wait_moved_on(page, first)
    assert _draft_on_screen(page) == [-1, False, -1, ""]  # the next item starts empty
    page.reload()
    _wait_for_item(page, "draft question")
    assert _shown(page) == second and _draft_on_screen(page) == [-1, False, -1, ""]
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('pf-draft:'))") == []
    context.close()

    with db.session_scope(site["url"]) as s:
        (judgment,) = s.scalars(select(Judgment).join(Rater, Rater.id == Judgment.rater_id)
                                .where(Rater.name == "dora")).all()
        sign = 1 if judgment.left_is_a else -1
        assert judgment.assignment_id == int(first) and judgment.rationale == "B cites its source"
        assert judgment.choice == -1 * sign and judgment.both_bad is True  # "B better" on screen
        assert judgment.criteria == {"honesty": 2 * sign}


def _rationale_is(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#pf-rationale textarea').value === t", arg=text)


def _reveal(page) -> None:
    page.locator("#pf-reveal").click()
    page.wait_for_function("document.querySelector('#pf-left').innerText.includes('VIOLENT-DRAFT')")
    wait_idle(page)


def test_a_draft_on_a_sensitive_item_survives_its_reveal(site):
    """A sensitive item comes back behind its content warning after a reload: revealing it keeps the restored draft."""
    context = site["browser"].new_context()
    page = context.new_page()
    gradio_login(page, site["base_url"], "suri", "suri-pw", "#pf-choice")
    page.locator("#pf-banner").get_by_text("Content warning").wait_for()
    wait_idle(page)
    item = _shown(page)
    _reveal(page)
    page.locator("#pf-choice input").nth(1).click()
    _type_rationale(page, "A is calmer")
    assert _draft_on_screen(page) == [1, False, -1, "A is calmer"]

    for text, more in [("A is calmer", ", B is graphic"), ("A is calmer, B is graphic", "")]:
        page.reload()
        page.locator("#pf-banner").get_by_text("Content warning").wait_for()
        assert _shown(page) == item and "VIOLENT-DRAFT" not in page.content()  # hidden again
        _rationale_is(page, text)  # restored onto the hidden screen
        _reveal(page)
        assert _shown(page) == item and _draft_on_screen(page) == [1, False, -1, text]  # and kept by the reveal
        if more:  # the next key saves the whole draft, not the emptied screen a reveal used to leave
            _type_rationale(page, more)
    assert _stored_draft(page, item)[:3] == [1, False, "A is calmer, B is graphic"]  # "A better"
    context.close()


def test_a_refused_submit_or_flag_keeps_the_draft(site):
    """A Submit or Flag the server refuses leaves the item on screen, and its draft with it: a later change of item
    that is no submit, skip or flag (here an undo) keeps the draft."""
    context = site["browser"].new_context()
    page = context.new_page()
    gradio_login(page, site["base_url"], "rex", "rex-pw", "#pf-choice")
    _wait_for_item(page, "refused question")
    first = _shown(page)
    page.locator("#pf-choice input").nth(0).click()
    page.locator("#pf-submit").click()
    second = _wait_moved_on(page, first)
    page.locator("#pf-both-bad input").check()
    _type_rationale(page, "not sure yet")
    assert _stored_draft(page, second)[:3] == [None, True, "not sure yet"]

    page.locator("#pf-submit").click()  # no choice made: refused
    page.locator("#pf-alert").get_by_text("choose which response").wait_for()
    wait_idle(page)
    page.locator("#pf-flag").click()  # no reason given: refused
    page.locator("#pf-alert").get_by_text("say briefly why").wait_for()
    wait_idle(page)
    assert _shown(page) == second and _draft_on_screen(page) == [-1, True, -1, "not sure yet"]

    page.locator("#pf-undo").click()  # the first item again: the second is left, neither submitted nor skipped
    assert _wait_moved_on(page, second) == first
    assert _draft_on_screen(page) == [-1, False, -1, ""]
    assert _stored_draft(page, second)[:3] == [None, True, "not sure yet"]
    context.close()
