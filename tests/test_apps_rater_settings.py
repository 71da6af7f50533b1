"""A rater's sensitive-content opt-ins and expertise after creation (collect/projects.py): who may change
what, how category names are normalized, and that every change is audited and takes effect in assignment."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from collect import db
from collect.assign import next_assignment, skip
from collect.errors import PermissionDenied, UserError
from collect.ingest import import_dataset
from collect.models import AuditEvent, Rater
from collect.projects import (
    ProjectSettings, add_member, add_rater, create_project, get_project, normalize_categories, sensitive_categories,
    sensitive_opt_in_choices, set_sensitive_opt_in, update_rater,
)


def pair(prompt: str, *tags: str) -> dict:
    return {"prompt": prompt, "response_a": f"{prompt} a", "response_b": f"{prompt} b", "tags": list(tags)}


@pytest.fixture
def world(sqlite_url):
    with db.session_scope(sqlite_url) as s:
        care = create_project(s, "care", ProjectSettings(overlap=1))
        import_dataset(s, care, [pair("hurt", "sensitive:violence"), pair("plain"),
                                 pair("sad", "sensitive:self-harm", "sensitive:violence")])
        other = create_project(s, "other", ProjectSettings(overlap=1))
        import_dataset(s, other, [pair("gory", "sensitive:gore")])
        ids = {"care": care.id, "other": other.id, "boss": add_rater(s, "boss", "pw", role="admin").id,
               "ann": add_rater(s, "ann", "pw", projects=[care, other], sensitive_opt_in=[" Gore ", "gore"]).id,
               "bo": add_rater(s, "bo", "pw", projects=[care]).id}
    return sqlite_url, ids


def opt_ins(session, rater_id: int) -> list[str]:
    return session.get(Rater, rater_id).sensitive_opt_in


def audits(session, action: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_category_names_are_lower_case_trimmed_and_unique():
    names = [" Violence", "violence ", "sensitive:Self-Harm", "", "  "]
    assert normalize_categories(names) == ["self-harm", "violence"]
    assert normalize_categories(None) == []
    for bad in (["a,b"], ["x" * 101], [3]):
        with pytest.raises(UserError):
            normalize_categories(bad)


def test_a_rater_sets_their_own_opt_ins_for_one_project(world):
    url, ids = world
    with db.session_scope(url) as s:
        assert opt_ins(s, ids["ann"]) == ["gore"]  # normalized by add_rater too
        assert sensitive_categories(s, ids["care"]) == ["self-harm", "violence"]
        assert sensitive_opt_in_choices(s, ids["ann"], ids["care"]) == (["self-harm", "violence"], [])
        assert set_sensitive_opt_in(s, ids["ann"], ids["care"], ["Violence", "violence"]) == ["violence"]
    with db.session_scope(url) as s:
        assert opt_ins(s, ids["ann"]) == ["gore", "violence"]  # the other project's category is kept
        assert opt_ins(s, ids["bo"]) == []
        (event,) = audits(s, "rater.sensitive_opt_in")
        assert (event.actor_id, event.project_id) == (ids["ann"], ids["care"])
        assert (event.details["before"], event.details["after"]) == (["gore"], ["gore", "violence"])
        # The choice takes effect: ann is now served the violence item, not the one that is also self-harm.
        served = []
        while (item := next_assignment(s, ids["care"], ids["ann"])) is not None:
            served.append((item.conversation[-1]["content"], item.sensitive))
            skip(s, ids["ann"], item.assignment_id, "just looking")
        assert sorted(served) == [("hurt", ["violence"]), ("plain", [])]
        # Saving the same choice again changes nothing and writes nothing.
        set_sensitive_opt_in(s, ids["ann"], ids["care"], ["violence"])
        assert len(audits(s, "rater.sensitive_opt_in")) == 1
        # Opting out of this project's categories leaves the other project's alone.
        assert set_sensitive_opt_in(s, ids["ann"], ids["care"], []) == []
        assert opt_ins(s, ids["ann"]) == ["gore"]


def test_opt_ins_are_limited_to_members_and_to_the_projects_categories(world):
    url, ids = world
    with db.session_scope(url) as s:
        with pytest.raises(UserError, match="not a sensitive category of this project"):
            set_sensitive_opt_in(s, ids["bo"], ids["care"], ["gore"])
        with pytest.raises(PermissionDenied):
            set_sensitive_opt_in(s, ids["bo"], ids["other"], ["gore"])  # bo is not a member of "other"
        with pytest.raises(PermissionDenied):
            sensitive_opt_in_choices(s, ids["bo"], ids["other"])
        assert opt_ins(s, ids["bo"]) == [] and audits(s, "rater.sensitive_opt_in") == []


def test_admins_change_expertise_and_opt_ins_after_creation(world):
    url, ids = world
    with db.session_scope(url) as s:
        with pytest.raises(PermissionDenied):
            update_rater(s, ids["ann"], "bo", sensitive_opt_in=["violence"])  # a rater is not an admin
        with pytest.raises(UserError, match="domain:"):
            update_rater(s, ids["boss"], "bo", expertise=["law"])
        with pytest.raises(UserError, match="no rater"):
            update_rater(s, ids["boss"], "nobody", expertise=[])
        update_rater(s, ids["boss"], "bo", expertise=[" domain:law", "domain:law"], sensitive_opt_in=["Self-Harm"])
    with db.session_scope(url) as s:
        bo = s.get(Rater, ids["bo"])
        assert (bo.expertise, bo.sensitive_opt_in) == (["domain:law"], ["self-harm"])
        (event,) = audits(s, "rater.update")
        assert event.actor_id == ids["boss"] and event.details["rater"] == "bo"
        assert event.details["before"] == {"expertise": [], "sensitive_opt_in": []}
        assert event.details["after"] == {"expertise": ["domain:law"], "sensitive_opt_in": ["self-harm"]}
        update_rater(s, ids["boss"], "bo", expertise=["domain:law"])  # unchanged; opt-ins not given: kept
        assert len(audits(s, "rater.update")) == 1 and s.get(Rater, ids["bo"]).sensitive_opt_in == ["self-harm"]


def test_adding_an_existing_member_changes_and_audits_nothing(world):
    url, ids = world
    with db.session_scope(url) as s:
        care, other, bo = get_project(s, ids["care"]), get_project(s, ids["other"]), s.get(Rater, ids["bo"])
        count = s.scalar(select(func.count(AuditEvent.id)))
        assert add_member(s, care, bo, actor_id=ids["boss"]) is False
        assert s.scalar(select(func.count(AuditEvent.id))) == count
        assert add_member(s, other, bo, actor_id=ids["boss"]) is True
        assert [e.details["rater"] for e in audits(s, "membership.add")][-1] == "bo"
