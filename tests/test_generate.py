"""Candidate generation: the HTTP backend against a local fake server, the local backend with tiny models."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from sqlalchemy import func, select

from collect import db
from collect.errors import UserError
from collect.generate import GenerationSettings, generate, parse_model
from collect.ingest import import_dataset
from collect.models import AuditEvent, Pair, Prompt, Response
from collect.openai_backend import OpenAIEndpoint
from collect.projects import ProjectSettings, create_project, get_project
from tests.fake_openai_server import FakeOpenAI
from tests.tiny_models import CHAT_TEMPLATE, tiny_causal_lm

QUESTIONS = [f"question number {i}?" for i in range(5)]


def make_project(url: str, prompts=QUESTIONS) -> int:
    with db.session_scope(url) as s:
        project = create_project(s, "gen", ProjectSettings(overlap=1))
        import_dataset(s, project, [{"prompt": p} for p in prompts])
        return project.id


def run(url: str, project_id: int, policies: list[str], **kwargs):
    with db.session_scope(url) as s:
        return generate(s, get_project(s, project_id), policies, **kwargs)


def endpoint(server: FakeOpenAI, **kwargs) -> OpenAIEndpoint:
    fields = dict(base_url=server.base_url, api_key_env="FAKE_KEY", timeout=5.0, max_retries=3, backoff=0.01,
                  concurrency=4)
    fields.update(kwargs)
    return OpenAIEndpoint(**fields)


def pairs_of(url: str, project_id: int) -> list[tuple[str, str, str, str, dict, dict]]:
    with db.session_scope(url) as s:
        return [(p.prompt.conversation[-1]["content"], p.response_a.model, p.response_b.model, p.response_a.content,
                 p.response_a.generation, p.response_b.generation)
                for p in s.scalars(select(Pair).where(Pair.project_id == project_id).order_by(Pair.id)).unique()]


# ------------------------------------------------------------------------------------------------ HTTP


def test_http_two_models_make_one_pair_per_prompt_with_parameters_recorded(sqlite_url, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-secret")
    pid = make_project(sqlite_url)
    settings = GenerationSettings(max_completion_length=50, temperature=0.9, top_p=0.8, seed=7)
    with FakeOpenAI(api_key="sk-secret") as server:
        result = run(sqlite_url, pid, ["alpha", "b=beta"], settings=settings, endpoint=endpoint(server))
    assert (result.prompts, result.responses, result.pairs, result.rejected) == (5, 10, 5, 0)
    pairs = pairs_of(sqlite_url, pid)
    assert [(q, a, b) for q, a, b, *_ in pairs] == [(q, "alpha", "b") for q in QUESTIONS]
    for question, _, _, text_a, gen_a, gen_b in pairs:
        assert text_a == f"alpha [{gen_a['seed']}]: {question}"
        assert gen_b["model"] == "beta" and gen_b["label"] == "b"
        for gen in (gen_a, gen_b):
            assert gen["backend"] == "openai" and gen["base_url"] == server.base_url
            assert (gen["temperature"], gen["top_p"], gen["max_tokens"]) == (0.9, 0.8, 50)
            assert gen["finish_reason"] == "stop" and gen["round"] == result.round and gen["sample"] == 0
            assert gen["response_id"].startswith("chatcmpl-") and gen["completion_tokens"] > 0
        assert gen_a["seed"] != gen_b["seed"]
    # What went over the wire: the prompt as a conversation, the sampling parameters, the key from the env var.
    assert len(server.requests) == 10
    assert {h["Authorization"] for h in server.headers} == {"Bearer sk-secret"}
    first = next(r for r in server.requests if r["messages"][-1]["content"] == QUESTIONS[0] and r["model"] == "alpha")
    assert first["messages"] == [{"role": "user", "content": QUESTIONS[0]}]


def test_http_retries_rate_limits_server_errors_drops_and_timeouts(sqlite_url):
    pid = make_project(sqlite_url, QUESTIONS[:2])
    # The timeout leaves an ordinary request time to spare on a busy machine: only the "slow" fault times out.
    with FakeOpenAI(slow_seconds=6) as server:
        server.faults.extend(["429", "503", "drop", "slow", "500"])
        result = run(sqlite_url, pid, ["alpha", "beta"], endpoint=endpoint(server, timeout=2, concurrency=1,
                                                                             max_retries=5))
        assert result.retries == 5
        assert len(server.requests) == 4 + 5
    assert result.pairs == 2 and result.responses == 4


def test_http_gives_up_after_retries_and_a_rerun_resumes(db_url):
    pid = make_project(db_url)
    settings = GenerationSettings(batch_size=2)
    with FakeOpenAI() as server:
        done: list[int] = []

        def break_server(n, total):  # after the first batch is committed, the server goes down
            done.append(n)
            server.faults.extend(["503"] * 100)

        with pytest.raises(UserError, match="gave up after 2 retries.*HTTP 503"):
            run(db_url, pid, ["alpha", "beta"], settings=settings, endpoint=endpoint(server, max_retries=2),
                progress=break_server)
        assert done == [2]
        assert len(pairs_of(db_url, pid)) == 2  # the first batch survived the failure
        server.faults.clear()
        result = run(db_url, pid, ["alpha", "beta"], settings=settings, endpoint=endpoint(server))
    assert (result.already_done, result.pairs, result.responses) == (2, 3, 6)
    pairs = pairs_of(db_url, pid)
    assert sorted(q for q, *_ in pairs) == sorted(QUESTIONS)  # every prompt once, no duplicates
    again = run(db_url, pid, ["alpha", "beta"], settings=settings, endpoint=endpoint(server))
    assert (again.already_done, again.pairs, again.responses) == (5, 0, 0)


def done_prompts(url: str, project_id: int) -> list[str]:
    """The prompts the `generate.batch` audit events record as done, by text."""
    with db.session_scope(url) as s:
        ids = [i for d in s.scalars(select(AuditEvent.details).where(AuditEvent.action == "generate.batch"))
               for i in d["prompt_ids"]]
        return sorted(s.get(Prompt, i).conversation[-1]["content"] for i in ids)


def test_http_rejected_prompt_is_skipped_but_bad_key_and_unknown_model_stop(sqlite_url, monkeypatch):
    pid = make_project(sqlite_url, ["fine question", "TOO_LONG " * 3, "another one"])
    with FakeOpenAI(api_key="right") as server:
        monkeypatch.setenv("FAKE_KEY", "wrong")
        with pytest.raises(UserError, match=r"HTTP 401.*\$FAKE_KEY"):
            run(sqlite_url, pid, ["alpha", "beta"], endpoint=endpoint(server))
        monkeypatch.setenv("FAKE_KEY", "right")
        with pytest.raises(UserError, match="HTTP 404: The model 'gamma' does not exist"):
            run(sqlite_url, pid, ["alpha", "gamma"], endpoint=endpoint(server))
        result = run(sqlite_url, pid, ["alpha", "beta"], endpoint=endpoint(server))
        assert (result.pairs, result.rejected) == (2, 2)
        assert sorted(q for q, *_ in pairs_of(sqlite_url, pid)) == ["another one", "fine question"]
        # The rejected prompt is not recorded as done: the rerun of the round sends it again, and only it.
        # Alone in its batch and rejected again, it stops the rerun with the server's reason.
        assert done_prompts(sqlite_url, pid) == ["another one", "fine question"]
        sent = len(server.requests)
        with pytest.raises(UserError, match="rejected all 2 requests of a batch.*maximum context length"):
            run(sqlite_url, pid, ["alpha", "beta"], endpoint=endpoint(server))
        assert [r["messages"][-1]["content"] for r in server.requests[sent:]] == ["TOO_LONG " * 3] * 2


def test_http_request_rejected_once_is_retried_by_the_rerun(sqlite_url):
    pid = make_project(sqlite_url, QUESTIONS[:3])
    with FakeOpenAI() as server:
        server.faults.append("400")
        first = run(sqlite_url, pid, ["alpha", "beta"], endpoint=endpoint(server))
        assert (first.pairs, first.rejected, first.responses) == (2, 1, 5)
        assert len(done_prompts(sqlite_url, pid)) == 2
        second = run(sqlite_url, pid, ["alpha", "beta"], endpoint=endpoint(server))
    # The rerun asks only for the prompt that was rejected and completes its pair.
    assert (second.already_done, second.pairs, second.rejected) == (2, 1, 0)
    assert len(server.requests) == 6 + 2
    assert sorted(q for q, *_ in pairs_of(sqlite_url, pid)) == QUESTIONS[:3]
    assert done_prompts(sqlite_url, pid) == QUESTIONS[:3]


def test_http_first_batch_rejected_in_full_stops_with_the_server_message(sqlite_url):
    # Every request of the run's first batch refused: the request itself is wrong, so stop and say why.
    pid = make_project(sqlite_url, ["TOO_LONG one", "fine question"])
    settings = GenerationSettings(batch_size=1)
    with FakeOpenAI() as server:
        with pytest.raises(UserError, match=r"rejected all 2 requests of a batch \(HTTP 400: This model's maximum "
                                            r"context length is 2048 tokens\)") as e:
            run(sqlite_url, pid, ["alpha", "beta"], settings=settings, endpoint=endpoint(server))
    assert "\n" not in str(e.value)
    assert pairs_of(sqlite_url, pid) == [] and done_prompts(sqlite_url, pid) == []


def test_http_later_batch_rejected_in_full_is_left_for_the_rerun(sqlite_url):
    # After a batch got through, a refused prompt is the prompt's problem: the run goes on without it.
    pid = make_project(sqlite_url, ["fine question", "TOO_LONG one", "another fine question"])
    settings = GenerationSettings(batch_size=1)
    with FakeOpenAI() as server:
        result = run(sqlite_url, pid, ["alpha", "beta"], settings=settings, endpoint=endpoint(server))
    assert result.rejected == 2 and result.pairs == 2
    assert sorted(q for q, *_ in pairs_of(sqlite_url, pid)) == ["another fine question", "fine question"]
    assert sorted(done_prompts(sqlite_url, pid)) == ["another fine question", "fine question"]


def test_http_concurrency_limit_is_respected(sqlite_url):
    pid = make_project(sqlite_url, QUESTIONS)
    with FakeOpenAI(delay=0.15) as server:
        result = run(sqlite_url, pid, ["alpha", "beta"], settings=GenerationSettings(batch_size=5),
                     endpoint=endpoint(server, concurrency=3))
        assert server.max_in_flight == 3  # 10 requests queued at once, never more than 3 in flight
    assert result.pairs == 5


def test_one_model_pairs_its_samples_and_identical_answers_make_no_pair(sqlite_url):
    pid = make_project(sqlite_url, QUESTIONS[:2])
    with FakeOpenAI() as server:
        with pytest.raises(UserError, match=r"set num_generations \(--num-generations\) to 2 or more"):
            run(sqlite_url, pid, ["alpha"], endpoint=endpoint(server))
        sampled = run(sqlite_url, pid, ["alpha"], settings=GenerationSettings(num_generations=3),
                      endpoint=endpoint(server))
        parrot = run(sqlite_url, pid, ["parrot"], settings=GenerationSettings(num_generations=2),
                     endpoint=endpoint(server))
        greedy = run(sqlite_url, pid, ["beta"], settings=GenerationSettings(num_generations=2, temperature=0),
                     endpoint=endpoint(server))
    assert (sampled.pairs, sampled.responses, sampled.identical) == (6, 6, 0)  # 3 samples: 3 pairs a prompt
    assert (parrot.pairs, parrot.identical, parrot.responses) == (0, 2, 2)  # the same text is stored once
    assert (greedy.pairs, greedy.identical) == (0, 2)
    with db.session_scope(sqlite_url) as s:
        samples = Counter(r.generation["sample"] for r in s.scalars(select(Response).where(Response.model == "alpha")))
    assert samples == {0: 2, 1: 2, 2: 2}


def test_prompts_from_a_file_join_the_project_without_their_pairs(sqlite_url, tmp_path):
    pid = make_project(sqlite_url, ["already here?"])
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "already here?"}, {"prompt": [{"role": "system", "content": "be brief"},
                                                     {"role": "user", "content": "new one?"}], "tags": ["domain:law"]},
            {"prompt": "has a pair", "response_a": "x", "response_b": "y", "choice": "A>B", "rater": "r"},
            {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with FakeOpenAI() as server:
        result = run(sqlite_url, pid, ["alpha", "beta"], prompts=path, endpoint=endpoint(server))
        limited = run(sqlite_url, pid, ["alpha", "beta"], prompts=path, max_prompts=2, round_name="second",
                      settings=GenerationSettings(system_prompt="You are terse."), endpoint=endpoint(server))
    assert (result.prompts, result.pairs, result.not_answerable) == (4, 3, 1)
    # "new one?" keeps its own system message, so round 2 gets the same answers as round 1: no new pair.
    assert (limited.prompts, limited.pairs, limited.responses) == (2, 1, 2)
    with db.session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count(Prompt.id))) == 4  # the file's 4 prompts, one of them already there
        assert s.scalar(select(Prompt.domain).where(Prompt.domain != "")) == "law"
        # Only generated pairs: the file's own pair ("x" vs "y") was not imported.
        assert {p.source for p in s.scalars(select(Pair)).unique()} == {f"generate:{result.round}", "generate:second"}
    systems = [r["messages"][0] for r in server.requests[-4:]]
    assert systems.count({"role": "system", "content": "You are terse."}) == 2  # added where none was
    assert systems.count({"role": "system", "content": "be brief"}) == 2  # kept where there was one
    with db.session_scope(sqlite_url) as s:  # each response of round 2 says whether the added system prompt led it
        second = [r for r in s.scalars(select(Response)).unique() if r.generation["round"] == "second"]
        assert len(second) == 2 and all(r.generation["system_prompt"] == "You are terse." for r in second)
        assert not any("system_prompt" in r.generation for r in s.scalars(select(Response)).unique()
                       if r.generation["round"] == result.round)
    # The round's name with other models (or settings): refused, where it counted every prompt as done.
    with FakeOpenAI() as server, pytest.raises(UserError, match=r"^round 'second' was generated with other models "
                                               r"or settings \(models alpha, beta\); name a new round"):
        run(sqlite_url, pid, ["alpha", "parrot"], prompts=path, max_prompts=2, round_name="second",
            settings=GenerationSettings(system_prompt="You are terse."), endpoint=endpoint(server))


def test_the_command_line_names_policies_and_settings_as_align_does(sqlite_url):
    """`--policy` as in `prefloop align`, and TRL's names for the first N prompts, responses per prompt and their
    lengths, as `align` and `align eval` spell them; the earlier spellings are gone (one name for each)."""
    from typer.testing import CliRunner

    from apps.cli import app

    pid = make_project(sqlite_url, QUESTIONS[:3])
    with FakeOpenAI() as server:
        cli = CliRunner().invoke(app, ["generate", "--project", "gen", "--policy", "alpha", "--max-prompts", "2",
                                       "--num-generations", "3", "--max-completion-length", "50",
                                       "--max-prompt-length", "512", "--base-url", server.base_url, "--db", sqlite_url])
    assert cli.exit_code == 0, cli.output + repr(cli.exception)
    assert len(server.requests) == 2 * 3 and {r["max_tokens"] for r in server.requests} == {50}
    assert len(pairs_of(sqlite_url, pid)) == 2 * 3  # 3 responses to each of the first 2 prompts: 3 pairs each
    for old in ("--model", "--limit", "--samples", "--max-new-tokens", "--max-prompt-tokens"):
        refused = CliRunner().invoke(app, ["generate", "--project", "gen", old, "2"])
        assert refused.exit_code == 2 and f"No such option: {old}" in refused.output
    described = " ".join(CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "SQLAlchemy URL of the collection database (default sqlite:///prefloop.db)." in described


def test_a_round_begun_before_the_settings_were_renamed_is_resumed():
    """A round is found by a key of the command's settings, kept under the names they had when rounds were first
    keyed (max_new_tokens, samples, max_prompt_tokens): these keys are what the code before the renaming computed."""
    from collect.generate import run_key

    specs = [parse_model("base=smollm2-135m-instruct"), parse_model("aligned=runs/aligned")]
    assert run_key(specs, GenerationSettings(), None) == "6007e9c6a7"
    settings = GenerationSettings(max_completion_length=64, num_generations=2, max_prompt_length=512, temperature=1.0)
    assert run_key(specs, settings, OpenAIEndpoint(base_url="http://localhost:8000/v1")) == "44c3e6ab3c"


# ----------------------------------------------------------------------------------------------- local


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two tiny causal LMs and a LoRA adapter on the first (random, non-zero weights so it changes outputs).

    The tests count pairs, so the models never end a response on its first token: a random tiny model does that
    about once in 600 samples, and an empty response makes no pair."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GenerationConfig

    root = tmp_path_factory.mktemp("tiny")
    base = tiny_causal_lm(root / "base", seed=0)
    other = tiny_causal_lm(root / "other", seed=1)
    for path in (base, other):
        generation = GenerationConfig.from_pretrained(path)
        generation.begin_suppress_tokens = [generation.eos_token_id]
        generation.save_pretrained(path)
    # Seeded: LoRA's weights come from the global random state, which depends on the tests run before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(root / "adapter")
    return base, other, str(root / "adapter")


def test_parse_model_labels_paths_and_adapters(tiny_models, tmp_path):
    import shutil

    base, _, adapter = tiny_models
    assert parse_model("smollm2-135m-instruct").label == "smollm2-135m-instruct"
    spec = parse_model("aligned=" + adapter)
    assert (spec.label, spec.model, spec.adapter) == ("aligned", base, adapter)
    # finetune/'s prefloop.json names the base as the user did (an alias): it wins over PEFT's resolved path.
    shutil.copytree(adapter, tmp_path / "aligned")
    (tmp_path / "aligned" / "prefloop.json").write_text(json.dumps({"base_policy": {"name": "smollm2-135m-instruct"}}))
    assert parse_model(str(tmp_path / "aligned")).model == "smollm2-135m-instruct"
    assert parse_model("runs/lr=1e-4").model == "runs/lr=1e-4"  # an '=' inside a path is no label


def test_local_models_with_adapter_record_parameters_and_reproduce(sqlite_url, tiny_models):
    base, other, adapter = tiny_models
    pid = make_project(sqlite_url, QUESTIONS[:3])
    settings = GenerationSettings(max_completion_length=6, temperature=1.0, top_p=0.9, seed=3, batch_size=2)
    models = ["base=" + base, "tuned=" + adapter, "other=" + other]
    result = run(sqlite_url, pid, models, settings=settings)
    assert (result.responses, result.pairs, result.empty) == (9, 9, 0)  # 3 models: 3 pairs a prompt
    gens = {a: g for _, a, _, _, g, _ in pairs_of(sqlite_url, pid)}
    assert gens["base"]["adapter"] is None and gens["tuned"]["adapter"] == adapter
    # The device is chosen automatically: a GPU when there is one (bf16 where it supports it), else the CPU.
    device, dtype = "cpu", "float32"
    if torch.cuda.is_available():
        device, dtype = "cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    for gen in gens.values():
        assert gen["backend"] == "transformers" and gen["device"].split(":")[0] == device and gen["dtype"] == dtype
        assert (gen["max_new_tokens"], gen["temperature"], gen["top_p"], gen["do_sample"]) == (6, 1.0, 0.9, True)
        assert gen["round"] == result.round and len(gen["batch_prompt_ids"]) in (1, 2)
        assert gen["completion_tokens"] <= 6 and gen["finish_reason"] in ("stop", "length")
        assert isinstance(gen["seed"], int) and gen["prompt_tokens"] > 0
    # The adapter changes what the base model says: same seed, different text.
    with db.session_scope(sqlite_url) as s:
        texts = {m: sorted(s.scalars(select(Response.content).where(Response.model == m))) for m in ("base", "tuned")}
    assert texts["base"] != texts["tuned"]
    # Same seeds, another round name: the very same texts come back, so nothing new is stored.
    again = run(sqlite_url, pid, models, settings=GenerationSettings(**{**settings.__dict__, "batch_size": 2}),
                round_name="again")
    assert (again.already_done, again.responses, again.pairs) == (0, 0, 0)


def test_local_run_interrupted_by_ctrl_c_resumes_without_duplicates(sqlite_url, tiny_models):
    # Labelled: a response's seed derives from its label, and an unlabelled model's label is its temporary path,
    # under which some runs' tiny model says nothing (an empty response makes no pair).
    base, other = "base=" + tiny_models[0], "other=" + tiny_models[1]
    pid = make_project(sqlite_url, QUESTIONS)
    settings = GenerationSettings(max_completion_length=4, batch_size=2)

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(sqlite_url, pid, [base, other], settings=settings, progress=interrupt)
    assert len(pairs_of(sqlite_url, pid)) == 2
    result = run(sqlite_url, pid, [base, other], settings=settings)
    assert (result.already_done, result.pairs) == (2, 3)
    assert sorted(q for q, *_ in pairs_of(sqlite_url, pid)) == sorted(QUESTIONS)
    with db.session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count(Response.id))) == 10


def test_local_model_saved_again_into_its_folder_is_a_new_round(sqlite_url, tiny_models, tmp_path):
    """A round is what the models hold, not only where they are: an adapter aligned again into the same folder
    generates anew (it passed for done, 0 new pairs); the same folder, `align eval`'s results added, resumes."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from apps.cli import app

    base, _, adapter = tiny_models
    aligned = tmp_path / "aligned"
    shutil.copytree(adapter, aligned)
    manifest = {"kind": "prefloop.aligned_policy", "base_policy": {"name": base}, "evaluation": None,
                "created_at": "2026-01-01T00:00:00+00:00"}
    (aligned / "prefloop.json").write_text(json.dumps(manifest))
    pid = make_project(sqlite_url, QUESTIONS[:3])
    settings = GenerationSettings(max_completion_length=4, temperature=1.0, batch_size=2)
    models = ["base=" + base, f"aligned={aligned}"]
    named = run(sqlite_url, pid, models, settings=settings, round_name="named")
    first = run(sqlite_url, pid, models, settings=settings)
    assert (named.already_done, named.pairs, named.changed_since) == (0, 3, None)
    # The same texts again: nothing new to store, and the summary says why.
    assert (first.already_done, first.pairs, first.already_paired) == (0, 0, 3)
    # What `prefloop align eval` adds to the folder is no part of the model: the round is done.
    (aligned / "prefloop.json").write_text(json.dumps({**manifest, "evaluation": {"win_rate": 0.6}}))
    (aligned / "evaluation.json").write_text("{}")
    (aligned / "held_out.json").write_text("{}")  # `align eval --out aligned/held_out.json`
    same = run(sqlite_url, pid, models, settings=settings)
    assert (same.round, same.already_done, same.responses, same.changed_since) == (first.round, 3, 0, None)

    # `prefloop align --out aligned` again: other weights, the same path.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(aligned)
    cli = CliRunner().invoke(app, ["generate", "--project", "gen", "--policy", models[0], "--policy", models[1],
                                   "--max-completion-length", "4", "--temperature", "1.0", "--batch-size", "2",
                                   "--db", sqlite_url])
    assert cli.exit_code == 0, cli.output + repr(cli.exception)
    line = " ".join(cli.output.split())
    assert f"(new: aligned changed since round {first.round}): 3 prompts (0 done before)" in line
    with db.session_scope(sqlite_url) as s:
        sources = Counter(p.source for p in s.scalars(select(Pair).where(Pair.project_id == pid)).unique())
        new_round = next(r.generation["round"] for r in s.scalars(
            select(Response).where(Response.model == "aligned").order_by(Response.id.desc())).unique())
        assert s.scalar(select(func.count(Response.id)).where(Response.model == "base")) == 3  # the same texts
    assert new_round != first.round and sources[f"generate:{new_round}"] > 0
    # The new contents' round resumes like any other; a round named by the caller generates its prompts again.
    again = run(sqlite_url, pid, models, settings=settings)
    assert (again.round, again.already_done, again.responses, again.changed_since) == (new_round, 3, 0, None)
    renamed = run(sqlite_url, pid, models, settings=settings, round_name="named")
    assert (renamed.already_done, renamed.changed_since, renamed.changed_models) == (0, "named", ["aligned"])
    assert renamed.responses == 0  # the texts of the new round: generated again, found stored
    done = run(sqlite_url, pid, models, settings=settings, round_name="named")
    assert (done.already_done, done.changed_since) == (3, None)  # nothing done again: no change to report


def test_a_round_is_resumed_by_its_command_where_a_models_contents_cannot_be_told_or_were_not_recorded():
    """A Hub commit the network did not give this time (None) matches any; a round named before contents were
    recorded ("gen-" + the command's key, no contents) is resumed, not started again under a new name."""
    from collect.generate import resumed_round

    contents = {"aligned": {"model": "abc", "adapter": "def"}}
    batches = [{"round": "gen-k1", "prompt_ids": [1]},  # written before contents were recorded
               {"round": "gen-other", "run_key": "k2", "contents": contents, "prompt_ids": [1]},
               {"round": "mine", "run_key": "k2", "contents": contents, "prompt_ids": [2]}]  # named: by name only
    assert resumed_round(batches, "k1", contents) == "gen-k1"
    assert resumed_round(batches, "k2", {"aligned": {"model": None, "adapter": "def"}}) == "gen-other"
    assert resumed_round(batches, "k2", {"aligned": {"model": "abc", "adapter": "new"}}) is None
    assert resumed_round(batches, "k3", contents) is None


def test_local_long_prompts_lose_old_turns_or_are_skipped(sqlite_url, tiny_models):
    base, other = "base=" + tiny_models[0], "other=" + tiny_models[1]
    long_chat = []
    for i in range(6):
        long_chat += [{"role": "user", "content": f"turn {i} " + "words " * 20},
                      {"role": "assistant", "content": "ok " * 20}]
    long_chat.append({"role": "user", "content": "short last question?"})
    pid = make_project(sqlite_url, [long_chat, "x " * 400])
    settings = GenerationSettings(max_completion_length=3, max_prompt_length=60)
    result = run(sqlite_url, pid, [base, other], settings=settings)
    assert (result.pairs, result.too_long) == (1, 2)  # the 400-word question does not fit either model
    (_, _, _, _, gen, _), = pairs_of(sqlite_url, pid)
    assert 0 < gen["prompt_turns_dropped"] < len(long_chat) and gen["prompt_tokens"] <= 60


def test_local_model_without_chat_template_needs_and_takes_one(sqlite_url, tiny_models, tmp_path):
    """A base model with no chat template: generate says to pass --chat-template, and with one it works."""
    import shutil

    from typer.testing import CliRunner

    from apps.cli import app

    base, other, _ = tiny_models
    bare = tmp_path / "bare"
    shutil.copytree(base, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    pid = make_project(sqlite_url, QUESTIONS[:2])
    settings = GenerationSettings(max_completion_length=4)
    with pytest.raises(UserError, match="no chat template; pass one with --chat-template"):
        run(sqlite_url, pid, [str(bare), other], settings=settings)

    template = tmp_path / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    cli = CliRunner().invoke(app, ["generate", "--project", "gen", "--policy", f"bare={bare}", "--policy",
                                   f"other={other}", "--max-completion-length", "4", "--chat-template", str(template),
                                   "--db", sqlite_url])
    assert cli.exit_code == 0, cli.output + repr(cli.exception)
    with db.session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count(Response.id)).where(Response.model == "bare")) == 2
    assert len(pairs_of(sqlite_url, pid)) == 2
    with pytest.raises(UserError, match="local models only"):
        run(sqlite_url, pid, ["alpha", "beta"], settings=GenerationSettings(chat_template=CHAT_TEMPLATE),
            endpoint=OpenAIEndpoint(base_url="http://127.0.0.1:9/v1"))
