"""Projects, raters and memberships: who may see what."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from collect.auth import audit, hash_password, verify_password
from collect.defaults import HEARTBEAT_SECONDS
from collect.errors import PermissionDenied, UserError, warn
from collect.models import ROLES, ROUTING, Membership, Pair, Project, Prompt, Rater, is_row_id

MAX_CATEGORY_CHARS = 100
"""Longest sensitive-category name accepted in an opt-in."""


@dataclass
class ProjectSettings:
    """Everything an admin sets when creating a project."""

    guidelines: str = ""
    """Markdown shown to raters in a collapsible panel."""
    description: str = ""
    """What the project is about: the JSON API lists it with the project (`/api/v1/projects`)."""
    rubric: list[dict[str, Any]] | None = None
    """Criteria rated per pair: [{"name": "helpfulness", "description": "..."}]. Each is a 5-point choice."""
    overlap: int = 3
    """k: how many different raters judge each pair."""
    gold_rate: float = 0.0
    """Share of served items that are gold pairs (known answer), mixed in unannounced."""
    pay_rate: float = 0.0
    """Pay per active hour, in `currency`."""
    currency: str = "USD"
    lease_seconds: int = 900
    """An assignment not submitted within this time returns to the pool."""
    routing: str = "experts_first"
    """`any`, `experts_first` (domain-tagged prompts go to matching experts first) or `experts_only`."""
    sensitive_daily_cap: int = 20
    """Most items tagged `sensitive:*` one rater is served per day."""
    break_after_minutes: int = 50
    """A break reminder after this much active time without a pause."""
    idle_seconds: int = 120
    """Gaps between a rater's actions longer than this are not counted as active time."""
    repeat_rate: float = 0.0
    """Share of served items that repeat a pair the rater judged earlier, with the sides swapped: the swap
    consistency check. Repeats take no overlap slot and stay out of aggregation and export."""


def parse_rubric(lines: str | Iterable[str]) -> list[dict[str, str]]:
    """Rubric criteria as people type them, for `ProjectSettings.rubric`: `name` or `name: what it means`.

    `lines` is the dashboard's rubric box (one criterion a line) or the values of `prefloop project create
    --rubric` (one criterion each). Blank lines are skipped. A name with a comma (two criteria on one line) or a
    name given twice is refused.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    rubric: list[dict[str, str]] = []
    for line in lines:
        name, _, description = line.partition(":")
        name, description = name.strip(), description.strip()
        if not name:
            if description:
                raise UserError(f"rubric criterion {line.strip()!r} has no name before the ':'")
            continue
        if "," in name:
            raise UserError(f"rubric criterion {name!r}: one criterion a line (or per --rubric), as "
                            "'name: description'")
        if any(c["name"] == name for c in rubric):
            raise UserError(f"rubric criterion {name!r} is given twice")
        rubric.append({"name": name, "description": description})
    return rubric


def criterion_line(criterion: dict[str, Any]) -> str:
    """A rubric criterion as people type it (`parse_rubric`) and read it: `name` or `name: what it means`."""
    return criterion["name"] + (f": {criterion['description']}" if criterion.get("description") else "")


def rubric_text(rubric: list[dict[str, Any]] | None) -> str:
    """A rubric as the dashboard's rubric box shows it, one criterion a line."""
    return "\n".join(criterion_line(c) for c in rubric or [])


def _check_settings(settings: ProjectSettings) -> None:
    if settings.overlap < 1:
        raise UserError("overlap must be at least 1")
    if not 0 <= settings.gold_rate <= 1:
        raise UserError("gold_rate must be between 0 and 1")
    if not 0 <= settings.repeat_rate <= 0.5:
        raise UserError("repeat_rate must be between 0 and 0.5")
    if settings.pay_rate < 0:
        raise UserError("pay_rate must not be negative")
    if settings.routing not in ROUTING:
        raise UserError(f"routing must be one of {', '.join(ROUTING)}")
    if settings.lease_seconds < 10:
        raise UserError("lease_seconds must be at least 10 (an assignment's lease ends after this many seconds)")
    if settings.idle_seconds < 0:
        raise UserError("idle_seconds must not be negative")
    if settings.idle_seconds < HEARTBEAT_SECONDS:
        warn(f"idle_seconds {settings.idle_seconds} is below the {HEARTBEAT_SECONDS} s between the rater app's "
             f"activity reports: a rater reading without clicking is paid at most {settings.idle_seconds} s of "
             f"every {HEARTBEAT_SECONDS}")
    if settings.sensitive_daily_cap < 0:
        raise UserError("sensitive_daily_cap must not be negative")
    if settings.break_after_minutes < 1:
        raise UserError("break_after_minutes must be at least 1")
    if not 1 <= len(settings.currency or "") <= 8:
        raise UserError("currency must be 1-8 characters, e.g. USD")
    for criterion in settings.rubric or []:
        if not isinstance(criterion, dict) or not criterion.get("name"):
            raise UserError("each rubric criterion needs a 'name'")


def _full_rubric(rubric: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Every criterion with a description, empty where none was given, as `parse_rubric` writes them."""
    return [{"description": "", **criterion} for criterion in rubric or []]


def create_project(
    session: Session, name: str, settings: ProjectSettings | None = None, actor_id: int | None = None
) -> Project:
    settings = settings or ProjectSettings()
    if not name or not name.strip():
        raise UserError("a project needs a name")
    if len(name) > 200:
        raise UserError("a project name is at most 200 characters")
    _check_settings(settings)
    if session.scalar(select(Project).where(Project.name == name)):
        raise UserError(f"project {name!r} already exists")
    values = dict(settings.__dict__)
    values["rubric"] = _full_rubric(values["rubric"])
    project = Project(name=name, **values)
    session.add(project)
    session.flush()
    audit(session, "project.create", actor_id, project.id, name=name, settings=values)
    return project


def project_settings(project: Project) -> ProjectSettings:
    """A project's current settings, in the form `create_project` takes them."""
    return ProjectSettings(**{key: getattr(project, key) for key in ProjectSettings.__dataclass_fields__})


def update_project(session: Session, project: Project, actor_id: int | None = None, **changes: Any) -> dict[str, Any]:
    """Change the settings named in `changes` (fields of ProjectSettings), checked as `create_project` checks them.

    Returns the settings whose value differs from before: only those are changed and audited, so a form that
    sends every setting records what the admin changed, not what they left alone.
    """
    settings = project_settings(project)
    for key, value in changes.items():
        if key not in ProjectSettings.__dataclass_fields__:
            raise UserError(f"unknown project setting {key!r}")
        setattr(settings, key, value)
    _check_settings(settings)
    if "rubric" in changes:
        changes["rubric"] = _full_rubric(changes["rubric"])
    changed = {key: value for key, value in changes.items()
               if (_full_rubric(project.rubric) if key == "rubric" else getattr(project, key)) != value}
    for key, value in changed.items():
        setattr(project, key, value)
    if changed:
        audit(session, "project.update", actor_id, project.id, changes=changed)
    return changed


def get_project(session: Session, name_or_id: str | int) -> Project:
    if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
        project = session.get(Project, int(name_or_id))
        if project is None:
            project = session.scalar(select(Project).where(Project.name == str(name_or_id)))
    else:
        project = session.scalar(select(Project).where(Project.name == name_or_id))
    if project is None:
        raise UserError(f"no project {name_or_id!r} (see `prefloop project list`)")
    return project


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.id)))


NO_PASSWORD = "cannot log in with a password, only through an SSO proxy (prefloop serve --auth-header)"
"""What a person added without a password can do: `prefloop rater add --no-password` and the dashboard say it."""


def add_rater(
    session: Session,
    name: str,
    password: str | None = None,
    *,
    role: str = "rater",
    expertise: list[str] | None = None,
    sensitive_opt_in: list[str] | None = None,
    projects: list[Project] | None = None,
    actor_id: int | None = None,
) -> Rater:
    """Add a person who can log in: with a password, or with none through an SSO proxy (see NO_PASSWORD)."""
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}")
    if not name or not name.strip():
        raise UserError("a rater needs a name")
    if len(name) > 200:
        raise UserError("a rater name is at most 200 characters")
    expertise = _checked_expertise(expertise)
    if session.scalar(select(Rater).where(Rater.name == name)):
        raise UserError(f"rater {name!r} already exists: change their projects, expertise or opt-ins with "
                        "`prefloop rater update` or the dashboard's Raters tab")
    rater = Rater(
        name=name,
        role=role,
        password_hash=hash_password(password) if password else None,
        expertise=expertise,
        sensitive_opt_in=normalize_categories(sensitive_opt_in),
    )
    session.add(rater)
    session.flush()
    for project in projects or []:
        add_member(session, project, rater, actor_id=actor_id)
    audit(session, "rater.add", actor_id, None, rater=name, role=role, expertise=rater.expertise)
    return rater


def _checked_expertise(tags: Iterable[str] | None) -> list[str]:
    """Expertise tags, trimmed and without repeats; each must look like `domain:<name>`."""
    checked = []
    for tag in tags or []:
        tag = tag.strip() if isinstance(tag, str) else tag
        if not isinstance(tag, str) or not tag.startswith("domain:"):
            raise UserError(f"expertise tag {tag!r} must look like 'domain:<name>'")
        checked.append(tag)
    return list(dict.fromkeys(checked))


def normalize_categories(categories: Iterable[str] | None) -> list[str]:
    """Sensitive categories as stored in an opt-in: lower case, trimmed, without repeats, sorted.

    Category names are compared in lower case, so "Violence" and "violence" are one category; a leading
    `sensitive:` (the prompt tag's prefix) is dropped. Commas are refused: prompts list their categories
    joined by commas.
    """
    names = set()
    for value in categories or []:
        if not isinstance(value, str):
            raise UserError(f"a sensitive category is a name, not {value!r}")
        name = value.strip().lower().removeprefix("sensitive:").strip()
        if "," in name or len(name) > MAX_CATEGORY_CHARS:
            raise UserError(f"{value[:MAX_CATEGORY_CHARS]!r} is not a sensitive category name "
                            f"(no commas, at most {MAX_CATEGORY_CHARS} characters)")
        if name:
            names.add(name)
    return sorted(names)


def sensitive_categories(session: Session, project_id: int) -> list[str]:
    """The sensitive categories (lower case) that the project's prompts are tagged with."""
    tagged = session.scalars(select(Prompt.sensitive).distinct().where(
        Prompt.project_id == project_id, Prompt.sensitive != ""))
    return normalize_categories(name for value in tagged for name in value.split(","))


def sensitive_opt_in_choices(session: Session, rater_id: int, project_id: int) -> tuple[list[str], list[str]]:
    """(the project's sensitive categories, those the rater opted in to), for the rater's own page.

    PermissionDenied unless the rater may work in the project.
    """
    rater = require_member(session, project_id, rater_id)
    offered = sensitive_categories(session, project_id)
    opted = set(normalize_categories(rater.sensitive_opt_in))
    return offered, [c for c in offered if c in opted]


def set_sensitive_opt_in(session: Session, rater_id: int, project_id: int, categories: Iterable[str]) -> list[str]:
    """A rater's own choice of which of a project's sensitive categories they agree to be served.

    `rater_id` is the caller (from their login, never from the browser): a rater changes only their own
    opt-ins, only in a project they may work in, and only for categories that project's prompts carry;
    opt-ins for other projects' categories stay as they were. A change is written to the audit log.
    Returns the project's categories the rater is now opted in to.
    """
    offered, _ = sensitive_opt_in_choices(session, rater_id, project_id)
    chosen = normalize_categories(categories)
    unknown = [c for c in chosen if c not in offered]
    if unknown:
        raise UserError(f"not a sensitive category of this project: {', '.join(unknown)}")
    rater = session.get(Rater, rater_id)
    before = normalize_categories(rater.sensitive_opt_in)
    after = sorted({c for c in before if c not in offered} | set(chosen))
    if after != before:
        rater.sensitive_opt_in = after
        audit(session, "rater.sensitive_opt_in", rater.id, project_id, rater=rater.name, before=before, after=after)
    return chosen


def update_rater(
    session: Session,
    admin_id: int,
    name_or_id: str | int,
    *,
    expertise: Iterable[str] | None = None,
    sensitive_opt_in: Iterable[str] | None = None,
) -> Rater:
    """An admin changes a person's expertise tags or sensitive-category opt-ins (None leaves one as it is).

    Only admins (PermissionDenied otherwise). Each change is written to the audit log with the old values.
    """
    admin = require_admin(session, admin_id)
    rater = get_rater(session, name_or_id)
    wanted = {}
    if expertise is not None:
        wanted["expertise"] = _checked_expertise(expertise)
    if sensitive_opt_in is not None:
        wanted["sensitive_opt_in"] = normalize_categories(sensitive_opt_in)
    changed = {key: value for key, value in wanted.items() if list(getattr(rater, key) or []) != value}
    if changed:
        before = {key: list(getattr(rater, key) or []) for key in changed}
        for key, value in changed.items():
            setattr(rater, key, value)
        audit(session, "rater.update", admin.id, None, rater=rater.name, before=before, after=changed)
    return rater


def get_rater(session: Session, name_or_id: str | int) -> Rater:
    if isinstance(name_or_id, int):
        rater = session.get(Rater, name_or_id)
    else:
        rater = session.scalar(select(Rater).where(Rater.name == name_or_id))
    if rater is None:
        raise UserError(f"no rater {name_or_id!r} (see `prefloop rater list`)")
    return rater


def get_pair(session: Session, pair_id: int, project: Project | None = None) -> Pair:
    """The pair `pair_id`, of `project` when one is given (the dashboard and the CLI name the project they show);
    UserError saying which it is not."""
    pair = session.get(Pair, pair_id) if is_row_id(pair_id) else None
    if pair is None:
        raise UserError(f"no pair {pair_id!r}")
    if project is not None and pair.project_id != project.id:
        raise UserError(f"pair {pair_id!r} is not in project {project.name!r}")
    return pair


def list_raters(session: Session, project: Project | None = None) -> list[Rater]:
    query = select(Rater).order_by(Rater.id)
    if project is not None:
        query = query.join(Membership, Membership.rater_id == Rater.id).where(Membership.project_id == project.id)
    return list(session.scalars(query))


def add_member(session: Session, project: Project, rater: Rater, actor_id: int | None = None) -> bool:
    """Make the rater a member of the project (audited). False, and nothing written, if they already were.

    An imported rater (`external`: a name from a dataset) cannot log in, so cannot be a member: UserError.
    """
    if rater.external:
        raise UserError(f"{rater.name} is an imported rater and cannot log in")
    if is_member(session, project.id, rater.id):
        return False
    try:
        with session.begin_nested():
            session.add(Membership(project_id=project.id, rater_id=rater.id))
    except IntegrityError:
        return False  # added by someone else meanwhile
    audit(session, "membership.add", actor_id, project.id, rater=rater.name)
    return True


def is_member(session: Session, project_id: int, rater_id: int) -> bool:
    return bool(session.scalar(select(func.count(Membership.id)).where(
        Membership.project_id == project_id, Membership.rater_id == rater_id)))


def projects_of(session: Session, rater: Rater) -> list[Project]:
    """Projects a rater may see: their memberships (admins see every project)."""
    if rater.role == "admin":
        return list_projects(session)
    return list(session.scalars(select(Project).join(Membership, Membership.project_id == Project.id)
                                .where(Membership.rater_id == rater.id).order_by(Project.id)))


def authenticate(session: Session, name: str, password: str) -> Rater | None:
    rater = session.scalar(select(Rater).where(Rater.name == name))
    if rater is None or not verify_password(rater, password):
        return None
    return rater


def require_member(session: Session, project_id: int, rater_id: int) -> Rater:
    """The rater, if they may work in this project; PermissionDenied otherwise."""
    rater = session.get(Rater, rater_id) if is_row_id(rater_id) else None
    if rater is None or rater.external:
        raise PermissionDenied("unknown rater")
    # An id out of range names no project (and would fail in the query): refused as an unknown one is.
    if rater.role == "admin":
        if not is_row_id(project_id) or session.get(Project, project_id) is None:
            raise PermissionDenied("no such project")
    elif not is_row_id(project_id) or not is_member(session, project_id, rater_id):
        raise PermissionDenied("not a member of this project")
    return rater


def require_admin(session: Session, rater_id: int | None) -> Rater:
    rater = session.get(Rater, rater_id) if rater_id is not None else None
    if rater is None or rater.role != "admin":
        raise PermissionDenied("admins only")
    return rater
