"""The admin dashboard: set up projects, watch quality, settle disagreements, pay raters, export data.

The numbers come from collect/ (status, timeline, agreement, rater_quality, leaderboard, adjudicate,
payroll, export); this module only lays them out. Every event handler is also an HTTP endpoint that anyone
can call with any arguments, so every handler is registered through `_admin_only`, which looks up the
caller (apps.web_auth.current_rater) and refuses anyone who is not an admin before the handler runs: a
rater or an anonymous caller gets an error and no data from any endpoint. The page itself carries no data:
every table is filled by a handler after that check. Every admin action that changes data is written to
the audit log by the collect/ function it calls, with the admin as the actor (tests/test_admin_app.py checks
each event: whatever changes the database writes an audit event).
"""

from __future__ import annotations

import html
import inspect
import json
import logging
import re
import tempfile
import typing
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import anyio
import gradio as gr
import pandas as pd
from sqlalchemy import select

from apps.rater_app import errors_on_screen
from apps.render import code_css, render_conversation, render_markdown
from apps.web_auth import current_rater, header_dependency, password_checker
from collect import db
from collect.adjudicate import (
    FLAGGED_COLUMNS, QUEUE_COLUMNS, PairDetail, adjudicate, disagreement_queue, flagged_pairs, pair_detail,
)
from collect.agreement import agreement_tables
from collect.defaults import N_BOOTSTRAP
from collect.assign import review_flag
from collect.errors import PermissionDenied, PrefloopWarning, UserError
from collect.export import AGGREGATIONS, export_project, meta_path
from collect.formats import FORMATS
from collect.ingest import import_file
from collect.judgments import QUALITY_KINDS, judgments_frame, pair_models
from collect.models import CHOICES, ROLES, ROUTING, AuditEvent, Project, Rater
from collect.payroll import PayrollConfig, export_payroll, payroll
from collect.projects import (
    NO_PASSWORD, ProjectSettings, add_member, add_rater, create_project, get_project, get_rater, list_projects,
    list_raters, parse_rubric, project_settings, rubric_text, sensitive_categories, update_project, update_rater,
)
from collect.rater_quality import config_table, rater_table
from collect.status import project_status
from collect.timeline import agreement_over_time, plot_agreement_over_time, plot_progress, recent_throughput

log = logging.getLogger(__name__)

AUDIT_ROWS = 200
"""Most recent audit events shown."""

CSS = """
.pf-md { max-height: 40vh; overflow: auto; overflow-wrap: anywhere; padding: 0 .5rem; }
.pf-md pre { white-space: pre-wrap; }
.pf-turn { margin-bottom: .75rem; }
.pf-role { font-weight: 600; text-transform: capitalize; opacity: .7; }
.pf-image-blocked { font-style: italic; opacity: .7; }
.pf-side { font-weight: 700; }
""" + code_css(".pf-md .highlight")

VOTE_COLUMNS = ["rater", "kind", "choice", "both_bad", "flags", "rationale", "criteria", "submitted_at"]
ADJUDICATION_CHOICES = [(f"{label}", value) for value, label in CHOICES.items()]

FORM_SETTINGS = ("description", "guidelines", "rubric", "overlap", "gold_rate", "repeat_rate", "pay_rate", "currency",
                 "routing", "sensitive_daily_cap", "lease_seconds", "idle_seconds", "break_after_minutes")
"""The project settings in the Projects tab's two forms (new project, selected project), in their order."""

WHOLE_SETTINGS = ("overlap", "sensitive_daily_cap", "lease_seconds", "idle_seconds", "break_after_minutes")


def mount_options() -> dict[str, Any]:
    """Page assets for `gr.mount_gradio_app` (Gradio 6 takes css at mount time, not in Blocks)."""
    return {"css": CSS}


def _is_admin(db_url: str, name: str | None) -> bool:
    if not name:
        return False
    with db.session_scope(db_url) as session:
        rater = session.scalar(select(Rater).where(Rater.name == name))
        return rater is not None and rater.role == "admin" and not rater.external


def login_options(db_url: str, auth_header: str | None = None) -> dict[str, Any]:
    """`gr.mount_gradio_app` login arguments that let only admins through Gradio's own gate at /admin.

    The same logins as apps.web_auth.gradio_auth (password, or the trusted SSO header), restricted to
    admins: a rater cannot log in here at all, so /admin's config, file downloads and queue answer them 401.
    The handlers check the role again on every call (`_admin_only`), whichever gate the server mounts.
    """
    if auth_header:
        trusted = header_dependency(auth_header)

        async def admin_from_header(request: Any) -> str | None:
            name = trusted(request)
            return name if await anyio.to_thread.run_sync(_is_admin, db_url, name) else None

        return {"auth_dependency": admin_from_header}
    check = password_checker(db_url)

    async def admin_login(name: str, password: str) -> bool:
        return await check(name, password) and await anyio.to_thread.run_sync(_is_admin, db_url, name)

    return {"auth": admin_login, "auth_message": "prefloop admin: log in with an admin account."}


# ------------------------------------------------------------------------------------------ the guard


def _caller_is_admin(request: gr.Request | None, db_url: str) -> Rater:
    rater = current_rater(request, db_url)
    if rater.role != "admin":
        raise PermissionDenied("admins only")
    return rater


def _admin_only(db_url: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A Gradio handler that first checks that the caller is an admin, then calls fn(admin, *inputs).

    Gradio sees fn's parameters after `admin`, plus a trailing `request: gr.Request` it fills in itself.
    UserErrors become an on-screen message; anything else is logged and shown without details.
    """
    hints = typing.get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params]
    request_param = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)

    def handler(*args: Any) -> Any:
        *values, request = args
        with errors_on_screen(fn.__name__, advice="The details are in its log."):
            admin = _caller_is_admin(request if isinstance(request, gr.Request) else None, db_url)
            return fn(admin, *values)

    handler.__name__ = handler.__qualname__ = fn.__name__
    handler.__doc__ = fn.__doc__
    handler.__signature__ = inspect.Signature(params + [request_param])  # type: ignore[attr-defined]
    handler.__annotations__ = {p.name: p.annotation for p in params + [request_param]
                               if p.annotation is not inspect.Parameter.empty}
    return handler


# ------------------------------------------------------------------------------------------- helpers


def _project(session: Any, name: str | None) -> Project:
    if not name:
        raise UserError("choose a project first")
    return get_project(session, name)


def _names(session: Any) -> dict[int, str]:
    return dict(session.execute(select(Rater.id, Rater.name)).all())


def _rounded(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    return table.round({c: digits for c in table.columns if pd.api.types.is_float_dtype(table[c])})


def _nothing(why: str) -> pd.DataFrame:
    """A table with nothing to show says why: an empty one showed Gradio's placeholder headers "1 2 3"."""
    return pd.DataFrame({"": [why]})


def _highlight_rows(table: pd.DataFrame, mask: pd.Series, money: tuple[str, ...] = ()) -> Any:
    """A Styler that colours the rows where mask is True (flagged raters, pay under the floor); numbers to
    three decimals, the `money` columns to cents."""
    flags = mask.to_numpy()
    style = ["background-color: #fde2e1"] * len(table.columns)
    plain = [""] * len(table.columns)
    styler = table.style.apply(lambda row: style if flags[row.name] else plain, axis=1).format(precision=3,
                                                                                              na_rep="")
    return styler.format("{:.2f}", subset=list(money)) if money else styler


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "project"


def _date(text: str, field: str) -> datetime | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{field}: {text!r} is not a date like 2025-01-31 or 2025-01-31T09:00") from None


def _pair_id(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError("enter a pair id") from None
    if number != int(number) or number < 1:
        raise UserError("a pair id is a positive whole number")
    return int(number)


def _number(value: Any, field: str, whole: bool) -> int | float:
    if value is None or value == "":
        raise UserError(f"{field}: enter a number")
    if whole and float(value) != int(float(value)):
        raise UserError(f"{field} is a whole number")
    return int(float(value)) if whole else float(value)


def _settings_from_form(values: Sequence[Any]) -> dict[str, Any]:
    """A settings form's values (FORM_SETTINGS order) as ProjectSettings fields; checked later by collect."""
    form = dict(zip(FORM_SETTINGS, values, strict=True))
    for field in ("overlap", "gold_rate", "repeat_rate", "pay_rate", *WHOLE_SETTINGS):
        form[field] = _number(form[field], field, whole=field in WHOLE_SETTINGS)
    form["rubric"] = parse_rubric(form["rubric"] or "")
    form["currency"] = (form["currency"] or "").strip()
    form["description"], form["guidelines"] = form["description"] or "", form["guidelines"] or ""
    return form


def _form_values(settings: ProjectSettings) -> list[Any]:
    """A project's settings as its settings form shows them: the rubric one criterion a line, as typed."""
    return [rubric_text(settings.rubric) if field == "rubric" else getattr(settings, field) for field in FORM_SETTINGS]


def _csv(text: str) -> list[str]:
    return [v.strip() for v in (text or "").split(",") if v.strip()]


def _pair_html(detail: PairDetail) -> tuple[str, str, str]:
    """A pair for review: the conversation, then response A and response B, as sanitized HTML."""
    gold = f" · gold answer {CHOICES[detail.gold_choice]}" if detail.is_gold and detail.gold_choice is not None else ""
    head = f"<p><b>Pair {detail.pair_id}</b>{html.escape(gold)}</p>" + render_conversation(detail.conversation)
    side = '<p class="pf-side">{} ({})</p>'
    return (head, side.format("A", html.escape(detail.model_a or "unknown model")) + render_markdown(detail.response_a),
            side.format("B", html.escape(detail.model_b or "unknown model")) + render_markdown(detail.response_b))


def _out_dir() -> Path:
    # Gradio copies a returned file into its own cache and serves it to logged-in users at an unguessable URL.
    return Path(tempfile.mkdtemp(prefix="prefloop-admin-"))


# ------------------------------------------------------------------------------------ the dashboard


def build_admin_app(db_url: str | None = None, auth_header: str | None = None) -> gr.Blocks:
    """The admin dashboard as a gr.Blocks, to mount with `gr.mount_gradio_app` (see apps/server.py).

    auth_header: unused here (the server chooses how people log in, see apps.web_auth); accepted so that
    both apps are built the same way.
    """
    db_url = db.database_url(db_url)

    def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
        return _admin_only(db_url, fn)

    # ---------------------------------------------------------------- handlers (fn(admin, *inputs))

    def start(admin: Rater) -> tuple[Any, str]:
        with db.session_scope(db_url) as s:
            names = [p.name for p in list_projects(s)]
        return (gr.Dropdown(choices=names, value=names[0] if names else None),
                f"Signed in as **{html.escape(admin.name)}** (admin)")

    def overview(admin: Rater, project_name: str) -> tuple[str, Any, pd.DataFrame, pd.DataFrame, Any]:
        with db.session_scope(db_url) as s:
            project = _project(s, project_name)
            status = project_status(s, project)
            frame = judgments_frame(s, project.id)
            names = _names(s)
        # Throughput and the plot count judgments made in the app: imported ones carry their import time.
        recent, recent_raters = recent_throughput(frame)
        summary = "\n\n".join([
            f"### {html.escape(project.name)}",
            f"**Progress:** {status.progress_shown} — {status.judgments} judgments, {status.judgments_needed} still "
            f"needed for overlap k = {status.overlap}; {status.pairs_complete} of {status.active_pairs} pairs "
            f"complete (gold, flagged and retired pairs aside).",
            f"**Data:** {status.prompts} prompts, {status.pairs} pairs ({status.gold_pairs} gold, "
            f"{status.flagged_pairs} flagged for review, {status.retired_pairs} retired), {status.raters} members, "
            f"{status.open_assignments} open assignments.",
            f"**Throughput:** {recent} judgments made in the app by {recent_raters} raters in the last 24 hours.",
        ])
        judged_plot = plot_progress(frame, status.judgments_needed)
        if len(frame):
            agreement, kappas = agreement_tables(frame, n_bootstrap=N_BOOTSTRAP)
            agreement = _rounded(agreement)
            for side in ("rater_a", "rater_b"):
                kappas[side] = kappas[side].map(lambda r: names.get(r, str(r)))
            kappas = _rounded(kappas)
        else:
            agreement, kappas = _nothing("no judgments yet"), _nothing("no judgments yet")
        agreement_plot = plot_agreement_over_time(agreement_over_time(frame, n_bootstrap=N_BOOTSTRAP))
        return summary, judged_plot, agreement, kappas, agreement_plot

    def raters_view(admin: Rater, project_name: str) -> tuple[Any, pd.DataFrame, Any, Any, str]:
        with db.session_scope(db_url) as s:
            project = _project(s, project_name)
            frame = judgments_frame(s, project.id, QUALITY_KINDS)
            names = _names(s)
            members = {r.id for r in list_raters(s, project)}
            people = [r for r in list_raters(s) if not r.external]
            others = [r.name for r in people if r.id not in members]
            categories = sensitive_categories(s, project.id)
        if len(frame):
            table = rater_table(frame)
            table.insert(1, "rater", table["rater_id"].map(lambda r: names.get(int(r), str(r))))
            flags = table.pop("flags")
            table.insert(2, "flags", flags)
            shown = _highlight_rows(_rounded(table), table["flags"] != "")
        else:
            shown = _nothing("no judgments yet")
        present = ", ".join(f"`{c}`" for c in categories) or "none"
        return (shown, config_table(), gr.Dropdown(choices=others, value=None),
                gr.Dropdown(choices=[r.name for r in people], value=None),
                f"Sensitive categories in this project's prompts: {present}.")

    def leaderboard_view(admin: Rater, project_name: str) -> tuple[pd.DataFrame, Any, Any, str]:
        from collect import leaderboard as lb

        with db.session_scope(db_url) as s:
            project_id = _project(s, project_name).id
            frame, models = judgments_frame(s, project_id), pair_models(s, project_id)
        if frame.empty:
            return _nothing("no judgments yet"), None, None, "No judgments yet."
        try:
            with warnings.catch_warnings(record=True) as caught:  # groups never compared, perfect separation
                warnings.simplefilter("always", PrefloopWarning)
                board = lb.leaderboard(frame, n_bootstrap=N_BOOTSTRAP)
        except UserError as e:  # e.g. no judgment compares two named models
            return _nothing(str(e)), None, None, html.escape(str(e))
        matrix = lb.win_rate_matrix(frame)
        notes = "".join(f" Warning: {html.escape(str(w.message))}." for w in caught
                        if issubclass(w.category, PrefloopWarning))
        shown = lb.display_bounds(board.round({"rating": 1, "ci_low": 1, "ci_high": 1, "elo": 1, "win_rate": 3}))
        return (shown, lb.plot_leaderboard(board), lb.plot_win_rates(matrix),
                f"{int(board['n_games'].sum()) // 2} model comparisons. "
                f"{html.escape(lb.unjudged_note(board, models))}{notes}")

    def queue_view(admin: Rater, project_name: str) -> pd.DataFrame:
        with db.session_scope(db_url) as s:
            queue = disagreement_queue(s, _project(s, project_name))
        return _rounded(queue) if len(queue) else pd.DataFrame(columns=list(QUEUE_COLUMNS))

    def flagged_view(admin: Rater, project_name: str) -> pd.DataFrame:
        with db.session_scope(db_url) as s:
            flagged = flagged_pairs(s, _project(s, project_name))
        flagged["flagged_at"] = flagged["flagged_at"].map(lambda t: str(t)[:19] if pd.notna(t) else "")
        return flagged

    def read_pair(project_name: str, pair_value: Any) -> PairDetail:
        with db.session_scope(db_url) as s:
            return pair_detail(s, _project(s, project_name), _pair_id(pair_value))

    def open_pair(admin: Rater, project_name: str, pair_value: Any) -> tuple[str, str, str, pd.DataFrame]:
        detail = read_pair(project_name, pair_value)
        votes = pd.DataFrame(columns=VOTE_COLUMNS, data=[{
            "rater": j.rater, "kind": j.kind, "choice": j.label, "both_bad": j.both_bad, "flags": j.flags,
            "rationale": j.rationale, "criteria": json.dumps(j.criteria) if j.criteria else "",
            "submitted_at": str(j.submitted_at)[:19]} for j in detail.judgments])
        return (*_pair_html(detail), votes)

    def open_flagged(admin: Rater, project_name: str, pair_value: Any) -> tuple[str, str, str]:
        return _pair_html(read_pair(project_name, pair_value))

    def decide(admin: Rater, project_name: str, pair_value: Any, choice: Any, note: str) -> str:
        pair_id = _pair_id(pair_value)
        if choice not in CHOICES:
            raise UserError("choose a verdict")
        with db.session_scope(db_url) as s:
            adjudicate(s, admin.id, pair_id, int(choice), note or "", project=_project(s, project_name))
        return f"Pair {pair_id}: recorded **{CHOICES[int(choice)]}** as the admin's decision."

    def review(admin: Rater, project_name: str, pair_value: Any, keep: bool) -> str:
        pair_id = _pair_id(pair_value)
        with db.session_scope(db_url) as s:
            review_flag(s, admin.id, pair_id, keep, project=_project(s, project_name))
        return f"Pair {pair_id} {'returned to the queue' if keep else 'retired'}."

    def keep_pair(admin: Rater, project_name: str, pair_value: Any) -> str:
        return review(admin, project_name, pair_value, True)

    def retire_pair(admin: Rater, project_name: str, pair_value: Any) -> str:
        return review(admin, project_name, pair_value, False)

    def payroll_config(floor: Any, since: str, until: str) -> PayrollConfig:
        return PayrollConfig(floor=float(floor) if floor not in (None, "") else None,
                             since=_date(since, "from"), until=_date(until, "until"))

    def payroll_view(admin: Rater, project_name: str, floor: Any, since: str, until: str) -> tuple[Any, str]:
        config = payroll_config(floor, since, until)
        with db.session_scope(db_url) as s:
            project = _project(s, project_name)
            table = payroll(s, project, config)
        return _payroll_shown(table), _payroll_summary(table, project, config)

    def payroll_csv(admin: Rater, project_name: str, floor: Any, since: str, until: str) -> tuple[Any, str, str]:
        config = payroll_config(floor, since, until)
        with db.session_scope(db_url) as s:
            project = _project(s, project_name)
            out = _out_dir() / f"payroll-{_slug(project.name)}.csv"
            table = export_payroll(s, project, out, config, actor_id=admin.id)
        return _payroll_shown(table), _payroll_summary(table, project, config), str(out)

    def export_view(admin: Rater, project_name: str, aggregation: str, min_confidence: float,
                    include_ties: bool, fmt: str) -> tuple[list[str], str]:
        if fmt not in ("jsonl", "parquet"):
            raise UserError("format must be jsonl or parquet")
        with db.session_scope(db_url) as s:
            project = _project(s, project_name)
            out = _out_dir() / f"{_slug(project.name)}-{aggregation}.{fmt}"
            result = export_project(s, project, out, aggregation=aggregation, min_confidence=float(min_confidence),
                                    include_ties=bool(include_ties), actor_id=admin.id)
        files = [result.path, str(meta_path(Path(result.path)))] + ([result.ties_path] if result.ties_path else [])
        return files, f"Exported {html.escape(result.summary())}."

    # The settings forms' parameters are spelled out (FORM_SETTINGS order): Gradio reads a handler's signature.
    def create(admin: Rater, name: str, description: str, guidelines: str, rubric: str, overlap: float,
               gold_rate: float, repeat_rate: float, pay_rate: float, currency: str, routing: str,
               sensitive_daily_cap: float, lease_seconds: float, idle_seconds: float, break_after_minutes: float
               ) -> tuple[str, Any]:
        settings = ProjectSettings(**_settings_from_form([
            description, guidelines, rubric, overlap, gold_rate, repeat_rate, pay_rate, currency, routing,
            sensitive_daily_cap, lease_seconds, idle_seconds, break_after_minutes]))
        with db.session_scope(db_url) as s:
            project = create_project(s, (name or "").strip(), settings, actor_id=admin.id)
            names = [p.name for p in list_projects(s)]
            created = project.name
        return f"Created project **{html.escape(created)}**.", gr.Dropdown(choices=names, value=created)

    def settings_view(admin: Rater, project_name: str) -> list[Any]:
        with db.session_scope(db_url) as s:
            return _form_values(project_settings(_project(s, project_name)))

    def save_settings(admin: Rater, project_name: str, description: str, guidelines: str, rubric: str,
                      overlap: float, gold_rate: float, repeat_rate: float, pay_rate: float, currency: str,
                      routing: str, sensitive_daily_cap: float, lease_seconds: float, idle_seconds: float,
                      break_after_minutes: float) -> str:
        with db.session_scope(db_url) as s:
            project = _project(s, project_name)
            # A rubric box left as shown keeps the rubric as stored: its text need not read back the same (a
            # description over two lines, a criterion's other keys).
            kept = (rubric or "").strip() == rubric_text(project.rubric).strip()
            form = _settings_from_form([description, guidelines, "" if kept else rubric, overlap, gold_rate,
                                        repeat_rate, pay_rate, currency, routing, sensitive_daily_cap, lease_seconds,
                                        idle_seconds, break_after_minutes])
            if kept:
                del form["rubric"]
            changed = update_project(s, project, actor_id=admin.id, **form)
            name = html.escape(project.name)
        if not changed:
            return f"**{name}** already has these settings: nothing changed."
        return f"Saved **{name}**: changed {html.escape(', '.join(changed))}."

    def import_data(admin: Rater, project_name: str, path: str | None, fmt: str, as_gold: bool) -> str:
        if not path:
            raise UserError("choose a file to import")
        if fmt not in ("auto",) + FORMATS:
            raise UserError(f"format must be auto or one of {', '.join(FORMATS)}")
        with db.session_scope(db_url) as s:
            project = _project(s, project_name)
            result = import_file(s, project, path, fmt, as_gold=bool(as_gold), actor_id=admin.id)
        counts = ", ".join(f"{v} {k}" for k, v in result.as_dict().items())
        return f"Imported {html.escape(Path(path).name)} into **{html.escape(project.name)}**: {counts}."

    def new_rater(admin: Rater, project_name: str, name: str, password: str, role: str, expertise: str,
                  sensitive: str, join: bool) -> tuple[str, Any]:
        if role not in ROLES:
            raise UserError(f"role must be one of {', '.join(ROLES)}")
        with db.session_scope(db_url) as s:
            projects = [_project(s, project_name)] if join else []
            rater = add_rater(s, (name or "").strip(), password or None, role=role, expertise=_csv(expertise),
                              sensitive_opt_in=_csv(sensitive), projects=projects, actor_id=admin.id)
            where = f" and added to **{html.escape(projects[0].name)}**" if projects else ""
            message = f"Added {role} **{html.escape(rater.name)}**{where}."
        return message, gr.Textbox(value="")

    def join_project(admin: Rater, project_name: str, rater_name: str) -> str:
        with db.session_scope(db_url) as s:
            project = _project(s, project_name)
            rater = get_rater(s, rater_name or "")
            added = add_member(s, project, rater, actor_id=admin.id)
        who, where = html.escape(rater.name), html.escape(project.name)
        return (f"**{who}** is now a member of **{where}**." if added
                else f"**{who}** is already a member of **{where}**: nothing changed.")

    def rater_settings(admin: Rater, rater_name: str) -> tuple[str, str]:
        with db.session_scope(db_url) as s:
            rater = get_rater(s, rater_name or "")
            return ", ".join(rater.expertise or []), ", ".join(rater.sensitive_opt_in or [])

    def change_rater(admin: Rater, rater_name: str, expertise: str, sensitive: str) -> str:
        with db.session_scope(db_url) as s:
            rater = update_rater(s, admin.id, rater_name or "", expertise=_csv(expertise),
                                 sensitive_opt_in=_csv(sensitive))
            shown = (html.escape(rater.name), html.escape(", ".join(rater.expertise) or "none"),
                     html.escape(", ".join(rater.sensitive_opt_in) or "none"))
        return "Saved **{}**: expertise {}; sensitive categories {}.".format(*shown)

    def audit_view(admin: Rater, project_name: str, only_project: bool) -> pd.DataFrame:
        with db.session_scope(db_url) as s:
            query = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(AUDIT_ROWS)
            if only_project and project_name:
                query = query.where(AuditEvent.project_id == _project(s, project_name).id)
            names = _names(s)
            projects = {p.id: p.name for p in list_projects(s)}
            rows = [{"at": str(e.at)[:19], "actor": names.get(e.actor_id, "") if e.actor_id else "(cli)",
                     "project": projects.get(e.project_id, "") if e.project_id else "", "action": e.action,
                     "details": json.dumps(e.details, default=str)[:500]} for e in s.scalars(query)]
        return pd.DataFrame(rows, columns=["at", "actor", "project", "action", "details"])

    # ------------------------------------------------------------------------------------- layout

    def settings_form(prefix: str) -> list[Any]:
        """The inputs of FORM_SETTINGS, in that order, with a new project's defaults; elem ids prefix-field."""
        defaults = ProjectSettings()

        def elem(field: str) -> str:
            return f"{prefix}-{field.replace('_', '-')}"

        fields = {
            "description": gr.Textbox(label="Description", elem_id=elem("description")),
            "guidelines": gr.Textbox(label="Guidelines (Markdown, shown to raters)", lines=4,
                                     elem_id=elem("guidelines")),
            "rubric": gr.Textbox(label="Rubric: one criterion a line, `name: description`", lines=3,
                                 elem_id=elem("rubric")),
        }
        with gr.Row():
            fields["overlap"] = gr.Number(label="Overlap k", value=defaults.overlap, precision=0,
                                          elem_id=elem("overlap"))
            fields["gold_rate"] = gr.Number(label="Gold rate (0-1)", value=defaults.gold_rate,
                                            elem_id=elem("gold_rate"))
            fields["repeat_rate"] = gr.Number(label="Repeat rate, sides swapped (0-0.5)", value=defaults.repeat_rate,
                                              elem_id=elem("repeat_rate"))
            fields["pay_rate"] = gr.Number(label="Pay per active hour", value=defaults.pay_rate,
                                           elem_id=elem("pay_rate"))
            fields["currency"] = gr.Textbox(label="Currency", value=defaults.currency, elem_id=elem("currency"))
        fields["routing"] = gr.Radio(list(ROUTING), value=defaults.routing, label="Routing", elem_id=elem("routing"))
        gr.Markdown("Sensitivity policy: items tagged `sensitive:*` go only to raters who opted in to that "
                    "category, behind a content warning, at most this many a day:")
        with gr.Row():
            fields["sensitive_daily_cap"] = gr.Number(label="Sensitive items per rater per day",
                                                      value=defaults.sensitive_daily_cap, precision=0,
                                                      elem_id=elem("sensitive_daily_cap"))
            fields["lease_seconds"] = gr.Number(label="Lease (seconds)", value=defaults.lease_seconds, precision=0,
                                                elem_id=elem("lease_seconds"))
            fields["idle_seconds"] = gr.Number(label="Idle after (seconds)", value=defaults.idle_seconds,
                                               precision=0, elem_id=elem("idle_seconds"))
            fields["break_after_minutes"] = gr.Number(label="Break reminder after (minutes of active time)",
                                                      value=defaults.break_after_minutes, precision=0,
                                                      elem_id=elem("break_after_minutes"))
        return [fields[field] for field in FORM_SETTINGS]

    with gr.Blocks(title="prefloop admin", analytics_enabled=False) as app:
        with gr.Row():
            gr.Markdown("## prefloop · admin")
            who = gr.Markdown("", elem_id="pf-admin-who")
        with gr.Row():
            # Custom values are allowed so that API callers need not load the page first; every handler
            # resolves the name against the database.
            project = gr.Dropdown(label="Project", choices=[], value=None, interactive=True, scale=3,
                                  allow_custom_value=True, elem_id="pf-project")
            refresh = gr.Button("Refresh", scale=1, elem_id="pf-refresh")

        with gr.Tabs():
            with gr.Tab("Overview"):
                status_md = gr.Markdown("", elem_id="pf-status")
                judged_plot = gr.Plot(label="Judgments over time")
                gr.Markdown("#### Agreement (95% bootstrap intervals)")
                agreement_df = gr.Dataframe(label="Agreement", interactive=False, elem_id="pf-agreement")
                agreement_plot = gr.Plot(label="Agreement over time")
                with gr.Accordion("Cohen's kappa per rater pair", open=False):
                    kappa_df = gr.Dataframe(interactive=False)

            with gr.Tab("Raters"):
                gr.Markdown("One row per rater; flagged raters are highlighted. Flags need both the evidence (a "
                            "minimum count) and the effect (thresholds below).")
                rater_df = gr.Dataframe(label="Raters", interactive=False, elem_id="pf-raters", max_height=600)
                with gr.Accordion("Flag thresholds", open=False):
                    thresholds_df = gr.Dataframe(interactive=False)
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("#### Add a person")
                        rater_name = gr.Textbox(label="Name", elem_id="pf-new-rater-name")
                        rater_password = gr.Textbox(label="Password", info=f"Empty: {NO_PASSWORD}.", type="password",
                                                    elem_id="pf-new-rater-password")
                        rater_role = gr.Radio(list(ROLES), value="rater", label="Role")
                        rater_expertise = gr.Textbox(label="Expertise (comma-separated, e.g. domain:medicine)")
                        rater_sensitive = gr.Textbox(label="Opted in to sensitive categories (comma-separated)")
                        rater_join = gr.Checkbox(value=True, label="Member of the selected project")
                        add_rater_button = gr.Button("Add", variant="primary", elem_id="pf-add-rater")
                        add_rater_msg = gr.Markdown("", elem_id="pf-add-rater-msg")
                    with gr.Column():
                        gr.Markdown("#### Add an existing person to this project")
                        member_name = gr.Dropdown(label="Person", choices=[], allow_custom_value=True, elem_id="pf-member")
                        add_member_button = gr.Button("Add to project", elem_id="pf-add-member")
                        member_msg = gr.Markdown("", elem_id="pf-member-msg")
                    with gr.Column():
                        gr.Markdown("#### Change a person's expertise and sensitive-content opt-ins")
                        edit_name = gr.Dropdown(label="Person", choices=[], allow_custom_value=True,
                                                elem_id="pf-edit-rater")
                        edit_expertise = gr.Textbox(label="Expertise (comma-separated, e.g. domain:medicine)",
                                                    elem_id="pf-edit-expertise")
                        edit_sensitive = gr.Textbox(label="Opted in to sensitive categories (comma-separated)",
                                                    elem_id="pf-edit-sensitive")
                        categories_md = gr.Markdown("", elem_id="pf-categories")
                        edit_button = gr.Button("Save changes", elem_id="pf-update-rater")
                        edit_msg = gr.Markdown("", elem_id="pf-edit-rater-msg")

            with gr.Tab("Leaderboard"):
                board_msg = gr.Markdown("")
                board_df = gr.Dataframe(label="Bradley-Terry ratings (95% bootstrap intervals), Elo, win rate",
                                        interactive=False, elem_id="pf-leaderboard")
                with gr.Row():
                    board_plot = gr.Plot(label="Ratings")
                    winrate_plot = gr.Plot(label="Win rates")

            with gr.Tab("Disagreements"):
                gr.Markdown("Pairs whose raters split, or that a flagged rater decided. Select a row (or type a "
                            "pair id), read the pair, and record your decision: export then uses it.")
                queue_df = gr.Dataframe(label="Disagreement queue", interactive=False, elem_id="pf-queue", wrap=True)
                with gr.Row():
                    pair_number = gr.Number(label="Pair id", value=None, precision=0, elem_id="pf-pair-id", scale=1)
                    open_button = gr.Button("Open pair", scale=1, elem_id="pf-open-pair")
                pair_head = gr.HTML("")
                with gr.Row():
                    pair_a = gr.HTML("", elem_id="pf-pair-a")
                    pair_b = gr.HTML("", elem_id="pf-pair-b")
                votes_df = gr.Dataframe(pd.DataFrame(columns=VOTE_COLUMNS), label="Judgments of this pair",
                                        interactive=False, wrap=True, elem_id="pf-votes")
                verdict = gr.Radio(ADJUDICATION_CHOICES, label="Your decision (A and B as shown above)",
                                   elem_id="pf-verdict")
                note = gr.Textbox(label="Note (why)", lines=2, elem_id="pf-note")
                decide_button = gr.Button("Record decision", variant="primary", elem_id="pf-decide")
                decide_msg = gr.Markdown("", elem_id="pf-decide-msg")

            with gr.Tab("Flagged"):
                gr.Markdown("Pairs raters flagged as harmful, out of every queue until you review them. Select a "
                            "row (or type a pair id) to read the pair, then return it to the queue or retire it.")
                flagged_df = gr.Dataframe(pd.DataFrame(columns=list(FLAGGED_COLUMNS)), label="Flagged pairs",
                                          interactive=False, wrap=True, elem_id="pf-flagged")
                with gr.Row():
                    flag_number = gr.Number(label="Pair id", value=None, precision=0, elem_id="pf-flag-pair-id",
                                            scale=1)
                    open_flag_button = gr.Button("Open pair", scale=1, elem_id="pf-open-flagged")
                flag_head = gr.HTML("", elem_id="pf-flag-head")
                with gr.Row():
                    flag_a = gr.HTML("", elem_id="pf-flag-a")
                    flag_b = gr.HTML("", elem_id="pf-flag-b")
                with gr.Row():
                    keep_button = gr.Button("Return to the queue", elem_id="pf-keep")
                    retire_button = gr.Button("Retire", variant="stop", elem_id="pf-retire")
                flag_msg = gr.Markdown("", elem_id="pf-flag-msg")

            with gr.Tab("Payroll"):
                gr.Markdown("Pay is the project's rate per active hour of submitted judgments. Effective hourly "
                            "pay divides it by all logged active time, including skipped and expired work. Raters "
                            "under the floor are highlighted.")
                with gr.Row():
                    floor = gr.Number(label="Floor (per hour)", value=None, elem_id="pf-floor")
                    since = gr.Textbox(label="From (YYYY-MM-DD, optional)")
                    until = gr.Textbox(label="Until, exclusive (optional)")
                with gr.Row():
                    payroll_button = gr.Button("Show payroll", elem_id="pf-payroll")
                    payroll_csv_button = gr.Button("Export CSV", variant="primary", elem_id="pf-payroll-csv")
                payroll_msg = gr.Markdown("", elem_id="pf-payroll-msg")
                payroll_df = gr.Dataframe(_nothing("choose the period, then Show payroll"), label="Payroll",
                                          interactive=False, elem_id="pf-payroll-table")
                payroll_file = gr.File(label="Payroll CSV", interactive=False, elem_id="pf-payroll-file")

            with gr.Tab("Export"):
                with gr.Row():
                    aggregation = gr.Radio(list(AGGREGATIONS), value="majority", label="Aggregation",
                                           elem_id="pf-aggregation")
                    export_format = gr.Radio(["jsonl", "parquet"], value="jsonl", label="Format")
                with gr.Row():
                    min_confidence = gr.Slider(0, 1, value=0, step=0.05, label="Minimum confidence")
                    include_ties = gr.Checkbox(value=False, label="Also write ties and both-bad pairs")
                export_button = gr.Button("Export preference dataset", variant="primary", elem_id="pf-export")
                export_msg = gr.Markdown("", elem_id="pf-export-msg")
                export_files = gr.File(label="Files", file_count="multiple", interactive=False,
                                       elem_id="pf-export-files")

            with gr.Tab("Projects"):
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("#### New project")
                        new_name = gr.Textbox(label="Name", elem_id="pf-new-project")
                        new_fields = settings_form("pf-new")
                        create_button = gr.Button("Create project", variant="primary", elem_id="pf-create")
                        create_msg = gr.Markdown("", elem_id="pf-create-msg")
                    with gr.Column():
                        gr.Markdown("#### Settings of the selected project")
                        set_fields = settings_form("pf-set")
                        save_settings_button = gr.Button("Save settings", variant="primary",
                                                         elem_id="pf-save-settings")
                        settings_msg = gr.Markdown("", elem_id="pf-settings-msg")
                gr.Markdown("#### Import into the selected project")
                with gr.Row():
                    upload = gr.File(label="JSONL, JSON, CSV or Parquet (optionally .gz)", type="filepath",
                                     elem_id="pf-upload", scale=2)
                    with gr.Column(scale=1):
                        import_format = gr.Dropdown(["auto", *FORMATS], value="auto", label="Format")
                        as_gold = gr.Checkbox(value=False, label="Labels are gold answers (for rater checks)")
                        import_button = gr.Button("Import", variant="primary", elem_id="pf-import")
                import_msg = gr.Markdown("", elem_id="pf-import-msg")

            with gr.Tab("Audit log"):
                only_project = gr.Checkbox(value=True, label="Only the selected project", elem_id="pf-audit-only")
                audit_df = gr.Dataframe(label=f"Latest {AUDIT_ROWS} events", interactive=False, wrap=True,
                                        elem_id="pf-audit")

        # ------------------------------------------------------------------------------- events

        views = [
            (overview, [project], [status_md, judged_plot, agreement_df, kappa_df, agreement_plot]),
            (raters_view, [project], [rater_df, thresholds_df, member_name, edit_name, categories_md]),
            (leaderboard_view, [project], [board_df, board_plot, winrate_plot, board_msg]),
            (queue_view, [project], [queue_df]),
            (flagged_view, [project], [flagged_df]),
            (audit_view, [project, only_project], [audit_df]),
            (settings_view, [project], set_fields),
        ]
        app.load(guarded(start), None, [project, who], api_name="start")
        for fn, inputs, outputs in views:
            gr.on([project.change, refresh.click], guarded(fn), inputs, outputs, api_name=fn.__name__)
        only_project.change(guarded(audit_view), [project, only_project], [audit_df], api_name="audit_filter")

        def then_refresh(event: Any, *fns: Callable[..., Any]) -> None:
            for fn, inputs, outputs in views:
                if fn in fns:
                    event = event.success(guarded(fn), inputs, outputs, api_visibility="private")

        def select_pair(admin: Rater, evt: gr.SelectData) -> Any:
            row = evt.row_value or []
            return _pair_id(row[0]) if row else None

        queue_df.select(guarded(select_pair), None, [pair_number], api_name="select_pair").success(
            guarded(open_pair), [project, pair_number], [pair_head, pair_a, pair_b, votes_df],
            api_visibility="private")
        flagged_df.select(guarded(select_pair), None, [flag_number], api_name="select_flagged").success(
            guarded(open_flagged), [project, flag_number], [flag_head, flag_a, flag_b], api_visibility="private")
        open_button.click(guarded(open_pair), [project, pair_number], [pair_head, pair_a, pair_b, votes_df],
                          api_name="open_pair")
        open_flag_button.click(guarded(open_flagged), [project, flag_number], [flag_head, flag_a, flag_b],
                               api_name="open_flagged")
        then_refresh(decide_button.click(guarded(decide), [project, pair_number, verdict, note], [decide_msg],
                                         api_name="decide"), queue_view, audit_view)
        then_refresh(keep_button.click(guarded(keep_pair), [project, flag_number], [flag_msg],
                                       api_name="keep_pair"), flagged_view, queue_view, overview, audit_view)
        then_refresh(retire_button.click(guarded(retire_pair), [project, flag_number], [flag_msg],
                                         api_name="retire_pair"), flagged_view, queue_view, overview, audit_view)
        payroll_button.click(guarded(payroll_view), [project, floor, since, until], [payroll_df, payroll_msg],
                             api_name="payroll")
        then_refresh(payroll_csv_button.click(guarded(payroll_csv), [project, floor, since, until],
                                              [payroll_df, payroll_msg, payroll_file], api_name="payroll_csv"),
                     audit_view)
        then_refresh(export_button.click(guarded(export_view), [project, aggregation, min_confidence, include_ties,
                                                                 export_format], [export_files, export_msg],
                                         api_name="export"), audit_view)
        create_button.click(guarded(create), [new_name, *new_fields], [create_msg, project], api_name="create_project")
        then_refresh(save_settings_button.click(guarded(save_settings), [project, *set_fields], [settings_msg],
                                                api_name="save_settings"), settings_view, overview, audit_view)
        then_refresh(import_button.click(guarded(import_data), [project, upload, import_format, as_gold],
                                         [import_msg], api_name="import"),
                     overview, raters_view, leaderboard_view, queue_view, audit_view)
        then_refresh(add_rater_button.click(guarded(new_rater), [project, rater_name, rater_password, rater_role,
                                                                  rater_expertise, rater_sensitive, rater_join],
                                            [add_rater_msg, rater_password], api_name="add_rater"),
                     raters_view, audit_view)
        then_refresh(add_member_button.click(guarded(join_project), [project, member_name], [member_msg],
                                             api_name="add_member"), raters_view, audit_view)
        edit_name.input(guarded(rater_settings), [edit_name], [edit_expertise, edit_sensitive],
                        api_name="rater_settings")
        then_refresh(edit_button.click(guarded(change_rater), [edit_name, edit_expertise, edit_sensitive],
                                       [edit_msg], api_name="update_rater"), audit_view)
    return app


def _payroll_shown(table: pd.DataFrame) -> Any:
    if table.empty:
        return table
    return _highlight_rows(table.reset_index(drop=True), table["below_floor"].reset_index(drop=True),
                           money=("pay", "effective_hourly"))


def _payroll_summary(table: pd.DataFrame, project: Project, config: PayrollConfig) -> str:
    period = (f"{config.since.date() if config.since else 'start'} to "
              f"{config.until.date() if config.until else 'now'}")
    under = int(table["below_floor"].sum()) if len(table) else 0
    floor = f"; {under} under the floor of {config.floor:g} {project.currency}/h" if config.floor is not None else ""
    total = float(table["pay"].sum()) if len(table) else 0.0
    return (f"**{len(table)}** raters, **{total:.2f} {html.escape(project.currency)}** in total at "
            f"{project.pay_rate:g} {html.escape(project.currency)}/h, {period}{floor}.")
