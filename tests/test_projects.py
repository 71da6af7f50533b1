"""Project and rater settings are checked before anything is written: a bad value is one clear error."""

import pytest
from sqlalchemy import func, select

from collect import db
from collect.errors import UserError
from collect.ingest import import_dataset
from collect.models import AuditEvent, Project, Prompt, Rater
from collect.projects import (
    ProjectSettings, add_member, add_rater, create_project, get_project, parse_rubric, update_project,
)


@pytest.mark.parametrize("settings, message", [
    (ProjectSettings(overlap=0), "overlap must be at least 1"),
    (ProjectSettings(gold_rate=1.5), "gold_rate must be between 0 and 1"),
    (ProjectSettings(pay_rate=-1), "pay_rate must not be negative"),
    (ProjectSettings(routing="nobody"), "routing must be one of"),
    (ProjectSettings(lease_seconds=0), "lease_seconds must be at least 10"),
    (ProjectSettings(idle_seconds=-5), "idle_seconds must not be negative"),
    (ProjectSettings(sensitive_daily_cap=-1), "sensitive_daily_cap must not be negative"),
    (ProjectSettings(break_after_minutes=0), "break_after_minutes must be at least 1"),
    (ProjectSettings(currency="DOLLARS-US"), "currency must be 1-8 characters"),
    (ProjectSettings(rubric=[{"description": "no name"}]), "needs a 'name'"),
])
def test_bad_project_settings_are_refused_and_nothing_is_written(db_url, settings, message):
    with pytest.raises(UserError, match=message):
        with db.session_scope(db_url) as s:
            create_project(s, "p", settings)
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count(Project.id))) == 0


def test_an_idle_threshold_below_the_apps_heartbeat_is_warned_about(db_url):
    """The rater app reports activity every 30 s; with idle_seconds 10 a rater reading for a minute without a click
    was paid 20 s of it."""
    with pytest.warns(UserWarning, match="idle_seconds 10 is below the 30 s between the rater app's activity"):
        with db.session_scope(db_url) as s:
            create_project(s, "p", ProjectSettings(idle_seconds=10))
    with db.session_scope(db_url) as s:
        assert get_project(s, "p").idle_seconds == 10  # allowed: a project may want only clicks to count


def test_update_checks_the_same_rules(db_url):
    with db.session_scope(db_url) as s:
        create_project(s, "p", ProjectSettings(lease_seconds=600))
    with pytest.raises(UserError, match="lease_seconds"):
        with db.session_scope(db_url) as s:
            update_project(s, get_project(s, "p"), lease_seconds=-1)
    with db.session_scope(db_url) as s:
        assert get_project(s, "p").lease_seconds == 600


def test_update_changes_and_audits_only_what_differs(db_url):
    """A form sends every setting: the audit log records what the admin changed, not what they left alone."""
    with db.session_scope(db_url) as s:
        create_project(s, "p", ProjectSettings(overlap=3, rubric=[{"name": "helpful"}]))
    with db.session_scope(db_url) as s:
        project = get_project(s, "p")
        same = update_project(s, project, overlap=3, rubric=parse_rubric("helpful"), currency="USD")
        changed = update_project(s, project, overlap=4, rubric=parse_rubric("helpful"), gold_rate=0.1)
    assert same == {} and changed == {"overlap": 4, "gold_rate": 0.1}
    with db.session_scope(db_url) as s:
        updates = list(s.scalars(select(AuditEvent).where(AuditEvent.action == "project.update")))
        assert [event.details["changes"] for event in updates] == [{"overlap": 4, "gold_rate": 0.1}]
        assert (get_project(s, "p").overlap, get_project(s, "p").gold_rate) == (4, 0.1)


def test_names_fit_their_columns(db_url):
    # PostgreSQL would refuse these with a DataError traceback; the check names the problem first.
    with pytest.raises(UserError, match="project name is at most 200"):
        with db.session_scope(db_url) as s:
            create_project(s, "p" * 201)
    with pytest.raises(UserError, match="rater name is at most 200"):
        with db.session_scope(db_url) as s:
            add_rater(s, "r" * 201, "pw")
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count(Rater.id))) == 0


def test_sensitive_tags_are_stored_in_lower_case_like_opt_ins(db_url):
    with db.session_scope(db_url) as s:
        p = create_project(s, "p")
        import_dataset(s, p, [{"prompt": "q", "tags": ["sensitive:Violence", "sensitive:self-harm "]}])
    with db.session_scope(db_url) as s:
        assert s.scalar(select(Prompt.sensitive)) == "self-harm,violence"


def test_rubric_criteria_are_read_one_a_line_or_one_a_value():
    """The dashboard's rubric box (lines) and `prefloop project create --rubric` (values) read criteria alike."""
    typed = "helpfulness\nharmlessness: no help with harm, ever\n\n"
    assert parse_rubric(typed) == parse_rubric(["helpfulness", " harmlessness :no help with harm, ever"]) == [
        {"name": "helpfulness", "description": ""}, {"name": "harmlessness", "description": "no help with harm, ever"}]
    for bad, message in [("helpfulness, harmlessness", "one criterion a line"), ("a\na: again", "given twice"),
                         (": no name", "no name")]:
        with pytest.raises(UserError, match=message):
            parse_rubric(bad)


def test_an_imported_rater_cannot_become_a_member(sqlite_url):
    with db.session_scope(sqlite_url) as s:
        p = create_project(s, "p")
        import_dataset(s, p, [{"prompt": "q", "response_a": "a", "response_b": "b", "rater": "worker7", "choice": 1}])
        worker = s.scalar(select(Rater).where(Rater.name == "worker7"))
        with pytest.raises(UserError, match="worker7 is an imported rater and cannot log in"):
            add_member(s, p, worker)


def test_a_project_without_pairs_has_no_progress_not_100_percent(db_url):
    """`project list`, `status` and the dashboard showed a new, empty project as 100% done."""
    from collect.status import project_status

    with db.session_scope(db_url) as s:
        empty, started = create_project(s, "empty"), create_project(s, "started")
        import_dataset(s, started, [{"prompt": "q", "response_a": "a", "response_b": "b", "rater": "w", "choice": 1}])
        assert (project_status(s, empty).progress, project_status(s, empty).progress_shown) == (None, "no pairs")
        assert project_status(s, started).progress_shown == "33%"  # one of overlap 3
