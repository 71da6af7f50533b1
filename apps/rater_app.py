"""The rater app: experts compare two responses, by mouse or by keyboard alone.

Business rules live in collect.assign; this module lays out the screen and calls it. Every event handler is
also an HTTP endpoint anyone can call with any arguments, so each one starts from the authenticated caller
(`current_rater`) and lets collect/ check membership and ownership. The assignment being judged comes from
`gr.State`, which Gradio keeps on the server per browser session (a client cannot write it); ids, sides
and times are never taken from the client. Choices arrive in screen terms (left/right); collect maps them
to the pair's A and B with the side it recorded when it served the pair.
"""

import contextlib
import functools
import html
import json
import logging
import secrets
import time
from typing import Any, Callable, Iterator

import gradio as gr
from sqlalchemy.orm import Session

from apps.rater_api import DATABASE_FAILURES, log_database_failure
from apps.render import code_css, render_conversation, render_markdown
from apps.web_auth import current_rater
from collect import db
from collect.assign import (
    GOLD_MINIMUM, UNDO_SECONDS, RaterSummary, Served, flag_harmful, item_state, next_assignment, open_item_project,
    rater_summary, record_activity, reveal, sensitive_cap_reached, skip, submit_judgment, undo_last,
)
from collect.defaults import HEARTBEAT_SECONDS
from collect.errors import UserError
from collect.models import Project
from collect.projects import criterion_line, projects_of, sensitive_opt_in_choices, set_sensitive_opt_in

log = logging.getLogger(__name__)

MAX_CRITERIA = 8
"""Rubric criteria shown per pair; a project with more shows the first eight."""
BREAK_CHECK_SECONDS = 120
"""How often (at most) a submission also checks whether the rater is due a break."""
DRAFT_DAYS = 7
"""A draft (the choice and text of an item not yet submitted, kept in the browser) older than this is dropped."""

# Screen terms: the left panel is "A" on screen, whatever the pair's stored A is.
CHOICES = [("A much better  [1]", 2), ("A better  [2]", 1), ("Tie  [3]", 0), ("B better  [4]", -1),
           ("B much better  [5]", -2)]
CRITERION_CHOICES = [("A ≫", 2), ("A >", 1), ("=", 0), ("B >", -1), ("B ≫", -2)]
DATABASE_DOWN = "The database is unavailable; your last action was not saved. Try again in a moment."
"""What a rater reads when the database fails (DATABASE_FAILURES): nothing was saved, and a retry is safe."""
SKIP_REASONS = ["I can't judge this (outside my expertise)", "The prompt or responses are broken",
                "Both responses are the same", "I'd rather not see this content", "Other"]

KEYS_HELP = ("**Keyboard:** `1`–`5` choose · `b` both bad · `Enter` submit · `s` skip · `u` undo "
             f"(within {UNDO_SECONDS} s) · `Ctrl+Enter` submit while typing")

CSS = """
.pf-md { max-height: 60vh; overflow: auto; overflow-wrap: anywhere; padding: 0 .5rem; }
.pf-md pre { white-space: pre-wrap; }
#pf-conversation { max-height: 40vh; overflow: auto; }
.pf-turn { margin-bottom: .75rem; }
.pf-role { font-weight: 600; text-transform: capitalize; opacity: .7; }
.pf-image-blocked { font-style: italic; opacity: .7; }
.pf-panel-title { font-weight: 700; font-size: 1.1rem; margin-bottom: .25rem; }
#pf-left, #pf-right { border: 1px solid var(--border-color-primary); border-radius: .5rem; padding: .5rem; }
.pf-blurred { filter: blur(6px); user-select: none; }
.pf-banner { padding: .5rem .75rem; border-radius: .5rem; background: var(--color-accent-soft); }
.pf-warning { padding: .75rem; border-radius: .5rem; background: #fff3cd; color: #664d03; }
.pf-error { background: #f8d7da; color: #58151c; }
""" + code_css(".pf-md .highlight")

# Keys act only outside text fields. Enter submits, but on a button reached with Tab, which it activates: a button
# clicked with the mouse keeps the focus after the next item is shown (Gradio replaces the screen, not the button),
# and Enter there skipped or flagged that next item instead of submitting it.
# The heartbeat reports activity only while the page is visible and the rater moved, scrolled or typed
# since the last beat: the server counts the gap, capped at the project's idle threshold.
HEAD = """
<script>
(() => {
  const click = (sel) => { const el = document.querySelector(sel); if (el) el.click(); };
  const pick = (i) => {
    const inputs = document.querySelectorAll('#pf-choice input[type=radio]');
    if (inputs[i]) inputs[i].click();
  };
  let tabbed = false;
  document.addEventListener('pointerdown', () => { tabbed = false; }, { capture: true });
  document.addEventListener('keydown', (e) => {
    const t = e.target;
    if (e.key === 'Tab') { tabbed = true; return; }
    const typing = t && (t.tagName === 'TEXTAREA' || t.isContentEditable ||
      (t.tagName === 'INPUT' && !['radio', 'checkbox'].includes(t.type)));
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); click('#pf-submit'); return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    if (!document.querySelector('#pf-choice')) return;
    if ('12345'.includes(e.key) && e.key.length === 1) { e.preventDefault(); pick(Number(e.key) - 1); }
    else if (e.key === 'b') { e.preventDefault(); click('#pf-both-bad input[type=checkbox]'); }
    else if (e.key === 's') { e.preventDefault(); click('#pf-skip'); }
    else if (e.key === 'u') { e.preventDefault(); click('#pf-undo'); }
    else if (e.key === 'Enter' && t.tagName === 'BUTTON' && tabbed) { tabbed = false; }
    else if (e.key === 'Enter') { e.preventDefault(); click('#pf-submit'); }
  });
  let moved = false;
  for (const ev of ['keydown', 'mousemove', 'wheel', 'scroll', 'touchstart', 'pointerdown']) {
    document.addEventListener(ev, () => { moved = true; }, { passive: true, capture: true });
  }
  setInterval(() => {
    if (moved && document.visibilityState === 'visible') { moved = false; click('#pf-heartbeat'); }
  }, HEARTBEAT_MS);
  // Drafts: what the rater chose or typed on an item, kept in this browser only (localStorage, keyed by the
  // assignment id, never sent before Submit) so that a reload or a restarted tab shows it again on that item.
  // An item left by Submit, Skip or Flag (a click on its button, by mouse or key, then a new item shown) drops its
  // draft; one refused (no choice made) or left otherwise (another project chosen, an undo) keeps it. Revealing a
  // sensitive item leaves the draft on screen as it is. Drafts older than DRAFT_DAYS days are swept.
  const DRAFT = 'pf-draft:';
  const shownId = () => (document.querySelector('#pf-shown textarea, #pf-shown input') || {}).value || '';
  let finishing = null, lastShown = '';
  document.addEventListener('click', (e) => {
    if (e.target.closest && e.target.closest('#pf-submit, #pf-skip, #pf-flag')) finishing = shownId();
  }, { capture: true });
  const store = (() => { try { return window.localStorage; } catch (e) { return null; } })();
  const forget = (id) => { try { store.removeItem(DRAFT + id); } catch (e) { /* storage unavailable */ } };
  window.pfDraft = {
    save: (id, values) => {
      // The text boxes as the page has them now, whatever Gradio passed (see the input listener below).
      ['#pf-rationale', '#pf-rewrite'].forEach((sel, i) => {
        const box = document.querySelector(sel + ' textarea');
        if (box) values[2 + i] = box.value;
      });
      try { if (id) store.setItem(DRAFT + id, JSON.stringify({ at: Date.now(), values })); } catch (e) { /* full */ }
    },
    restore: (id, empty) => {
      if (lastShown && lastShown !== id && finishing === lastShown) forget(lastShown);
      if (lastShown !== id) finishing = null;
      lastShown = id;
      let draft = null;
      try { draft = id ? JSON.parse(store.getItem(DRAFT + id)) : null; } catch (e) { /* none, or unreadable */ }
      const values = draft && Array.isArray(draft.values) ? draft.values : [];
      return empty.map((v, i) => (values[i] === undefined || values[i] === null ? v : values[i]));
    },
    // After a Submit, Skip or Flag event, given the shown id as it then is: still the item clicked on, the action
    // was refused (no choice made, no reason given) and the item is not being left, so its draft stays.
    settle: (id) => { if (finishing && finishing === id) finishing = null; },
  };
  // Text pasted or set in one go (a single native input event) raised no Gradio input event, and was not saved:
  // the text boxes are saved from the page's own input events too, over the draft's other values.
  document.addEventListener('input', (e) => {
    if (!(e.target.closest && e.target.closest('#pf-rationale, #pf-rewrite'))) return;
    const id = shownId();
    let draft = null;
    try { draft = JSON.parse(store.getItem(DRAFT + id)); } catch (err) { /* none yet */ }
    window.pfDraft.save(id, draft && Array.isArray(draft.values) ? draft.values : []);
  }, { capture: true });
  try {
    for (const key of Object.keys(store)) {
      if (!key.startsWith(DRAFT)) continue;
      let at = 0;
      try { at = JSON.parse(store.getItem(key)).at || 0; } catch (e) { /* unreadable: swept */ }
      if (Date.now() - at > DRAFT_DAYS * 864e5) store.removeItem(key);
    }
  } catch (e) { /* storage unavailable: no drafts */ }
})();
</script>
""".replace("HEARTBEAT_MS", str(HEARTBEAT_SECONDS * 1000)).replace("DRAFT_DAYS", str(DRAFT_DAYS))


def mount_options() -> dict[str, Any]:
    """Page assets for `gr.mount_gradio_app` (Gradio 6 takes css/head at mount time, not in Blocks)."""
    return {"css": CSS, "head": HEAD}


def _empty_state() -> dict[str, Any]:
    return {"project_id": None, "assignment_id": None, "token": None, "sensitive": [], "revealed": False}


@contextlib.contextmanager
def errors_on_screen(handler_name: str, advice: str = "Try again.") -> Iterator[None]:
    """For Gradio handlers: user errors become a message on screen; anything else is logged and shown
    without details."""
    try:
        yield
    except gr.Error:
        raise
    except UserError as e:
        # gr.Error renders HTML, and messages can quote client input.
        raise gr.Error(html.escape(str(e)), print_exception=False) from None
    except DATABASE_FAILURES as e:
        # As the JSON API does: one log line, no traceback; the rater learns only that a retry is safe.
        log_database_failure(f"event {handler_name}", e)
        raise gr.Error(DATABASE_DOWN, print_exception=False) from None
    except Exception:
        log.exception("handler %s failed", handler_name)
        raise gr.Error(f"Something went wrong on the server. {advice}", print_exception=False) from None


def _handler(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with errors_on_screen(fn.__name__):
            return fn(*args, **kwargs)

    return wrapper


def _project_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not str(value).isdigit():
        raise UserError("choose a project first")
    return int(value)


def _panel(title: str, body_html: str) -> str:
    return f'<div class="pf-panel-title">{html.escape(title)}</div>{body_html}'


def _warning(text: str) -> str:
    return f'<div class="pf-warning">{html.escape(text)}</div>'


def _note(text: str) -> str:
    return f'<div class="pf-banner">{html.escape(text)}</div>' if text else ""


NOTHING_LEFT = "Nothing left for you in this project right now. Thank you!"
STALE_NOTE = "That item was already handled in another tab (or its time ran out); here is your current one."
PULLED_NOTE = ("That item was taken out of the queue (flagged as harmful or retired) meanwhile; "
               "here is your current one.")


def _stats_markdown(project: Project, s: RaterSummary) -> str:
    """The rater's own numbers in one project, as a Markdown table."""
    # gold_judged and gold_accuracy count check items judged before today (UTC): today's stay unscored.
    gold = (f"{s.gold_accuracy:.0%} on {s.gold_judged} check items" if s.gold_accuracy is not None
            else f"shown after {GOLD_MINIMUM} check items judged before today ({s.gold_judged} so far)")
    return "\n".join([
        f"### {html.escape(project.name)}", "",
        "| | You |", "|---|---|",
        f"| Judgments today | {s.judgments_today} |",
        f"| Judgments in total | {s.judgments_total} |",
        f"| Active hours today | {s.active_hours_today:.2f} |",
        f"| Active hours in total | {s.active_hours:.2f} |",
        f"| Earnings (at {project.pay_rate:g} {html.escape(s.currency)}/active hour) | "
        f"{s.earnings:.2f} {html.escape(s.currency)} |",
        f"| Accuracy on check items (up to yesterday) | {gold} |",
        f"| Active minutes since your last break | {s.minutes_since_break:.0f} |",
    ])


def build_rater_app(db_url: str | None = None, auth_header: str | None = None) -> gr.Blocks:
    """The rater app as a gr.Blocks; mount it with `apps.server.create_server` (auth is set at mount)."""
    db_url = db.database_url(db_url)

    with gr.Blocks(title="prefloop · rate", analytics_enabled=False) as app:
        state = gr.State(_empty_state())
        with gr.Row(equal_height=True):
            who = gr.Markdown("", elem_id="pf-who")
            project_box = gr.Dropdown(label="Project", choices=[], value=None, interactive=True, scale=2,
                                      elem_id="pf-project")
        with gr.Tabs():
            with gr.Tab("Rate", id="rate"):
                banner = gr.HTML("", elem_id="pf-banner", js_on_load=None)
                # A refused action is explained here, below the banner, so a content warning stays in view.
                alert = gr.HTML("", elem_id="pf-alert", js_on_load=None)
                with gr.Accordion("Guidelines", open=False):
                    guidelines = gr.HTML("", elem_id="pf-guidelines", js_on_load=None)
                conversation = gr.HTML("", elem_id="pf-conversation", js_on_load=None)
                reveal_button = gr.Button("Show this content", visible=False, elem_id="pf-reveal")
                with gr.Row(equal_height=False):
                    left = gr.HTML("", elem_id="pf-left", js_on_load=None)
                    right = gr.HTML("", elem_id="pf-right", js_on_load=None)
                choice = gr.Radio(CHOICES, value=None, label="Which response is better?", elem_id="pf-choice")
                both_bad = gr.Checkbox(False, label="Both are bad  [b]", elem_id="pf-both-bad")
                with gr.Accordion("Criteria", open=True, visible=False) as criteria_box:
                    criteria = [gr.Radio(CRITERION_CHOICES, value=None, visible=False, elem_id=f"pf-criterion-{i}")
                                for i in range(MAX_CRITERIA)]
                rationale = gr.Textbox(label="Rationale (optional)", lines=2, elem_id="pf-rationale")
                with gr.Accordion("Rewrite the better response (optional)", open=False):
                    rewrite = gr.Textbox(label="Rewrite", lines=6, elem_id="pf-rewrite")
                with gr.Row():
                    submit_button = gr.Button("Submit  [Enter]", variant="primary", elem_id="pf-submit")
                    skip_button = gr.Button("Skip  [s]", elem_id="pf-skip")
                    undo_button = gr.Button("Undo last  [u]", elem_id="pf-undo")
                with gr.Row():
                    skip_reason = gr.Radio(SKIP_REASONS, value=SKIP_REASONS[0], label="Reason for skipping",
                                           elem_id="pf-skip-reason")
                    with gr.Column():
                        flag_reason = gr.Textbox(label="Harmful content? Say why, and flag it for review",
                                                 elem_id="pf-flag-reason")
                        flag_button = gr.Button("Flag as harmful", variant="stop", elem_id="pf-flag")
                gr.Markdown(KEYS_HELP, elem_id="pf-keys")
                # The assignment on screen when an event fired: a submission made against a screen that has
                # since changed (a double press, a second tab) is refused instead of judging the wrong pair.
                shown = gr.Textbox("", visible="hidden", elem_id="pf-shown")
                heartbeat_button = gr.Button("heartbeat", visible="hidden", elem_id="pf-heartbeat")
            with gr.Tab("My stats", id="stats") as stats_tab:
                stats = gr.Markdown("", elem_id="pf-stats")
                stats_refresh = gr.Button("Refresh", elem_id="pf-stats-refresh")
                # Shown only for a project whose prompts carry sensitive categories.
                with gr.Column(visible=False) as opt_in_box:
                    opt_in = gr.CheckboxGroup([], value=[], elem_id="pf-opt-in",
                                              label="Sensitive content I agree to be shown in this project",
                                              info="Items in a category you tick come behind a content warning, "
                                                   "hidden until you choose to see them. Change this at any time.")
                    opt_in_save = gr.Button("Save my choice", elem_id="pf-opt-in-save")
                    opt_in_msg = gr.Markdown("", elem_id="pf-opt-in-msg")

        screen = [state, banner, alert, guidelines, conversation, reveal_button, left, right, choice, both_bad,
                  criteria_box, *criteria, rationale, rewrite, shown]
        # What the rater chose and typed on the item on screen: the draft (see HEAD).
        draft = [choice, both_bad, rationale, rewrite, *criteria]

        def show(served: Served | None, project: Project, note: str = "", revealed: bool = False,
                 layout: bool = False, empty: str = NOTHING_LEFT) -> dict:
            """The rating screen for one served assignment (or none left: the note, then `empty`).

            layout=True also sets what depends only on the project (guidelines, rubric labels): needed when a
            project is chosen, skipped between pairs of the same project because every gr.update() costs
            Gradio a component construction.
            """
            out: dict = {alert: "", choice: None, both_bad: False, rationale: "", rewrite: ""}
            out.update({box: None for box in criteria})
            if layout or served is None:
                rubric = (project.rubric or [])[:MAX_CRITERIA]
                out[guidelines] = render_markdown(project.guidelines or "_This project has no guidelines._")
                out[criteria_box] = gr.update(visible=bool(rubric) and served is not None)
                for i, box in enumerate(criteria):
                    if i < len(rubric):
                        out[box] = gr.update(value=None, visible=True, label=criterion_line(rubric[i]))
                    else:
                        out[box] = gr.update(value=None, visible=False)
            if served is None:
                out.update({
                    state: {**_empty_state(), "project_id": project.id},
                    banner: _note(note) + _warning(empty),
                    conversation: "", left: "", right: "", reveal_button: gr.update(visible=False), shown: "",
                })
                return out
            hidden = bool(served.sensitive) and not revealed
            out[state] = {"project_id": project.id, "assignment_id": served.assignment_id,
                          "token": secrets.token_urlsafe(16), "sensitive": served.sensitive, "revealed": revealed}
            out[shown] = str(served.assignment_id)
            out[reveal_button] = gr.update(visible=hidden)
            if hidden:
                # Withheld until revealed, not merely blurred: nothing reaches the screen unasked.
                categories = ", ".join(served.sensitive)
                out[banner] = _warning(f"Content warning: this item may contain {categories}. "
                                       "It stays hidden until you choose to show it; you may skip it instead.")
                placeholder = '<div class="pf-md pf-blurred">' + "hidden content " * 40 + "</div>"
                out.update({conversation: "", left: _panel("Response A", placeholder),
                            right: _panel("Response B", placeholder)})
            else:
                out[banner] = _note(note)
                out.update({conversation: render_conversation(served.conversation),
                            left: _panel("Response A", render_markdown(served.left)),
                            right: _panel("Response B", render_markdown(served.right))})
            return out

        def serve(session: Session, rater_id: int, project_id: int, note: str = "", layout: bool = False,
                  **state_extra: Any) -> dict:
            served = next_assignment(session, project_id, rater_id)  # checks the membership
            empty = NOTHING_LEFT
            if served is None and (cap := sensitive_cap_reached(session, project_id, rater_id)) is not None:
                empty = f"You have reached today's limit of {cap} sensitive items; more tomorrow. Thank you!"
            out = show(served, session.get(Project, project_id), note, layout=layout, empty=empty)
            out[state] = {**out[state], **state_extra}
            return out

        def own_assignment(current: Any, shown_id: Any = None) -> tuple[int, int]:
            """(project id, assignment id) of this session's screen; collect still checks ownership."""
            current = current if isinstance(current, dict) else {}
            assignment_id = current.get("assignment_id")
            if not isinstance(assignment_id, int):
                raise UserError("nothing on screen to act on: choose a project")
            if shown_id is not None and str(shown_id) != str(assignment_id):
                raise UserError("the screen changed before this was sent; look at the pair again")
            return _project_id(current.get("project_id")), assignment_id

        def on_item(request: gr.Request, current: Any, shown_id: Any,
                    action: Callable[[Session, int, int, int], dict]) -> dict:
            """Run `action(session, rater id, project id, assignment id)` on the item on screen, in one transaction.

            When it is refused and the item turns out to be no longer open for this rater (submitted or skipped in
            another tab, undone there, its lease run out, the pair pulled), the refusal is not the rater's doing:
            the rater's current item is shown instead, with a note, and nothing of the refused action is kept.
            A refusal on an item still open (no choice made, say) is the rater's to fix and stays a refusal.
            """
            current = current if isinstance(current, dict) else {}
            try:
                with db.session_scope(db_url) as session:
                    rater = current_rater(request, db_url, session)
                    project_id, assignment_id = own_assignment(current, shown_id)
                    return action(session, rater.id, project_id, assignment_id)
            except UserError:
                # The refused transaction was rolled back; this one looks at the item as it is now.
                with db.session_scope(db_url) as session:
                    rater = current_rater(request, db_url, session)
                    project_id, assignment_id = own_assignment(current, shown_id)
                    state = item_state(session, rater.id, assignment_id)
                    if state is None or state == ("open", "active"):
                        raise
                    return serve(session, rater.id, project_id, STALE_NOTE if state[1] == "active" else PULLED_NOTE)

        def errors_in_alert(fn: Callable) -> Callable:
            """For the per-item events, which skip Gradio's queue (see below): Gradio's page shows no message for
            an error raised by such an event, so the message goes to the alert above the pair instead and the
            rest of the screen, the banner too, stays as it was. The JSON answer carries it too (GradioRaterClient
            raises it)."""
            handler = _handler(fn)

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> dict:
                try:
                    return handler(*args, **kwargs)
                except gr.Error as e:  # its message is already HTML-escaped (errors_on_screen)
                    return {alert: f'<div class="pf-warning pf-error" role="alert">{e.message}</div>'}

            return wrapper

        @_handler
        def on_load(request: gr.Request) -> dict:
            with db.session_scope(db_url) as session:
                rater = current_rater(request, db_url, session)
                projects = [(p.name, p.id) for p in projects_of(session, rater)]
                # One project, or the one holding the rater's open item (a reload, a restarted tab: its draft
                # comes back with it); otherwise the rater picks.
                chosen = projects[0][1] if len(projects) == 1 else open_item_project(
                    session, rater.id, [i for _, i in projects])
                out = {who: f"Signed in as **{html.escape(rater.name)}**"
                            + ("" if auth_header else " · [log out](logout)"),
                       project_box: gr.update(choices=projects, value=chosen)}
                if chosen is not None:
                    out.update(serve(session, rater.id, chosen, layout=True))
                elif projects:
                    out[banner] = _note("Choose a project above to start.")
                else:
                    out[banner] = _warning("You are not a member of any project yet. Ask your project admin.")
                return out

        @_handler
        def on_project(project_value: Any, request: gr.Request) -> dict:
            with db.session_scope(db_url) as session:
                rater = current_rater(request, db_url, session)
                if project_value in (None, ""):
                    return {banner: gr.update()}  # nothing to change (an empty dict reads as one output value)
                return serve(session, rater.id, _project_id(project_value), layout=True)

        @errors_in_alert
        def on_submit(request: gr.Request, current: Any, shown_id: Any, choice_value: Any, both_bad_value: Any,
                      rationale_value: Any, rewrite_value: Any, *criterion_values: Any) -> dict:
            def submit(session: Session, rater_id: int, project_id: int, assignment_id: int) -> dict:
                if choice_value is None:
                    raise UserError("choose which response is better (keys 1-5) before submitting")
                project = session.get(Project, project_id)
                names = [c["name"] for c in (project.rubric or [])[:MAX_CRITERIA]] if project else []
                scores = {name: value for name, value in zip(names, criterion_values) if value is not None}
                submit_judgment(session, rater_id, assignment_id, choice_value, client_token=str(current["token"]),
                                both_bad=bool(both_bad_value), criteria=scores,
                                rationale=str(rationale_value or ""), rewrite=str(rewrite_value or "") or None)
                note, checked = "Saved.", current.get("break_checked_at", 0.0)
                # The break check reads all the rater's judgments: once every BREAK_CHECK_SECONDS is enough.
                if time.monotonic() - checked > BREAK_CHECK_SECONDS:
                    checked = time.monotonic()
                    minutes = rater_summary(session, rater_id, project_id).minutes_since_break
                    if project.break_after_minutes and minutes >= project.break_after_minutes:
                        note = (f"Saved. You have been rating for {minutes:.0f} minutes without a break: "
                                "please take one (ten minutes away resets this).")
                return serve(session, rater_id, project_id, note, break_checked_at=checked)

            # One transaction: the judgment and the next pair commit together, before the answer leaves.
            return on_item(request, current, shown_id, submit)

        @errors_in_alert
        def on_skip(current: Any, shown_id: Any, reason: Any, request: gr.Request) -> dict:
            def do_skip(session: Session, rater_id: int, project_id: int, assignment_id: int) -> dict:
                skip(session, rater_id, assignment_id, str(reason or ""))
                return serve(session, rater_id, project_id, "Skipped.")

            return on_item(request, current, shown_id, do_skip)

        @errors_in_alert
        def on_flag(current: Any, shown_id: Any, reason: Any, request: gr.Request) -> dict:
            reason = str(reason or "").strip()

            def flag(session: Session, rater_id: int, project_id: int, assignment_id: int) -> dict:
                if not reason:
                    raise UserError("say briefly why this is harmful, then flag it")
                flag_harmful(session, rater_id, assignment_id, reason)
                return serve(session, rater_id, project_id, "Flagged for review and taken out of the queue. Thank you.")

            # The reason box empties whenever the tab moves on: after the flag, or to the current item of a stale tab.
            return {**on_item(request, current, shown_id, flag), flag_reason: ""}

        @errors_in_alert
        def on_undo(current: Any, request: gr.Request) -> dict:
            current = current if isinstance(current, dict) else {}
            with db.session_scope(db_url) as session:
                rater = current_rater(request, db_url, session)
                project_id = _project_id(current.get("project_id"))
                served = undo_last(session, rater.id, project_id)
                project = session.get(Project, project_id)
                return show(served, project, "Your last judgment or skip was taken back: this pair is yours again.")

        @errors_in_alert
        def on_reveal(current: Any, request: gr.Request) -> dict:
            def do_reveal(session: Session, rater_id: int, project_id: int, assignment_id: int) -> dict:
                reveal(session, rater_id, assignment_id)
                served = next_assignment(session, project_id, rater_id)
                if served is None or served.assignment_id != assignment_id:
                    raise UserError("this item is no longer yours to judge")
                # The same item, shown: what the rater chose or typed on it (a draft restored onto the hidden
                # screen after a reload, say) stays as it is. The shown id does not change, so nothing restores it.
                out = show(served, session.get(Project, project_id), revealed=True)
                return {k: v for k, v in out.items() if k not in draft}

            return on_item(request, current, None, do_reveal)

        @_handler
        def on_activity(current: Any, request: gr.Request) -> None:
            current = current if isinstance(current, dict) else {}
            with db.session_scope(db_url) as session:
                rater = current_rater(request, db_url, session)
                if isinstance(current.get("assignment_id"), int):
                    record_activity(session, rater.id, current["assignment_id"])

        @_handler
        def on_stats(current: Any, request: gr.Request) -> dict:
            current = current if isinstance(current, dict) else {}
            with db.session_scope(db_url) as session:
                rater = current_rater(request, db_url, session)
                project_id = _project_id(current.get("project_id"))
                s = rater_summary(session, rater.id, project_id)
                project = session.get(Project, project_id)
                offered, opted = sensitive_opt_in_choices(session, rater.id, project_id)
            return {stats: _stats_markdown(project, s), opt_in_box: gr.update(visible=bool(offered)),
                    opt_in: gr.update(choices=offered, value=opted), opt_in_msg: ""}

        @_handler
        def on_save_opt_in(current: Any, chosen: Any, request: gr.Request) -> str:
            current = current if isinstance(current, dict) else {}
            with db.session_scope(db_url) as session:
                rater = current_rater(request, db_url, session)
                if not isinstance(chosen, list):
                    raise UserError("tick the categories you agree to be shown")
                now = set_sensitive_opt_in(session, rater.id, _project_id(current.get("project_id")), chosen)
            if not now:
                return "Saved: you will not be shown sensitive items in this project."
            return f"Saved: you may be shown items about {html.escape(', '.join(now))}, behind a content warning."

        app.load(on_load, None, [who, project_box, *screen], api_name="load")
        project_box.input(on_project, project_box, screen, api_name="choose_project")
        # The per-item events are one short transaction each: they skip Gradio's queue, so the browser sends one
        # POST and reads the answer, instead of joining the queue and waiting on a server-sent event stream
        # (6-7 ms less per judgment for one rater; see bench/results/rater_app_load.md).
        per_item = {"queue": False}
        finished = [
            submit_button.click(on_submit, [state, shown, choice, both_bad, rationale, rewrite, *criteria], screen,
                                api_name="submit", **per_item),
            skip_button.click(on_skip, [state, shown, skip_reason], screen, api_name="skip", **per_item),
            flag_button.click(on_flag, [state, shown, flag_reason], [*screen, flag_reason], api_name="flag",
                              **per_item)]
        undo_button.click(on_undo, state, screen, api_name="undo", **per_item)
        reveal_button.click(on_reveal, state, screen, api_name="reveal", **per_item)
        # Active time: every interaction, plus the heartbeat, tells the server the rater is at work.
        gr.on([choice.input, both_bad.input, rationale.blur, rewrite.blur, heartbeat_button.click,
               *(box.input for box in criteria)],
              on_activity, state, None, api_name="activity", show_progress="hidden", **per_item)
        # Drafts (see HEAD): saved in the browser on every edit, restored when an item is shown. Both run in the
        # page only (fn=None): nothing unsubmitted reaches the server.
        gr.on([choice.input, both_bad.input, rationale.input, rewrite.input, *(box.input for box in criteria)],
              None, [shown, *draft], None, js="(id, ...values) => { window.pfDraft.save(id, values); }",
              show_progress="hidden", **per_item)
        empty = json.dumps([None, False, "", "", *([None] * MAX_CRITERIA)])
        shown.change(None, shown, draft, js=f"(id) => window.pfDraft.restore(id, {empty})", show_progress="hidden",
                     **per_item)
        # Run once the answer is on screen, with the shown id as it then is: a refused Submit, Skip or Flag leaves the
        # item on screen and must not drop its draft at the next change of item (another project chosen, an undo).
        for event in finished:
            event.then(None, shown, None, js="(id) => { window.pfDraft.settle(id); }", show_progress="hidden",
                       **per_item)
        gr.on([stats_tab.select, stats_refresh.click], on_stats, state, [stats, opt_in_box, opt_in, opt_in_msg],
              api_name="stats")
        opt_in_save.click(on_save_opt_in, [state, opt_in], opt_in_msg, api_name="save_opt_in")
    return app
