"""The end-to-end demo at its reduced (CI) size, without serving: every step runs and leaves usable outputs."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from apps.demo import PROJECT, SMALL, run_demo
from collect import db
from collect.models import Judgment, Pair, Response
from collect.projects import authenticate, get_project


@pytest.mark.slow
def test_small_demo_runs_the_whole_loop(tmp_path, data_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    result = run_demo(tmp_path / "demo", small=True, serve=False, data_dir=data_dir)

    assert [step[1] for step in result.steps] == ["done"] * 4, result.steps

    # A reward model directory that loads, scores, and says how it was trained and how it did.
    reward = AutoModelForSequenceClassification.from_pretrained(result.reward_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.reward_dir)
    assert reward.config.num_labels == 1
    assert reward(**tokenizer(["User: hi\nAssistant: hello"], return_tensors="pt")).logits.shape == (1, 1)
    evaluation = json.loads((result.reward_dir / "eval" / "eval.json").read_text())
    assert evaluation["n"] == SMALL.test_pairs and 0 <= evaluation["accuracy"] <= 1

    # An adapter that loads onto its base policy, with its evaluation against the base recorded.
    manifest = json.loads((result.adapter_dir / "prefloop.json").read_text())
    assert manifest["base_policy"]["name"] == "smollm2-135m-instruct" and manifest["method"] == "grpo"
    assert manifest["evaluation"]["n_prompts"] == SMALL.eval_prompts
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(manifest["base_policy"]["path"]),
                                       result.adapter_dir)
    assert any("lora_" in name for name, _ in policy.named_parameters())

    with db.session_scope(result.db_url) as session:
        project = get_project(session, PROJECT)
        # The imported human preferences, as judged pairs.
        assert session.scalar(select(func.count(Judgment.id)).where(
            Judgment.project_id == project.id, Judgment.kind == "import")) == SMALL.train_pairs
        # A new round of pairs: base against aligned, one per fresh prompt, waiting for raters.
        new = session.scalars(select(Pair).where(Pair.project_id == project.id,
                                                 Pair.source == f"generate:{result.round}")).unique().all()
        assert len(new) == SMALL.fresh_prompts
        assert {(p.response_a.model, p.response_b.model) for p in new} == {("base", "aligned")}
        assert all(p.status == "active" and p.n_claimed == 0 for p in new)
        aligned = session.scalars(select(Response).where(Response.model == "aligned")).first()
        assert aligned.generation["adapter"] == str(result.adapter_dir)
        assert aligned.generation["max_new_tokens"] == SMALL.new_tokens
        # The printed logins work.
        for name, password in result.logins.items():
            assert authenticate(session, name, password) is not None
            assert authenticate(session, name, password + "x") is None
    db.get_engine(result.db_url).dispose()


def test_the_summary_prints_paths_and_errors_with_brackets_as_given(tmp_path):
    """Rich reads "[...]" as markup: "[v2]" vanished from a path and "[/INST]" in a message raised MarkupError."""
    import io

    from rich.console import Console

    from apps.demo import DemoResult, _print_summary

    screen = io.StringIO()
    result = DemoResult(workdir=tmp_path, db_url="sqlite:///runs [v2]/prefloop.db", project=PROJECT, logins={},
                        reward_dir=tmp_path / "[v2]" / "reward",
                        steps=[("2. reward model", "done", "accuracy 0.64 on [test]", 1.0, 1.0),
                               ("3. align", "skipped: a prompt ends in [/INST]", "", 1.0, 1.0)])
    _print_summary(Console(file=screen, width=200), result, 120.0)
    shown = screen.getvalue()
    for text in ("sqlite:///runs [v2]/prefloop.db", str(tmp_path / "[v2]" / "reward"), "accuracy 0.64 on [test]",
                 "skipped: a prompt ends in [/INST]"):
        assert text in shown, text


def test_the_policys_prompts_are_distinct_where_hh_repeats_a_prompt():
    """HH asks some prompts in several rows: split by row, one held-out prompt of the full demo was also a training
    prompt (align warned about it). Each prompt text now lands in one part only."""
    from types import SimpleNamespace

    from apps.demo import FULL, _split

    def record(i: int) -> SimpleNamespace:  # every third row repeats the prompt of the row before
        text = f"prompt {i - 1 if i % 3 == 0 else i}"
        return SimpleNamespace(prompt=[{"role": "user", "content": text}])

    records = [record(i) for i in range(3000)]
    split = _split(records, FULL)
    texts = {part: [records[i].prompt[0]["content"] for i in split[part]] for part in ("align", "eval", "fresh")}
    every = [text for part in texts.values() for text in part]
    assert len(every) == len(set(every)) == len(split["align"]) + FULL.eval_prompts + FULL.fresh_prompts
