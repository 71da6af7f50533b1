"""The `prefloop` command. Each command is a thin wrapper over the Python API of one stage."""

from __future__ import annotations

import gc
import json
import os
import sys
import warnings

# datasets' bars for local conversions (reading a file, writing Arrow as JSON) on every command, in a log as much as
# on a terminal; read when datasets is imported (set it to 0 for them). Hub download bars stay.
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import OperationalError

from collect import db
from collect.cli_options import ADMIN_OPTION, CSV_OUT_OPTION, DB_HELP, DB_OPTION, PROJECT_OPTION
from collect.errors import PrefloopWarning, UserError
from collect.projects import NO_PASSWORD
from apps.demo import demo_command
from collect.generate import generate_command
from collect.quality_cli import app as quality_app
from finetune.cli import app as align_app
from reward.cli import app as reward_app

NO_PROJECTS = "no projects yet: create one with `prefloop project create NAME`"

app = typer.Typer(help="prefloop: a self-hosted RLHF data engine.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
project_app = typer.Typer(help="Create, change and list projects.", no_args_is_help=True)
rater_app = typer.Typer(help="Add, change and list raters.", no_args_is_help=True)
flagged_app = typer.Typer(help="Pairs raters flagged as harmful: list them, return one to the queue or retire it.",
                          no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(rater_app, name="rater")
app.add_typer(flagged_app, name="flagged")
app.add_typer(quality_app, name="quality", help="Agreement, per-rater quality and the model leaderboard.")
app.add_typer(reward_app, name="reward")
app.add_typer(align_app, name="align")

# Names, paths and messages come from users and files: print them as text, never as rich markup.
console = Console(markup=False)


@app.callback()
def _before_any_command(
    ctx: typer.Context,
    url: Optional[str] = typer.Option(None, "--db", help=DB_HELP + " Given before the command, it is "
                                      "PREFLOOP_DB for this run: `prefloop --db URL status`; one after it wins."),
) -> None:
    # Click runs a group's callback before it parses the command's own options, so PREFLOOP_DB set here reaches
    # every command's --db (their envvar), nested ones (`project list`) too; restored when the run ends.
    if url is None:
        return
    before = os.environ.get("PREFLOOP_DB")
    os.environ["PREFLOOP_DB"] = url
    ctx.call_on_close(lambda: os.environ.pop("PREFLOOP_DB") if before is None
                      else os.environ.__setitem__("PREFLOOP_DB", before))


def _password(value: str | None, envvar: str) -> str:
    """The password given, or one asked for on the terminal."""
    if value:
        return value
    try:
        return typer.prompt("password", hide_input=True, confirmation_prompt=True)
    except typer.Abort:  # end of input (nothing to read from stdin) or Ctrl-C at the prompt
        raise UserError(f"no password entered: pass --password or set {envvar}") from None


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@app.command()
def init(
    url: Optional[str] = DB_OPTION,
    admin: Optional[str] = typer.Option(None, help="Also create an admin with this name."),
    password: Optional[str] = typer.Option(None, envvar="PREFLOOP_ADMIN_PASSWORD",
                                           help="The admin's password (asked for when missing)."),
) -> None:
    """Create the database (or migrate it to the newest schema)."""
    from collect.projects import add_rater

    db.check_database(url, create=True)
    with db.connection_errors(url):
        db.upgrade(url)
    console.print(f"database ready: {db.shown_url(url)}")
    if admin:
        password = _password(password, "PREFLOOP_ADMIN_PASSWORD")
        with db.existing_session(url) as session:
            add_rater(session, admin, password, role="admin")
        console.print(f"admin {admin!r} created")


PROJECT_HELP = {
    "overlap": "How many raters judge each pair (k).",
    "gold_rate": "Share of served items that are gold pairs.",
    "repeat_rate": "Share of served items that repeat a pair the rater judged earlier, sides swapped (consistency "
                   "check; 0-0.5).",
    "pay_rate": "Pay per active hour.",
    "currency": "Currency of the pay rate.",
    "description": "What the project is about (the JSON API lists it with the project).",
    "guidelines": "A Markdown file with the rating guidelines.",
    "rubric": "A criterion raters rate per pair, 'name' or 'name: what it means' (repeatable, one criterion each).",
    "routing": "any | experts_first | experts_only",
    "sensitive_daily_cap": "Most sensitive items per rater per day.",
    "lease_seconds": "Seconds before an unfinished assignment returns to the pool.",
    "idle_seconds": "Gaps between a rater's actions longer than this many seconds are not paid time.",
    "break_after_minutes": "Minutes of active time without a pause after which a rater is reminded to take a break.",
}
"""The help of each project setting, the same for `project create` and `project update`."""


@project_app.command("create")
def project_create(
    name: str,
    url: Optional[str] = DB_OPTION,
    overlap: int = typer.Option(3, help=PROJECT_HELP["overlap"]),
    gold_rate: float = typer.Option(0.0, help=PROJECT_HELP["gold_rate"]),
    repeat_rate: float = typer.Option(0.0, help=PROJECT_HELP["repeat_rate"]),
    pay_rate: float = typer.Option(0.0, help=PROJECT_HELP["pay_rate"]),
    currency: str = typer.Option("USD", help=PROJECT_HELP["currency"]),
    description: str = typer.Option("", help=PROJECT_HELP["description"]),
    guidelines: Optional[Path] = typer.Option(None, help=PROJECT_HELP["guidelines"]),
    rubric: list[str] = typer.Option([], help=PROJECT_HELP["rubric"]),
    routing: str = typer.Option("experts_first", help=PROJECT_HELP["routing"]),
    sensitive_daily_cap: int = typer.Option(20, help=PROJECT_HELP["sensitive_daily_cap"]),
    lease_seconds: int = typer.Option(900, help=PROJECT_HELP["lease_seconds"]),
    idle_seconds: int = typer.Option(120, help=PROJECT_HELP["idle_seconds"]),
    break_after_minutes: int = typer.Option(50, help=PROJECT_HELP["break_after_minutes"]),
) -> None:
    """Create a project."""
    from collect.projects import ProjectSettings, create_project, parse_rubric

    settings = ProjectSettings(
        description=description, overlap=overlap, gold_rate=gold_rate, repeat_rate=repeat_rate, pay_rate=pay_rate,
        currency=currency, routing=routing, guidelines=_guidelines_text(guidelines),
        sensitive_daily_cap=sensitive_daily_cap, rubric=parse_rubric(_checked_rubric(rubric)),
        lease_seconds=lease_seconds, idle_seconds=idle_seconds, break_after_minutes=break_after_minutes)
    with db.existing_session(url) as session:
        project = create_project(session, name, settings)
        console.print(f"project {project.name!r} created (id {project.id}, overlap {overlap})")


@project_app.command("update")
def project_update(
    name: str,
    admin: str = ADMIN_OPTION,
    url: Optional[str] = DB_OPTION,
    overlap: Optional[int] = typer.Option(None, help=PROJECT_HELP["overlap"]),
    gold_rate: Optional[float] = typer.Option(None, help=PROJECT_HELP["gold_rate"]),
    repeat_rate: Optional[float] = typer.Option(None, help=PROJECT_HELP["repeat_rate"]),
    pay_rate: Optional[float] = typer.Option(None, help=PROJECT_HELP["pay_rate"]),
    currency: Optional[str] = typer.Option(None, help=PROJECT_HELP["currency"]),
    description: Optional[str] = typer.Option(None, help=PROJECT_HELP["description"]),
    guidelines: Optional[Path] = typer.Option(None, help=PROJECT_HELP["guidelines"]),
    rubric: list[str] = typer.Option([], help=PROJECT_HELP["rubric"] + " Given, they replace the rubric."),
    routing: Optional[str] = typer.Option(None, help=PROJECT_HELP["routing"]),
    sensitive_daily_cap: Optional[int] = typer.Option(None, help=PROJECT_HELP["sensitive_daily_cap"]),
    lease_seconds: Optional[int] = typer.Option(None, help=PROJECT_HELP["lease_seconds"]),
    idle_seconds: Optional[int] = typer.Option(None, help=PROJECT_HELP["idle_seconds"]),
    break_after_minutes: Optional[int] = typer.Option(None, help=PROJECT_HELP["break_after_minutes"]),
) -> None:
    """Change a project's settings; those not given stay as they are."""
    from collect.projects import get_project, get_rater, parse_rubric, require_admin, update_project

    changes = {key: value for key, value in dict(
        overlap=overlap, gold_rate=gold_rate, repeat_rate=repeat_rate, pay_rate=pay_rate, currency=currency,
        description=description, routing=routing, sensitive_daily_cap=sensitive_daily_cap,
        lease_seconds=lease_seconds, idle_seconds=idle_seconds, break_after_minutes=break_after_minutes,
    ).items() if value is not None}
    if guidelines is not None:
        changes["guidelines"] = _guidelines_text(guidelines)
    if rubric:
        changes["rubric"] = parse_rubric(_checked_rubric(rubric))
    if not changes:
        raise UserError("nothing to change: give the settings to change (see --help)")
    with db.existing_session(url) as session:
        actor = require_admin(session, get_rater(session, admin).id)
        project = get_project(session, name)
        changed = update_project(session, project, actor_id=actor.id, **changes)
        console.print(f"project {project.name!r} updated: {', '.join(sorted(changed))}" if changed
                      else f"project {project.name!r} already has those settings: nothing changed")


def _checked_rubric(rubric: list[str]) -> list[str]:
    for criterion in rubric:  # the dashboard's box skips blank lines; a --rubric value is one criterion
        if not criterion.strip():
            raise UserError(f"--rubric {criterion!r}: a criterion needs a name ('name' or 'name: what it means')")
    return rubric


def _guidelines_text(guidelines: Path | None) -> str:
    if guidelines is not None and not guidelines.is_file():
        raise UserError(f"{guidelines}: no such file")
    return guidelines.read_text() if guidelines else ""


@project_app.command("list")
def project_list(url: Optional[str] = DB_OPTION) -> None:
    """List projects with their progress."""
    from collect.projects import list_projects
    from collect.status import project_status

    table = Table("id", "name", "overlap", "pairs", "judgments", "progress")
    with db.existing_session(url) as session:
        for project in list_projects(session):
            s = project_status(session, project)
            table.add_row(str(project.id), project.name, str(project.overlap), str(s.pairs), str(s.judgments),
                          s.progress_shown)
    console.print(table if table.row_count else NO_PROJECTS)


@rater_app.command("add")
def rater_add(
    ctx: typer.Context,
    name: str,
    url: Optional[str] = DB_OPTION,
    password: Optional[str] = typer.Option(None, envvar="PREFLOOP_RATER_PASSWORD",
                                           help="Login password (asked for when missing)."),
    no_password: bool = typer.Option(False, "--no-password", help=f"Add them without a password: {NO_PASSWORD}."),
    role: str = typer.Option("rater", help="admin | rater | viewer"),
    project: list[str] = typer.Option([], help="Project to join (repeatable)."),
    expertise: Optional[str] = typer.Option(None, help="Comma-separated tags, e.g. 'domain:medicine'."),
    sensitive_opt_in: Optional[str] = typer.Option(None, help="Comma-separated sensitive categories the rater "
                                                   "agrees to be served, e.g. 'violence,self-harm'."),
) -> None:
    """Add a person who can log in to the apps (an existing one joins a project with `rater update`)."""
    from collect.projects import add_rater, get_project

    # A password typed beside --no-password contradicts it; one from PREFLOOP_RATER_PASSWORD, set for adding raters
    # in bulk, is simply not this person's. (By name: typer carries its own copy of click's ParameterSource.)
    source = ctx.get_parameter_source("password")
    if no_password and source is not None and source.name == "COMMANDLINE":
        raise UserError("--no-password and --password both given")
    password = None if no_password else _password(password, "PREFLOOP_RATER_PASSWORD")
    with db.existing_session(url) as session:
        projects = [get_project(session, p) for p in project]
        rater = add_rater(session, name, password, role=role, expertise=_csv(expertise),
                          sensitive_opt_in=_csv(sensitive_opt_in), projects=projects)
        console.print(f"{role} {rater.name!r} added" + (f" to {', '.join(project)}" if project else "")
                      + (f" ({NO_PASSWORD})" if no_password else ""))


@rater_app.command("update")
def rater_update(
    name: str,
    admin: str = ADMIN_OPTION,
    url: Optional[str] = DB_OPTION,
    project: list[str] = typer.Option([], help="Project to join (repeatable); memberships are only added."),
    expertise: Optional[str] = typer.Option(None, help="Comma-separated tags replacing the rater's, e.g. "
                                            "'domain:medicine' ('' clears them; left as they are when missing)."),
    sensitive_opt_in: Optional[str] = typer.Option(None, help="Comma-separated sensitive categories replacing the "
                                                   "rater's opt-ins ('' clears them; left as they are when missing)."),
) -> None:
    """Change a person's projects, expertise or sensitive-content opt-ins, as the dashboard's Raters tab does."""
    from collect.projects import add_member, get_project, get_rater, update_rater

    if not project and expertise is None and sensitive_opt_in is None:
        raise UserError("nothing to change: give --project, --expertise or --sensitive-opt-in")
    with db.existing_session(url) as session:
        admin_id = get_rater(session, admin).id
        # update_rater checks that --admin is an admin, even when only --project is given.
        rater = update_rater(session, admin_id, name, expertise=None if expertise is None else _csv(expertise),
                             sensitive_opt_in=None if sensitive_opt_in is None else _csv(sensitive_opt_in))
        projects = [get_project(session, p) for p in project]
        joined = [p.name for p in projects if add_member(session, p, rater, actor_id=admin_id)]
        already = [p.name for p in projects if p.name not in joined]
        console.print(f"{rater.name!r}: expertise {', '.join(rater.expertise) or 'none'}; sensitive opt-in "
                      f"{', '.join(rater.sensitive_opt_in) or 'none'}"
                      + (f"; now a member of {', '.join(joined)}" if joined else "")
                      + (f"; already a member of {', '.join(already)}" if already else ""))


@rater_app.command("list")
def rater_list(
    url: Optional[str] = DB_OPTION,
    project: Optional[str] = typer.Option(None, help="Only this project's members (name or id)."),
) -> None:
    """List raters (of one project with --project)."""
    from collect.projects import get_project, list_raters

    table = Table("id", "name", "role", "expertise", "sensitive opt-in", "imported")
    with db.existing_session(url) as session:
        p = get_project(session, project) if project else None
        for r in list_raters(session, p):
            table.add_row(str(r.id), r.name, r.role, ", ".join(r.expertise), ", ".join(r.sensitive_opt_in),
                          "yes" if r.external else "")
    console.print(table)


@app.command("import")
def import_(
    path: Path,
    project: str = PROJECT_OPTION,
    url: Optional[str] = DB_OPTION,
    format: str = typer.Option("auto", help="auto | generic | hh-rlhf | summarize | finegrained-qa | alpaca-eval | trl"),
    rater: Optional[str] = typer.Option(None, help="Who labeled a file that names no rater."),
    as_gold: bool = typer.Option(False, "--as-gold", help="Make the file's labels gold answers, not judgments."),
) -> None:
    """Import prompts, pairs and judgments. Atomic: one bad row and nothing is imported."""
    from collect.ingest import import_parsed, read_file
    from collect.projects import get_project

    with db.existing_session(url) as session:
        get_project(session, project)  # a wrong name fails now, not after parsing a large file
    # Parsed outside any transaction: on SQLite a transaction holds the write lock every rater needs.
    with console.status(f"reading {escape(path.name)}"):
        parsed = read_file(path, format, rater=rater)
    with db.existing_session(url) as session, _progress() as progress:
        task = progress.add_task(f"importing {escape(path.name)}", total=None)
        result = import_parsed(session, get_project(session, project), parsed, as_gold=as_gold,
                               progress=_reporter(progress, task))
    console.print(f"imported {path}: " + ", ".join(f"{v} {k}" for k, v in result.as_dict().items())
                  + " (new; anything already there was skipped)")


@app.command()
def export(
    out: Path,
    project: str = PROJECT_OPTION,
    url: Optional[str] = DB_OPTION,
    aggregation: str = typer.Option("majority", help="majority | weighted"),
    min_confidence: float = typer.Option(0.0, help="Drop pairs whose aggregated confidence is below this."),
    include_ties: bool = typer.Option(False, "--include-ties", help="Write ties and both-bad pairs to a side file."),
) -> None:
    """Export preferences in TRL's conversational format (.parquet, .jsonl, .json as JSON lines, or a save_to_disk
    folder)."""
    from collect.export import export_project
    from collect.projects import get_project

    with db.existing_session(url) as session, _progress() as progress:
        task = progress.add_task(f"exporting {escape(out.name)}", total=None)
        result = export_project(session, get_project(session, project), out, aggregation=aggregation,
                                min_confidence=min_confidence, include_ties=include_ties,
                                progress=_reporter(progress, task))
    console.print(f"exported {result.summary()}; written to {result.path}"
                  + (f", ties and both-bad pairs to {result.ties_path}" if result.ties_path else ""))


@app.command()
def status(
    project: Optional[str] = typer.Option(None, help="One project (default: all)."),
    url: Optional[str] = DB_OPTION,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Prompts, pairs, judgments and progress toward the overlap, per project."""
    from collect.projects import get_project, list_projects
    from collect.status import project_status

    with db.existing_session(url) as session:
        projects = [get_project(session, project)] if project else list_projects(session)
        statuses = [project_status(session, p) for p in projects]
    if json_out:
        print(json.dumps([{**s.__dict__, "progress": s.progress} for s in statuses], indent=2))
        return
    if not statuses:
        console.print(NO_PROJECTS)
    # A table per project, a figure per line: ten columns side by side were cut to "comp…" at 80 columns.
    for s in statuses:
        table = Table("", "", title=s.project, show_header=False, title_justify="left")
        for name, value in (("prompts", s.prompts), ("pairs", s.pairs), ("gold", s.gold_pairs),
                            ("flagged", s.flagged_pairs), ("judgments", s.judgments), ("raters", s.raters),
                            ("complete pairs", f"{s.pairs_complete} (k={s.overlap})"),
                            ("judgments needed", s.judgments_needed), ("progress", s.progress_shown)):
            table.add_row(name, str(value))
        console.print(table)


@app.command()
def payroll(
    project: str = PROJECT_OPTION,
    url: Optional[str] = DB_OPTION,
    floor: Optional[float] = typer.Option(None, help="Minimum effective hourly pay; raters under it are flagged."),
    since: Optional[datetime] = typer.Option(None, help="Start of the pay period (UTC)."),
    until: Optional[datetime] = typer.Option(None, help="End of the pay period (UTC), exclusive."),
    out: Optional[Path] = CSV_OUT_OPTION,
) -> None:
    """Per rater: judgments, active hours, pay at the project rate, effective hourly pay."""
    from collect.payroll import PayrollConfig, export_payroll
    from collect.payroll import payroll as payroll_table
    from collect.projects import get_project

    config = PayrollConfig(floor=floor, since=since, until=until)
    with db.existing_session(url) as session:
        p = get_project(session, project)
        table = export_payroll(session, p, out, config) if out else payroll_table(session, p, config)
    when = "in this period" if since or until else "on it yet"
    _print_frame(table, f"payroll: {project}", f"payroll: {project}: nothing to pay (no rater has worked {when})")


@app.command()
def queue(
    project: str = PROJECT_OPTION,
    url: Optional[str] = DB_OPTION,
    split_below: float = typer.Option(0.75, help="A pair is split when its top direction has less than this share."),
) -> None:
    """The disagreement queue: pairs where raters split, or where a flagged rater decided."""
    from collect.adjudicate import QueueConfig, disagreement_queue
    from collect.projects import get_project

    with db.existing_session(url) as session:
        table = disagreement_queue(session, get_project(session, project), QueueConfig(split_below=split_below))
    _print_frame(table, f"disagreements: {project}", f"disagreements: {project}: nothing to adjudicate")


@app.command()
def adjudicate(
    project: str = PROJECT_OPTION,
    pair: int = typer.Option(..., help="Pair id (from `prefloop queue`)."),
    choice: str = typer.Option(..., help="A>>B | A>B | tie | B>A | B>>A, or the same as a number from 2 to -2 "
                               "(2 is A>>B)."),
    admin: str = ADMIN_OPTION,
    url: Optional[str] = DB_OPTION,
    note: str = typer.Option("", help="Why."),
) -> None:
    """Decide a disputed pair; the decision overrides the raters' vote in exports."""
    from collect.adjudicate import adjudicate as decide
    from collect.formats import CHOICE_LABELS, parse_choice
    from collect.projects import get_project, get_rater

    try:
        decided = parse_choice(choice, "--choice")
    except UserError:
        raise UserError(f"--choice {choice!r}: expected A>>B, A>B, tie, B>A, B>>A or a number from 2 to -2") from None
    with db.existing_session(url) as session:
        decide(session, get_rater(session, admin).id, pair, decided, note, project=get_project(session, project))
    label = next(name for name, value in CHOICE_LABELS.items() if value == decided)  # `--choice -1` is B>A
    console.print(f"pair {pair} decided: {label}")


@flagged_app.command("list")
def flagged_list(project: str = PROJECT_OPTION, url: Optional[str] = DB_OPTION) -> None:
    """The project's pairs flagged as harmful and awaiting review: who flagged each, when and why."""
    import pandas as pd

    from collect.adjudicate import flagged_pairs
    from collect.projects import get_project

    with db.existing_session(url) as session:
        table = flagged_pairs(session, get_project(session, project))
    table["flagged_at"] = table["flagged_at"].map(lambda t: str(t)[:19] if pd.notna(t) else "")
    _print_frame(table, f"flagged: {project}", f"flagged: {project}: nothing to review")


def _review_flag(project: str, pair: int, admin: str, url: str | None, keep: bool) -> None:
    from collect.assign import review_flag
    from collect.projects import get_project, get_rater

    with db.existing_session(url) as session:
        review_flag(session, get_rater(session, admin).id, pair, keep, project=get_project(session, project))
    console.print(f"pair {pair} {'returned to the queue' if keep else 'retired'}")


@flagged_app.command("keep")
def flagged_keep(
    project: str = PROJECT_OPTION,
    pair: int = typer.Option(..., help="Pair id (from `prefloop flagged list`)."),
    admin: str = ADMIN_OPTION,
    url: Optional[str] = DB_OPTION,
) -> None:
    """Return a flagged pair to the queue: raters are served it again and it is exported."""
    _review_flag(project, pair, admin, url, keep=True)


@flagged_app.command("retire")
def flagged_retire(
    project: str = PROJECT_OPTION,
    pair: int = typer.Option(..., help="Pair id (from `prefloop flagged list`)."),
    admin: str = ADMIN_OPTION,
    url: Optional[str] = DB_OPTION,
) -> None:
    """Retire a flagged pair: no rater is served it again and export leaves it out."""
    _review_flag(project, pair, admin, url, keep=False)


def _print_frame(frame, title: str, empty: str) -> None:
    """A table, or the one line `empty` says when it has no rows (not a table of headers alone)."""
    if frame.empty:
        console.print(empty)
        return
    table = Table(*map(str, frame.columns), title=title)
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row))
    console.print(table)


@app.command()
def serve(
    url: Optional[str] = DB_OPTION,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(7860),
    auth_header: Optional[str] = typer.Option(
        None, help="Trust this header for the user name (e.g. X-Forwarded-User behind an SSO proxy)."),
) -> None:
    """Run the rater app (/), the admin dashboard (/admin) and the JSON API (/api/v1)."""
    from apps.server import serve as run_server

    db.require_database(url)
    run_server(host=host, port=port, db_url=db.database_url(url), auth_header=auth_header)


app.command("generate", help="Generate candidate responses and pair them for the raters.")(generate_command)
app.command("demo", help="The whole loop on this machine: data, reward model, alignment, a new round, the apps.")(
    demo_command)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _reporter(progress: Progress, task: TaskID) -> Callable[[int, int], None]:
    """A `progress(done, total)` callback for the Python API that moves one bar."""
    return lambda done, total: progress.update(task, completed=done, total=total)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # Python's default adds the file, line number and source line: noise to someone running a command.
    mine = category in (UserWarning, PrefloopWarning)
    return f"warning: {message}\n" if mine else f"{category.__name__}: {message}\n"


def main() -> None:
    """Entry point: user errors print one line and exit 1, never a traceback; warnings print one line each."""
    warnings.formatwarning = _one_line_warning
    # PEFT reads Transformers' deprecated `is_gradient_checkpointing` whenever it wraps a model: nothing a user of
    # this command can change.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        # Outside standalone mode typer turns Ctrl-C (outside a command's own handling: while loading, saving, or
        # a second Ctrl-C in training) into Exit(130) and returns that code instead of raising it; no command
        # returns a value of its own.
        code = app(standalone_mode=False)
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as e:
        _print_error(e)
    except OperationalError as e:  # a database failure inside a command that opened its own session
        _print_error(db.connection_problem(e))
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)
    except (typer.Exit, typer.Abort) as e:
        sys.exit(getattr(e, "exit_code", 1))
    except typer.BadParameter as e:  # typer ships its own copy of click: match typer's classes
        if type(e).__name__ == "MissingParameter" or e.param is None:  # a missing option is a usage error
            _show_usage_error(e)
        _print_error(UserError(_bad_value(e)))
    except typer.TyperException as e:  # other usage errors: no such option, a missing argument
        _show_usage_error(e)
    finally:
        leave_process_group()


def _show_usage_error(e: Exception) -> None:
    """Click's usage, a hint and the error; exit 2."""
    if not hasattr(e, "show"):
        raise e
    e.show()
    sys.exit(getattr(e, "exit_code", 2))


_EXPECTED = {"integer": "not a whole number", "number": "not a number"}
DATE_FORMATS = "YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, in UTC"


def _bad_value(e: typer.BadParameter) -> str:
    """One line for an option given a value of the wrong type (`--until garbage`): the option, the value and what it
    takes, instead of click's usage box."""
    name = next((o for o in getattr(e.param, "opts", []) if o.startswith("--")), None) or e.param.get_error_hint()
    args = sys.argv[1:]
    given = next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), None)
    if given is None and name in args and args.index(name) + 1 < len(args):
        given = args[args.index(name) + 1]
    shown = f"{name} {given!r}" if given is not None else name
    problem = e.message
    if problem.startswith("Input should be a valid "):  # typer's (pydantic's) conversion messages
        kind, _, detail = problem.removeprefix("Input should be a valid ").partition(", ")
        if kind == "datetime or date":
            problem = f"not a date{f' ({detail})' if detail else ''}; expected {DATE_FORMATS}"
        else:
            problem = _EXPECTED.get(kind, f"not a valid {kind}")
    return f"{shown}: {problem}"


def leave_process_group() -> None:
    """Under `accelerate launch`, leave the ranks' process group before the interpreter shuts down.

    Left to the interpreter's teardown, Gloo's worker threads can still hold tensors then, and a rank that already
    saved its work dies with SIGABRT ("terminate called without an active exception"), so the launcher reports a
    failed run (seen once in this project's CI, in the two-rank DeepSpeed test; pytorch/pytorch#179291 traces the
    abort). PyTorch asks every process to call `destroy_process_group` once it needs no more communication.
    The collection comes first: the trainer a command dropped sits in reference cycles, and its DDP wrapper holds
    the group; freed only at teardown, after the group was destroyed, it aborted the rank the same way (the
    non-first ranks of two-rank `align --method dpo`, about one run in three on a loaded 2-core machine).
    """
    distributed = sys.modules.get("torch.distributed")  # never import torch for a command that did not
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        gc.collect()
        distributed.destroy_process_group()


def _print_error(e: Exception) -> None:
    """One line on stderr, then exit 1. The message is printed as is: a path such as `data[old].jsonl`
    is text, not rich markup."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
