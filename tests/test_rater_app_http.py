"""The rater app over plain HTTP: the authorization attack suite, and the JSON API.

Every Gradio event handler is an HTTP endpoint. A rater of project X, and an anonymous client, call every
one of them (through Gradio's queue, as the browser does, and through Gradio's direct /run route), and every
JSON API route, with ids from project Y, forged assignment ids and forged sides and times: none may change
anything in Y or return anything from Y.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from apps import web_auth
from apps.rater_api import add_error_handlers, api_router
from apps.rater_app import SKIP_REASONS
from apps.rater_client import GradioRaterClient, RaterAPIError, RaterClient
from collect import db
from collect.assign import expire_leases, next_assignment, reveal, skip, submit_judgment
from collect.ingest import import_dataset
from collect.models import Assignment, AuditEvent, Judgment, Pair, Rater, utcnow
from collect.projects import ProjectSettings, add_rater, create_project, get_project, update_project
from tests.browser import running_server
from tests.postgres import free_port
from tests.test_assignment import setup_project

SECRET = "YSECRET"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("rater-http")
    url = f"sqlite:///{root / 'prefloop.db'}"
    db.upgrade(url)
    with db.session_scope(url) as s:
        x = create_project(s, "xproj", ProjectSettings(overlap=2, rubric=[{"name": "helpful"}]))
        import_dataset(s, x, [{"prompt": f"x question {i}", "response_a": f"xa{i}", "response_b": f"xb{i}"}
                              for i in range(6)])
        y = create_project(s, f"{SECRET}-project", ProjectSettings(
            overlap=2, guidelines=f"{SECRET} guidelines", rubric=[{"name": f"{SECRET}-criterion"}]))
        import_dataset(s, y, [{"prompt": f"{SECRET} question {i}", "response_a": f"{SECRET} a{i}",
                               "response_b": f"{SECRET} b{i}"} for i in range(4)])
        ids = {"x": x.id, "y": y.id,
               "xavier": add_rater(s, "xavier", "x-pw", projects=[x]).id,
               "yara": add_rater(s, "yara", "y-pw", projects=[y]).id,
               "xena": add_rater(s, "xena", "xena-pw", projects=[x]).id}
    with db.session_scope(url) as s:
        # yara: one judgment (within the undo window) and one open assignment, both in Y.
        served = next_assignment(s, ids["y"], ids["yara"])
        submit_judgment(s, ids["yara"], served.assignment_id, 1, client_token="yara-1")
        ids["yara_judged"] = served.assignment_id
        ids["yara_open"] = next_assignment(s, ids["y"], ids["yara"]).assignment_id
    with running_server(url, free_port(), log_path=root / "server.log") as base_url:
        yield {"url": url, "base_url": base_url, **ids}


def snapshot(url: str, project_id: int) -> tuple:
    """Everything an attack on project Y could change."""
    with db.session_scope(url) as s:
        return (
            s.execute(select(Assignment.id, Assignment.rater_id, Assignment.status, Assignment.active_seconds,
                             Assignment.last_activity_at, Assignment.revealed_at, Assignment.lease_expires_at)
                      .where(Assignment.project_id == project_id).order_by(Assignment.id)).all(),
            s.execute(select(Judgment.id, Judgment.choice, Judgment.rater_id, Judgment.assignment_id)
                      .where(Judgment.project_id == project_id).order_by(Judgment.id)).all(),
            s.execute(select(Pair.id, Pair.status, Pair.n_claimed).where(Pair.project_id == project_id)
                      .order_by(Pair.id)).all(),
            s.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.project_id == project_id)),
        )


def gradio_functions(base_url: str) -> list[dict]:
    """Every event handler of the app (fn_index, api_name, number of inputs), read as a logged-in rater."""
    with GradioRaterClient(base_url, "xena", "xena-pw") as c:
        config = c.http.get("/config").json()
    return [{"id": d["id"], "api_name": d.get("api_name"), "n": len(d["inputs"])} for d in config["dependencies"]]


def forged_arguments(n: int, site: dict) -> list[list]:
    """Inputs an attacker would try: Y's project id, yara's assignment ids, forged choices."""
    y, judged, open_ = site["y"], site["yara_judged"], site["yara_open"]
    return [
        [None] * n,
        [y] * n,
        [open_] * n,
        [str(open_)] * n,
        ([None, str(open_), 2, False, "", ""] + [2] * max(0, n - 6))[:n],
        ([None, str(judged), -2, True, "x", "y"] + [-2] * max(0, n - 6))[:n],
    ]


def test_every_gradio_endpoint_refuses_foreign_and_anonymous_calls(site):
    functions = gradio_functions(site["base_url"])
    assert {f["api_name"] for f in functions} >= {"load", "choose_project", "submit", "skip", "flag", "undo",
                                                  "reveal", "activity", "stats"}
    before = snapshot(site["url"], site["y"])
    # yara's own browser tab: its server-side state points at her open assignment in Y.
    victim = GradioRaterClient(site["base_url"], "yara", "y-pw")
    assert int(victim.call("load")[-1]) == site["yara_open"]
    before = snapshot(site["url"], site["y"])  # loading touched nothing but reading

    attackers = {
        "anonymous": GradioRaterClient(site["base_url"]),
        "anonymous in yara's tab": GradioRaterClient(site["base_url"], session_hash=victim.session_hash),
        "xavier": GradioRaterClient(site["base_url"], "xavier", "x-pw"),
        "xavier in yara's tab": GradioRaterClient(site["base_url"], "xavier", "x-pw",
                                                  session_hash=victim.session_hash),
        "forged header": GradioRaterClient(site["base_url"], headers={"X-Forwarded-User": "yara"}),
    }
    attackers["xavier"].call("load")  # xavier's own tab holds an X assignment
    results = {"refused": 0, "answered": 0}
    for who, client in attackers.items():
        for f in functions:
            for args in forged_arguments(f["n"], site):
                # Through the queue, as the browser does ...
                try:
                    out = client.call(f["id"], *args)
                    assert SECRET not in str(out), (who, f, args, out)
                    results["answered"] += 1
                except RaterAPIError as e:
                    assert SECRET not in e.message, (who, f, args, e)
                    if who.startswith(("anonymous", "forged")):
                        assert e.status == 401, (who, f, e)
                    results["refused"] += 1
                # ... and straight to the handler.
                response = client.http.post(f"/gradio_api/run/{f['api_name']}",
                                            json={"data": args, "session_hash": client.session_hash})
                assert SECRET not in response.text, (who, f, args, response.text[:500])
                if who.startswith(("anonymous", "forged")):
                    assert response.status_code == 401, (who, f, response.text[:300])
    # xavier's own calls may succeed on X (his own load, stats, activity): none of them reached into Y.
    assert results["refused"] > results["answered"] > 0
    assert snapshot(site["url"], site["y"]) == before
    # And yara's tab still works for yara: the attacks did not break or hijack it.
    assert int(victim.call("load")[-1]) == site["yara_open"]


def test_every_json_route_refuses_foreign_and_anonymous_calls(site):
    y, judged, open_ = site["y"], site["yara_judged"], site["yara_open"]
    judgment = {"choice": 2, "client_token": uuid.uuid4().hex}
    routes = [("GET", f"/api/v1/projects/{y}/me", None), ("POST", f"/api/v1/projects/{y}/next", {}),
              ("POST", f"/api/v1/projects/{y}/undo", {})]
    for assignment in (open_, judged, 0, -1, 10**9):
        routes += [("POST", f"/api/v1/assignments/{assignment}/judgment", judgment),
                   ("POST", f"/api/v1/assignments/{assignment}/skip", {"reason": "attack"}),
                   ("POST", f"/api/v1/assignments/{assignment}/flag", {"reason": "attack"}),
                   ("POST", f"/api/v1/assignments/{assignment}/activity", {})]
    routes += [("POST", "/api/v1/assignments/abc/judgment", judgment), ("POST", f"/api/v1/projects/{y}x/next", {})]
    callers = {
        "anonymous": {},
        "wrong password": {"auth": ("yara", "guess")},
        "forged header": {"headers": {"X-Forwarded-User": "yara"}},
        "xavier": {"auth": ("xavier", "x-pw")},
        "xavier + forged header": {"auth": ("xavier", "x-pw"), "headers": {"X-Forwarded-User": "yara"}},
    }
    before = snapshot(site["url"], y)
    with httpx.Client(base_url=site["base_url"]) as http:
        for who, kwargs in callers.items():
            for method, path, body in routes:
                response = http.request(method, path, json=body, **kwargs)
                assert response.status_code in (400, 401, 403, 404, 422), (who, method, path, response.text)
                assert SECRET not in response.text
                assert list(response.json()) == ["detail"]  # one shape for every refusal, FastAPI's
                if "xavier" not in who:
                    assert response.status_code == 401, (who, path, response.text)
            projects = http.get("/api/v1/projects", **kwargs)
            assert SECRET not in projects.text
        # A form post (what a cross-site page can send without a CORS preflight) is refused outright.
        form = http.post(f"/api/v1/assignments/{open_}/skip", data={"reason": "csrf"}, auth=("yara", "y-pw"))
        assert form.status_code == 415 and list(form.json()) == ["detail"]
    assert snapshot(site["url"], y) == before


def test_sides_and_times_come_from_the_server(site):
    with RaterClient(site["base_url"], "xavier", "x-pw") as c, httpx.Client(base_url=site["base_url"]) as http:
        served_at = time.time()
        item = c.next(site["x"])
        for forged in ({"left_is_a": False}, {"side": "right"}, {"active_seconds": 9999},
                       {"submitted_at": "2020-01-01T00:00:00"}, {"rater_id": site["yara"]}):
            response = http.post(f"/api/v1/assignments/{item['assignment_id']}/judgment", auth=("xavier", "x-pw"),
                                 json={"choice": 2, "client_token": uuid.uuid4().hex, **forged})
            assert response.status_code == 422, forged  # unknown fields are refused, not ignored
        judgment_id = c.submit(item["assignment_id"], 2, client_token="xavier-1")
        assert c.submit(item["assignment_id"], -2, client_token="xavier-1") == judgment_id  # a retry is a no-op
        took = time.time() - served_at
    with db.session_scope(site["url"]) as s:
        j = s.get(Judgment, judgment_id)
        a = s.get(Assignment, item["assignment_id"])
        left = a.pair.response_a.content if a.left_is_a else a.pair.response_b.content
        assert item["left"] == left and j.left_is_a == a.left_is_a
        assert j.choice == (2 if a.left_is_a else -2)  # "left much better", stored relative to A and B
        # Active time is the server's: never more than the time between serving and submitting.
        assert j.rater_id == site["xavier"] and 0 <= j.active_seconds <= (j.submitted_at - a.served_at).total_seconds()
        assert abs((j.submitted_at - utcnow()).total_seconds()) < took + 5
        assert s.scalar(select(func.count(Judgment.id)).where(Judgment.client_token == "xavier-1")) == 1


def test_gradio_flow_stats_activity_and_break_reminder(site):
    # xena has judged for 55 minutes without a pause; the project wants a break after 50.
    with db.session_scope(site["url"]) as s:
        update_project(s, get_project(s, site["x"]), break_after_minutes=50)
        now = utcnow()
        for minutes_ago in (4, 2):
            served = next_assignment(s, site["x"], site["xena"], now=now - timedelta(minutes=minutes_ago + 28))
            submit_judgment(s, site["xena"], served.assignment_id, 1, client_token=uuid.uuid4().hex,
                            now=now - timedelta(minutes=minutes_ago))
        s.execute(Judgment.__table__.update().where(Judgment.rater_id == site["xena"]).values(active_seconds=27.5 * 60))
    with GradioRaterClient(site["base_url"], "xena", "xena-pw") as c:
        first = c.call("load")
        shown = first[-1]
        assert "x question" in str(first) and SECRET not in str(first)
        with pytest.raises(RaterAPIError, match="choose which response"):
            c.call("submit", None, shown, None, False, "", "", *([None] * 8))
        with pytest.raises(RaterAPIError, match="screen changed"):
            c.call("submit", None, str(int(shown) + 1000), 1, False, "", "", *([None] * 8))
        c.call("activity", None)
        out = c.call("submit", None, shown, -1, True, "because", "", 1, *([None] * 7))
        assert "without a break" in str(out)
        stats = c.call("stats", None)[0]
        # "Today" is the UTC day: in the first minutes after midnight the back-dated judgments are yesterday's.
        midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        today = 1 + sum(now - timedelta(minutes=m) >= midnight for m in (4, 2))
        assert f"Judgments today | {today}" in stats and "Judgments in total | 3" in stats
        out = c.call("undo", None)
        assert out[-1] == shown and "taken back" in str(out)
    with db.session_scope(site["url"]) as s:
        assert s.scalar(select(func.count(Judgment.id)).where(Judgment.assignment_id == int(shown))) == 0


def test_a_tab_left_behind_by_an_undo_or_a_lease_moves_on(site):
    with db.session_scope(site["url"]) as s:
        xander = add_rater(s, "xander", "xander-pw", projects=[get_project(s, site["x"])]).id
    with GradioRaterClient(site["base_url"], "xander", "xander-pw") as one, \
            GradioRaterClient(site["base_url"], "xander", "xander-pw") as two:
        first = one.call("load")[-1]
        assert two.call("load")[-1] == first  # two tabs, one item
        second = one.call("submit", None, first, 1, False, "", "", *([None] * 8))[-1]
        assert two.call("load")[-1] == second  # the second tab reloaded: the next item
        assert one.call("undo", None)[-1] == first  # the first takes its judgment back: `second` goes back
        # The second tab judges `second`, which is no longer the rater's: not recorded, the undone item shown.
        out = two.call("submit", None, second, -2, False, "", "", *([None] * 8))
        assert out[-1] == first and "already handled in another tab" in str(out)
        with pytest.raises(RaterAPIError, match="choose which response"):  # the rater's own slip stays an error
            two.call("submit", None, first, None, False, "", "", *([None] * 8))
        # A lease that ran out with nothing else open: the late judgment is still taken (collect.assign).
        with db.session_scope(site["url"]) as s:
            s.execute(Assignment.__table__.update().where(Assignment.id == int(first))
                      .values(lease_expires_at=utcnow() - timedelta(seconds=1)))
            assert expire_leases(s, site["x"]) == 1
        saved = two.call("submit", None, first, 2, False, "", "", *([None] * 8))
        # ... and the item the undo gave back comes back to xander, the same assignment opened again.
        assert "Saved." in str(saved) and saved[-1] == second
    with db.session_scope(site["url"]) as s:
        judged = s.execute(select(Judgment.assignment_id).where(Judgment.rater_id == xander)).scalars().all()
        assert judged == [int(first)]
        assert s.get(Assignment, int(second)).status == "open"


def test_trusted_header_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'prefloop.db'}"
    db.upgrade(url)
    with db.session_scope(url) as s:
        p = create_project(s, "sso", ProjectSettings(overlap=1))
        import_dataset(s, p, [{"prompt": "q", "response_a": "a", "response_b": "b"}])
        add_rater(s, "sso-user", None, projects=[p])  # no password at all: the proxy vouches for her
        add_rater(s, "someone", "pw", projects=[p])
        pid = p.id
    header = "X-Forwarded-User"
    with running_server(url, free_port(), auth_header=header, log_path=tmp_path / "server.log") as base_url:
        with httpx.Client(base_url=base_url) as http:
            assert http.get("/config").status_code == 401
            assert http.get("/config", headers={header: "nobody"}).status_code == 200  # Gradio lets it in ...
            with pytest.raises(RaterAPIError):  # ... but no handler acts for a name not in the database
                GradioRaterClient(base_url, headers={header: "nobody"}).call("load")
            # Basic credentials mean nothing in this mode; the header is the identity.
            assert http.post(f"/api/v1/projects/{pid}/next", json={}, auth=("someone", "pw")).status_code == 401
        with GradioRaterClient(base_url, headers={header: "sso-user"}) as c:
            assert "Signed in as **sso-user**" in c.call("load")[0]
        with RaterClient(base_url, "sso-user", auth_header=header) as c:
            assert c.next(pid)["left"] in ("a", "b")


def test_a_submit_that_empties_the_queue_says_saved_and_nothing_left(tmp_path):
    """The note of the submit and then why nothing is left (the daily sensitive cap, when it is that)."""
    url = f"sqlite:///{tmp_path / 'prefloop.db'}"
    db.upgrade(url)
    tags = [["sensitive:violence"], ["sensitive:violence"], []]
    with db.session_scope(url) as s:
        p = create_project(s, "p", ProjectSettings(overlap=2, rubric=[{"name": "helpful"}], sensitive_daily_cap=1))
        import_dataset(s, p, [{"prompt": f"q{i}", "response_a": "a", "response_b": "b", "tags": tags[i]}
                              for i in range(3)])
        add_rater(s, "plain", "pw", projects=[p])
        brave = add_rater(s, "brave", "pw", sensitive_opt_in=["violence"], projects=[p]).id
        pid = p.id
    with db.session_scope(url) as s:  # brave's one sensitive item today
        served = next_assignment(s, pid, brave)
        assert served.sensitive == ["violence"]
        reveal(s, brave, served.assignment_id)
        submit_judgment(s, brave, served.assignment_id, 1, client_token=uuid.uuid4().hex)
    with running_server(url, free_port(), log_path=tmp_path / "server.log") as base_url:
        for name, reason in (("brave", "reached today&#x27;s limit of 1 sensitive items; more tomorrow"),
                             ("plain", "Nothing left for you in this project right now")):
            with GradioRaterClient(base_url, name, "pw") as c:
                shown = c.call("load")[-1]
                assert shown
                out = c.call("submit", None, shown, 1, False, "", "", *([None] * 8))
                banner = next(x for x in out if isinstance(x, str) and "pf-warning" in x)
                assert banner.index("Saved.") < banner.index(reason), banner
                assert out[-1] == ""  # no form left to submit


def test_a_rater_of_two_projects_comes_back_to_the_project_of_their_open_item(tmp_path):
    """Two projects: the app asks which one; a reload (a new session) opens the project of the item on screen, so
    its draft comes back with it; choosing no project changes nothing (it once failed in the server)."""
    url = f"sqlite:///{tmp_path / 'prefloop.db'}"
    db.upgrade(url)
    with db.session_scope(url) as s:
        projects = [create_project(s, name, ProjectSettings(overlap=1)) for name in ("first", "second")]
        for p in projects:
            import_dataset(s, p, [{"prompt": f"{p.name} q", "response_a": "a", "response_b": "b"}])
        add_rater(s, "two", "pw", projects=projects)
        second = projects[1].id
    with running_server(url, free_port(), log_path=tmp_path / "server.log") as base_url:
        with GradioRaterClient(base_url, "two", "pw") as c:
            loaded = c.call("load")
            assert "Choose a project above to start." in str(loaded) and " q" not in str(loaded)  # no item yet
            assert c.call("choose_project", None)  # no project: nothing to do, and no error
            shown = c.call("choose_project", second)[-1]
            assert shown
        with GradioRaterClient(base_url, "two", "pw") as reloaded:
            out = reloaded.call("load")
            assert out[-1] == shown and "second q" in str(out)
        assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_raters_change_only_their_own_sensitive_opt_ins(site):
    with db.session_scope(site["url"]) as s:
        care = create_project(s, "care", ProjectSettings(overlap=1))
        import_dataset(s, care, [{"prompt": f"care question {tag}", "response_a": "a", "response_b": "b",
                                  "tags": [f"sensitive:{tag}"]} for tag in ("Violence", "self-harm")])
        add_rater(s, "olga", "o-pw", projects=[care])

    def opt_ins() -> dict[str, list[str]]:
        with db.session_scope(site["url"]) as s:
            return dict(s.execute(select(Rater.name, Rater.sensitive_opt_in).where(Rater.external.is_(False))).all())

    with GradioRaterClient(site["base_url"], "olga", "o-pw") as olga:
        olga.call("load")  # her only project: her tab's server-side state now points at it
        _, box, choices, _ = olga.call("stats", None)
        assert box["visible"] is True  # the control shows: this project has sensitive categories
        assert [value for _, value in choices["choices"]] == ["self-harm", "violence"] and choices["value"] == []
        assert "violence" in olga.call("save_opt_in", None, ["violence"])[0]
        with db.session_scope(site["url"]) as s:
            event = s.scalar(select(AuditEvent).where(AuditEvent.action == "rater.sensitive_opt_in"))
            assert event.details["rater"] == "olga" and event.details["after"] == ["violence"]
        before = opt_ins()
        assert before["olga"] == ["violence"]

        attackers = {
            "anonymous": GradioRaterClient(site["base_url"]),
            "anonymous in olga's tab": GradioRaterClient(site["base_url"], session_hash=olga.session_hash),
            "xavier in olga's tab": GradioRaterClient(site["base_url"], "xavier", "x-pw",
                                                      session_hash=olga.session_hash),
            "forged header": GradioRaterClient(site["base_url"], headers={"X-Forwarded-User": "olga"}),
        }
        for who, client in attackers.items():
            with client:
                for chosen in ([], ["self-harm"], ["self-harm", "violence"]):
                    with pytest.raises(RaterAPIError) as refused:
                        client.call("save_opt_in", None, chosen)
                    if who != "xavier in olga's tab":
                        assert refused.value.status == 401, who
                    response = client.http.post("/gradio_api/run/save_opt_in",
                                                json={"data": [None, chosen], "session_hash": client.session_hash})
                    assert response.status_code != 200 or "Saved" not in response.text, (who, response.text)
        # xavier in his own tab acts on his own record only: his project has no sensitive categories.
        with GradioRaterClient(site["base_url"], "xavier", "x-pw") as xavier:
            xavier.call("load")
            assert xavier.call("stats", None)[1]["visible"] is False
            with pytest.raises(RaterAPIError):
                xavier.call("save_opt_in", None, ["violence"])
        assert opt_ins() == before

        olga.call("save_opt_in", None, [])  # and she can take it back
        assert opt_ins() == {**before, "olga": []}


def test_a_password_changed_elsewhere_stops_working_at_once(site):
    # The server caches verified HTTP Basic logins (Argon2 is slow on purpose); the cache must not outlive a
    # password change made by another process, here this test writing to the database directly.
    from collect.auth import hash_password

    with db.session_scope(site["url"]) as s:
        add_rater(s, "wanda", "old-pw", projects=[get_project(s, site["x"])])
    with RaterClient(site["base_url"], "wanda", "old-pw") as old:
        assert [p["id"] for p in old.projects()] == [site["x"]]  # verified once, cached now
        with db.session_scope(site["url"]) as s:
            s.scalar(select(Rater).where(Rater.name == "wanda")).password_hash = hash_password("new-pw")
        with pytest.raises(RaterAPIError, match="401"):
            old.projects()
        with pytest.raises(RaterAPIError, match="401"):
            old.projects()  # and stays refused (the stale entry is gone, Argon2 says no)
    with RaterClient(site["base_url"], "wanda", "new-pw") as new:
        assert [p["id"] for p in new.projects()] == [site["x"]]


@pytest.fixture
def api_only(db_url, monkeypatch) -> FastAPI:
    """The JSON API alone on `db_url`, as `prefloop serve` mounts it (without the Gradio apps, which take seconds to
    build), with no logins remembered from other tests' databases (the same names and passwords, other hashes)."""
    monkeypatch.setattr(web_auth, "_basic_cache", web_auth._BasicCache())
    app = FastAPI()
    app.include_router(api_router(db_url), prefix="/api/v1")
    add_error_handlers(app)
    return app


def test_ids_outside_the_database_range_are_unknown_ids(db_url, api_only):
    """An id no row can have (ids are 32-bit integers on PostgreSQL; SQLite's end at 2**63 - 1) is refused as an
    unknown id is, not a 500: 2**31 was PostgreSQL's NumericValueOutOfRange, 10**20 an OverflowError on both."""
    pid, _, _ = setup_project(db_url, n_pairs=1, overlap=1, raters=1)
    with TestClient(api_only, raise_server_exceptions=False) as http:
        for caller in (("r0", "pw"), ("boss", "pw")):  # a rater of the project, an admin of every project
            assert http.post(f"/api/v1/projects/{pid}/next", json={}, auth=caller).status_code == 200
            for unknown in (0, -1, 2**31 - 1, 2**31, 2**63, 10**20):
                routes = [("POST", f"/api/v1/projects/{unknown}/{action}", {}) for action in ("next", "undo")]
                routes += [("GET", f"/api/v1/projects/{unknown}/me", None)]
                routes += [("POST", f"/api/v1/assignments/{unknown}/{action}", body) for action, body in (
                    ("judgment", {"choice": 1, "client_token": uuid.uuid4().hex}), ("skip", {"reason": "x"}),
                    ("flag", {"reason": "x"}), ("activity", {}))]
                for method, path, body in routes:
                    response = http.request(method, path, json=body, auth=caller)
                    assert response.status_code == 403, (caller, path, response.text)
                    assert response.json()["detail"] in ("no such assignment", "no such project",
                                                        "not a member of this project"), (caller, path)


def test_the_api_sends_sensitive_items_revealed_so_they_count_against_the_cap(db_url, api_only):
    """An API client gets the content with the item: judged with no separate reveal, and counted against the daily
    cap even when it is skipped (it was seen), unlike an item declined unseen behind the app's content warning."""
    tags = {i: ["sensitive:violence"] for i in range(3)}
    pid, _, _ = setup_project(db_url, n_pairs=3, overlap=1, raters=0, tags=tags, sensitive_daily_cap=2)
    with db.session_scope(db_url) as s:
        add_rater(s, "brave", "pw", sensitive_opt_in=["violence"], projects=[get_project(s, pid)])
    with TestClient(api_only) as http:
        def next_item() -> dict | None:
            response = http.post(f"/api/v1/projects/{pid}/next", json={}, auth=("brave", "pw"))
            assert response.status_code == 200, response.text
            return response.json()["assignment"]

        first = next_item()
        assert first["sensitive"] == ["violence"] and first["left"] in ("answer a0", "answer b0")
        judged = http.post(f"/api/v1/assignments/{first['assignment_id']}/judgment", auth=("brave", "pw"),
                           json={"choice": 1, "client_token": uuid.uuid4().hex})
        assert judged.status_code == 200, judged.text
        second = next_item()
        assert http.post(f"/api/v1/assignments/{second['assignment_id']}/skip", auth=("brave", "pw"),
                         json={"reason": "I'd rather not see this content"}).status_code == 200
        assert next_item() is None  # two seen today: the cap


def test_an_item_declined_unseen_in_the_app_and_undone_over_the_api_is_sent_revealed(db_url, api_only):
    """Undo sends content too: an item skipped behind the app's content warning, then taken back by an API client,
    is recorded as seen when it is sent (so it counts against the cap), and the client can judge it."""
    pid, _, _ = setup_project(db_url, n_pairs=1, overlap=1, raters=0, tags={0: ["sensitive:violence"]})
    with db.session_scope(db_url) as s:
        brave = add_rater(s, "brave", "pw", sensitive_opt_in=["violence"], projects=[get_project(s, pid)]).id
    with db.session_scope(db_url) as s:  # the rater app: served behind its warning, declined unseen
        declined = next_assignment(s, pid, brave).assignment_id
        skip(s, brave, declined, "I'd rather not see this content")
    with TestClient(api_only) as http:
        undone = http.post(f"/api/v1/projects/{pid}/undo", json={}, auth=("brave", "pw"))
        assert undone.status_code == 200 and undone.json()["assignment"]["assignment_id"] == declined
        with db.session_scope(db_url) as s:
            assert s.get(Assignment, declined).revealed_at is not None
        judged = http.post(f"/api/v1/assignments/{declined}/judgment", auth=("brave", "pw"),
                           json={"choice": 1, "client_token": uuid.uuid4().hex})
        assert judged.status_code == 200, judged.text


def test_an_undo_the_daily_cap_refuses_undoes_nothing_and_says_so(db_url, api_only):
    """Declined unseen in the app, then the day's one sensitive item seen over the API: taking the declined one back
    would show it past the cap, so the undo is refused whole, and does not point to a skip that cannot follow."""
    tags = {0: ["sensitive:violence"], 1: ["sensitive:violence"]}
    pid, _, _ = setup_project(db_url, n_pairs=2, overlap=1, raters=0, tags=tags, sensitive_daily_cap=1)
    with db.session_scope(db_url) as s:
        brave = add_rater(s, "brave", "pw", sensitive_opt_in=["violence"], projects=[get_project(s, pid)]).id
    with db.session_scope(db_url) as s:
        declined = next_assignment(s, pid, brave).assignment_id
        skip(s, brave, declined, "I'd rather not see this content")
    with TestClient(api_only) as http:
        seen = http.post(f"/api/v1/projects/{pid}/next", json={}, auth=("brave", "pw")).json()["assignment"]
        assert seen["assignment_id"] != declined
        undone = http.post(f"/api/v1/projects/{pid}/undo", json={}, auth=("brave", "pw"))
        assert undone.status_code == 400 and undone.json()["detail"].startswith("nothing was undone")
    with db.session_scope(db_url) as s:
        assert s.get(Assignment, declined).status == "skipped"
        assert s.get(Assignment, seen["assignment_id"]).status == "open"


def test_the_app_offers_declining_content_as_a_reason_to_skip():
    """A rater who would rather not see an item behind its content warning says so (and it costs no place of the
    daily cap: test_assignment), rather than "Other", which stays last."""
    assert "I'd rather not see this content" in SKIP_REASONS and SKIP_REASONS[-1] == "Other"


@contextmanager
def database_down(url: str, tmp_path) -> Iterator[None]:
    """The database fails for the block, as a stopped server does: PostgreSQL's database ends its connections (the
    pool's among them) and takes no new ones; SQLite's folder is moved away once this process holds no connection."""
    if url.startswith("postgresql"):
        import psycopg

        prefix, name = url.replace("postgresql+psycopg", "postgresql").rsplit("/", 1)
        with psycopg.connect(prefix + "/postgres", autocommit=True) as c:
            c.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            try:
                yield
            finally:
                c.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    else:
        db.get_engine(url).dispose()
        away = tmp_path.with_name(tmp_path.name + "-away")
        tmp_path.rename(away)
        try:
            yield
        finally:
            away.rename(tmp_path)
    db.get_engine(url).dispose()


def test_a_database_that_fails_is_a_503_to_retry_with_one_line_in_the_log(db_url, api_only, tmp_path, caplog):
    pid, _, _ = setup_project(db_url, n_pairs=2, overlap=1, raters=2)
    # raise_server_exceptions: an error the API leaves unhandled (a 500 with its traceback) fails the test
    with TestClient(api_only) as http:
        assert http.post(f"/api/v1/projects/{pid}/next", json={}, auth=("r0", "pw")).status_code == 200
        caplog.clear()
        with database_down(db_url, tmp_path):
            in_request = http.post(f"/api/v1/projects/{pid}/next", json={}, auth=("r0", "pw"))
            at_login = http.get("/api/v1/projects", auth=("r1", "pw"))  # not cached: its password is checked first
        for response in (in_request, at_login):
            assert response.status_code == 503, response.text
            # Nothing of the database's address or name reaches a client; the log says what failed, in one line.
            assert response.json() == {"detail": "database unavailable; retry"}
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(logged) == 2 and all(" database unavailable: " in line and "\n" not in line and
                                        len(line.split(": database unavailable: ")[1]) > 0 for line in logged)
        assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.WARNING)
        assert http.post(f"/api/v1/projects/{pid}/next", json={}, auth=("r0", "pw")).status_code == 200  # back


def test_the_rater_app_says_retry_when_the_database_fails_and_a_retry_counts_once(db_url, tmp_path, caplog,
                                                                                   monkeypatch):
    """The Gradio app in this process (as `prefloop serve` mounts it), so that the database can fail under it."""
    from apps.rater_app import DATABASE_DOWN, build_rater_app, mount_options
    from apps.server import _mount

    monkeypatch.setattr(web_auth, "_basic_cache", web_auth._BasicCache())
    pid, _, _ = setup_project(db_url, n_pairs=2, overlap=1, raters=1)
    server = FastAPI()
    _mount(server, build_rater_app(db_url), "/", web_auth.gradio_auth(db_url), mount_options())
    with TestClient(server) as http, GradioRaterClient(str(http.base_url)) as c:
        c.http.close()
        c.http = http  # the browser tab, in process
        assert http.post("/login", data={"username": "r0", "password": "pw"}).status_code == 200
        shown = c.call("load")[-1]
        caplog.clear()
        with database_down(db_url, tmp_path):
            # A per-item event answers in the alert above the pair; the tab keeps its pair and client token.
            with pytest.raises(RaterAPIError) as refused:
                c.call("submit", None, shown, 1, False, "", "", *([None] * 8))
            assert refused.value.message == DATABASE_DOWN
        # asyncio's complaint about the queue's event stream, closed by the test client, is not the app's.
        logged = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name != "asyncio"]
        assert [r.getMessage().split(": database unavailable: ")[0] for r in logged] == ["event on_submit"], \
            [r.getMessage() for r in logged]
        assert "\n" not in logged[0].getMessage() and not logged[0].exc_info
        # The same tab sends it again once the database is back: saved once, with the token of the first try.
        assert "Saved." in str(c.call("submit", None, shown, 1, False, "", "", *([None] * 8)))
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count(Judgment.id)).where(Judgment.assignment_id == int(shown))) == 1
