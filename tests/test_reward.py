"""Reward stage: training with TRL, truncation, margins, LoRA, evaluation metrics, scoring, bad input.

All models are tiny and built in process (tests/tiny_models.py); the whole file runs in well under 90 s.
"""

from __future__ import annotations

import dataclasses
import json
import os
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")

from collect.errors import UserError  # noqa: E402
from collect.offline_models import MODEL_ALIASES, adapter_folder, resolve_model  # noqa: E402
from reward.data import Encoder, load_preferences, load_rows, rows_by_prompt  # noqa: E402
from reward.evaluate import calibration, compare_reward_models, evaluate_reward_model, preference_metrics  # noqa: E402
from reward.score import RewardScorer, score_file  # noqa: E402
from reward.train import RewardTrainingConfig, split_by_prompt, train_reward_model  # noqa: E402
from tests.ranks import TORCHRUN, run_ranks  # noqa: E402
from tests.tiny_models import (tiny_causal_lm, tiny_encoder_reward_model, tiny_lora_reward_adapter,  # noqa: E402
                                tiny_reward_model, tiny_tokenizer)

WORDS = "the a cat dog sea sky red blue one two three tree house river".split()


def rule_pairs(n: int, seed: int = 0, *, long_prompt: bool = False, uneven: bool = False) -> list[dict]:
    """A learnable rule: the chosen answer ends in 'good', the rejected one in 'bad'; otherwise identical
    (`uneven`: each answer has 0-4 more random words before its last, so the two sides differ in length)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        filler = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
        prompt = f"question {i}: {filler}" + (" " + " ".join(rng.choice(WORDS) for _ in range(60)) if long_prompt else "")
        chosen, rejected = ([filler, *(rng.choice(WORDS) for _ in range(rng.randint(0, 4) if uneven else 0)), last]
                            for last in ("good", "bad"))
        rows.append({
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": " ".join(chosen)}],
            "rejected": [{"role": "assistant", "content": " ".join(rejected)}],
            "margin": rng.choice([0.5, 1.0]),
            "source": rng.choice(["alpha", "beta"]),
        })
    return rows


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> str:
    return tiny_reward_model(tmp_path_factory.mktemp("tiny") / "rm")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_rm):
    """One real training run shared by several tests: 256 rule pairs, 32 held-out pairs in one eval batch, all
    truncated, their two sides of different lengths."""
    out = tmp_path_factory.mktemp("trained") / "rm"
    eval_rows = rule_pairs(32, seed=1, long_prompt=True, uneven=True)
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(256, long_prompt=True, uneven=True)),
        eval_data=datasets.Dataset.from_list(eval_rows),
        base_model=tiny_rm, output_dir=str(out), max_length=48, learning_rate=3e-3,
        num_train_epochs=2, batch_size=16, eval_batch_size=32, progress=False,
        precision="fp32",  # pinned: the tests compare the trainer's numbers with the scorer's to 1e-4
    ))
    return result, eval_rows


# ------------------------------------------------------------------------------------------ training


def test_training_lowers_the_loss_and_learns_the_rule(trained):
    result, _ = trained
    # Truncated alike, every training pair still shares its prompt and trains as one packed row.
    assert result.shared_prompt and result.tokens_per_pair < 48 + 8
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) >= 3
    assert losses[-1] < 0.5 * losses[0]
    assert result.metrics["eval_accuracy"] >= 0.9
    assert result.n_train == 256 and result.n_eval == 32
    # Every pair is over 48 tokens: all truncated, none dropped.
    assert result.truncated_train == 256
    assert result.best_step is not None


def test_output_directory_has_model_tokenizer_metadata_and_card(trained):
    result, _ = trained
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = result.output_dir
    info = json.loads(open(f"{out}/prefloop.json").read())
    assert info["max_length"] == 48 and info["truncation_side"] == "left"
    assert info["data_fingerprint"].startswith("sha256:")
    assert info["metrics"]["eval_accuracy"] == result.metrics["eval_accuracy"]
    assert info["truncated_train"] == 256
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1
    AutoTokenizer.from_pretrained(out)
    card = open(f"{out}/README.md").read()
    assert "eval_accuracy" in card and "left" in card
    assert info["margin_in_loss"] is True and "- loss: TRL's pairwise loss with the raters' margin (the `margin` " in card
    assert "| eval_margin (mean reward of chosen minus rejected) |" in card  # TRL's name, not the raters' margin
    low, high = info["eval_accuracy_ci"]
    assert low <= info["metrics"]["eval_accuracy"] <= high and high - low > 0
    assert f"- held-out accuracy of this model: {info['metrics']['eval_accuracy']:.3f} [{low:.3f}, {high:.3f}]" in card
    # Every held-out evaluation, the kept one in bold.
    steps = [(f"**step {e['step']} {e['accuracy']:.3f}**" if e["step"] == result.best_step
              else f"step {e['step']} {e['accuracy']:.3f}") for e in result.evaluations]
    assert len(steps) >= 2 and f"held-out accuracy at each evaluation (in training, fp32): {', '.join(steps)}\n" in card


def test_the_summary_names_a_higher_step_the_rule_did_not_keep(monkeypatch, capsys):
    """A run that trains past its held-out peak keeps the later step unless the peak is significantly better
    (`keeps_latest`); the summary says where the peak was, so a user sees that more epochs did not help."""
    from reward.train import RewardTrainingResult, print_summary

    monkeypatch.setenv("COLUMNS", "200")
    evaluations = [{"step": 10, "accuracy": 0.60}, {"step": 20, "accuracy": 0.70}, {"step": 30, "accuracy": 0.65}]
    result = RewardTrainingResult(output_dir="rm", metrics={"eval_accuracy": 0.65, "train_loss": 0.5}, n_train=100,
                                  n_eval=20, truncated_train=0, truncated_eval=0, best_step=30, train_seconds=2.0,
                                  pairs_per_second=50.0, evaluations=evaluations)
    print_summary(result)
    assert "0.650 (kept step 30; step 20 scored 0.700, not significantly better)" in capsys.readouterr().err
    result.eval_accuracy_ci = [0.432, 0.819]
    print_summary(result)
    assert "0.650 [0.432, 0.819] (kept step 30;" in capsys.readouterr().err
    result.eval_accuracy_ci = None
    result.evaluations = evaluations[:2]
    result.best_step, result.metrics["eval_accuracy"] = 20, 0.70
    print_summary(result)
    summary = capsys.readouterr().err
    assert "0.700 (kept step 20) " in summary and "0.5000 (no margin in the loss)" in summary
    result.n_eval, result.evaluations, result.margin_in_loss = 0, [], True
    del result.metrics["eval_accuracy"]
    print_summary(result)
    summary = capsys.readouterr().err
    assert " none " in summary and "none (0 truncated)" not in summary and "the data's margin in the loss" in summary


def test_margins_change_the_loss(tmp_path, tiny_rm):
    data = datasets.Dataset.from_list(rule_pairs(32))
    losses = {}
    for use_margin in (True, False):
        result = train_reward_model(RewardTrainingConfig(
            data=data, base_model=tiny_rm, output_dir=str(tmp_path / str(use_margin)), eval_fraction=0,
            max_steps=1, batch_size=32, learning_rate=1e-9, use_margin=use_margin,
            center_rewards_coefficient=None, progress=False,
        ))
        losses[use_margin] = result.metrics["train_loss"]
    # An untrained model gives reward gaps near 0: loss ~ log(1 + e^margin) with, ~ log 2 without.
    assert losses[False] == pytest.approx(math.log(2), abs=0.05)
    assert losses[True] > losses[False] + 0.3


def test_truncation_keeps_the_end():
    tokenizer = tiny_tokenizer()
    conversation = [
        {"role": "user", "content": "tell me a story " + "and then " * 80},
        {"role": "assistant", "content": "THE END is near"},
    ]
    left, cut = Encoder(tokenizer, 32, "left").encode(conversation)
    assert cut and len(left) == 32
    assert tokenizer.decode(left).rstrip().endswith("THE END is near<eos>")
    right, cut_right = Encoder(tiny_tokenizer(), 32, "right").encode(conversation)
    assert cut_right and "THE END" not in tokenizer.decode(right)
    short, cut_short = Encoder(tokenizer, 512, "left").encode(conversation[-1:])
    assert not cut_short and "THE END" in tokenizer.decode(short)


@pytest.mark.parametrize("backbone", ["decoder", "encoder"])
def test_an_over_long_pair_loses_the_same_prompt_tokens_on_both_sides(backbone):
    """Aligned, both sides keep the same window of the prompt (the longer side as `encode` cuts it alone) and
    share their start; cut alone, the side with the shorter answer keeps more of the prompt and the starts
    no longer line up. An answer longer than the limit is cut alone either way."""
    from transformers import AutoTokenizer

    from reward.data import shared_start

    tokenizer = tiny_tokenizer() if backbone == "decoder" else AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    encoder = Encoder(tokenizer, 40, "left")
    prompt = [{"role": "user", "content": " ".join(WORDS * 6)}]
    long_side = prompt + [{"role": "assistant", "content": "one two three four five six seven final"}]
    short_side = prompt + [{"role": "assistant", "content": "short"}]
    chosen, rejected, cut = encoder.encode_pair(long_side, short_side)
    assert cut and chosen == encoder.encode(long_side)[0] and len(chosen) == 40
    assert len(rejected) < 40 and rejected != encoder.encode(short_side)[0]
    answer = len(tokenizer(" short", add_special_tokens=False)["input_ids"])
    assert shared_start(chosen, rejected) >= len(rejected) - answer - 4  # all but the answer and its markers
    if backbone == "encoder":
        assert chosen[0] == rejected[0] == tokenizer.cls_token_id and rejected[-1] == tokenizer.sep_token_id
    assert "short" in tokenizer.decode(rejected[-answer - 3:])

    alone = encoder.encode_pair(long_side, short_side, align=False)
    assert alone == (encoder.encode(long_side)[0], encoder.encode(short_side)[0], True)
    assert shared_start(alone[0], alone[1]) < 5

    endless = [{"role": "assistant", "content": " ".join(WORDS * 4)}]
    chosen, rejected, _ = encoder.encode_pair(endless, short_side)
    assert (chosen, rejected) == (encoder.encode(endless)[0], encoder.encode(short_side)[0])


def test_encoder_without_chat_template_keeps_cls_and_sep(tmp_path):
    """BERT-style tokenizers: no template, no EOS; truncation from the left keeps [CLS] ... [SEP]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    conversation = [{"role": "user", "content": "words " * 100}, {"role": "assistant", "content": "final answer"}]
    ids, cut = Encoder(tokenizer, 16, "left").encode(conversation)
    assert cut and len(ids) == 16
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[-3:-1]) == "final answer"
    # The Encoder cuts the ids itself (a pair's two sides by the same amount); alone, that is the tokenizer's own
    # truncation, on either side.
    from reward.data import render

    for side in ("left", "right"):
        for tok in (tokenizer, tiny_tokenizer()):
            text, special = render(tok, conversation)
            own = Encoder(tok, 16, side).encode(conversation)[0]
            assert own == tok(text, add_special_tokens=special, truncation=True, max_length=16)["input_ids"]


def swapped(rows: list[dict]) -> list[dict]:
    """The same pairs with chosen and rejected exchanged: the opposite rule."""
    return [dict(r, chosen=r["rejected"], rejected=r["chosen"]) for r in rows]


def held_out_accuracy(model, rows: list[dict], **scorer_args) -> float:
    chosen, rejected = RewardScorer(model, device="cpu", **scorer_args).score_pairs(datasets.Dataset.from_list(rows))
    return float(((chosen.mean - rejected.mean) > 0).mean())


def test_encoder_backbone_learns_the_rule(tmp_path):
    """The encoder path end to end (minilm-l6's tokenizer, a tiny random BERT), full fine-tuning."""
    base = tiny_encoder_reward_model(tmp_path / "bert")
    train_rows, eval_rows = rule_pairs(64), rule_pairs(32, seed=1)
    # The pairs differ in one word, so even a random model ranks them all one way: teach it the way it
    # does not rank them yet, or a model that learned nothing would pass.
    if held_out_accuracy(base, eval_rows, max_length=32) > 0.5:
        train_rows, eval_rows = swapped(train_rows), swapped(eval_rows)
    assert held_out_accuracy(base, eval_rows, max_length=32) < 0.5
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(train_rows), eval_data=datasets.Dataset.from_list(eval_rows),
        base_model=base, output_dir=str(tmp_path / "out"), max_length=32, max_steps=8, batch_size=16,
        learning_rate=1e-3, precision="fp32", progress=False,
    ))
    assert result.n_train == 64 and result.n_eval == 32
    assert result.metrics["eval_accuracy"] >= 0.9
    assert held_out_accuracy(result.output_dir, eval_rows) == result.metrics["eval_accuracy"]


@pytest.mark.parametrize("share_prompt", [True, False])
def test_bf16_trains_without_a_gpu(tmp_path, tiny_rm, share_prompt):
    """--precision bf16 on a machine with no GPU trains in CPU bf16 autocast instead of stopping in Transformers,
    also when pairs are packed and the model's inner modules are called directly."""
    from transformers import TrainerCallback

    from reward.models import transformer_layers

    seen = {"matmul dtypes": set()}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.update(bf16=args.bf16, device=args.device.type)
            transformer_layers(model)[0].mlp.up_proj.register_forward_hook(
                lambda module, inputs, output: seen["matmul dtypes"].add(output.dtype))

    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(16)), base_model=tiny_rm, output_dir=str(tmp_path / "bf16"),
        eval_fraction=0, max_length=32, max_steps=2, batch_size=8, precision="bf16", callbacks=[Spy()],
        share_prompt=share_prompt, progress=False,
    ))
    assert result.shared_prompt == share_prompt
    assert seen == {"bf16": True, "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "matmul dtypes": {torch.bfloat16}}
    assert math.isfinite(result.metrics["train_loss"])
    assert json.loads((tmp_path / "bf16" / "prefloop.json").read_text())["precision"] == "bf16"


@pytest.mark.parametrize("asked", [False, True])
def test_gradient_checkpointing_is_off_unless_asked(tmp_path, tiny_rm, asked):
    """TRL's RewardConfig turns checkpointing on by default (about 3x slower on a CPU); prefloop trains without it
    unless asked, passing the switch under whichever name the installed Transformers knows (5.17 refuses
    activation_checkpointing, later releases warn on gradient_checkpointing)."""
    from transformers import TrainerCallback

    seen = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            # The model's flag has been renamed the same way (is_gradient_checkpointing still answers, with a warning).
            renamed = hasattr(type(model), "is_activation_checkpointing")
            seen.update(args=args.gradient_checkpointing,
                        model=model.is_activation_checkpointing if renamed else model.is_gradient_checkpointing)

    train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(16)), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
        eval_fraction=0, max_length=32, max_steps=1, batch_size=8, gradient_checkpointing=asked, callbacks=[Spy()],
        progress=False,
    ))
    assert seen == {"args": asked, "model": asked}


def test_checkpointing_switch_uses_the_old_name_where_transformers_has_only_that(monkeypatch):
    """Transformers 5.17 (seen on a GPU machine) has only gradient_checkpointing and refuses the newer name."""
    import dataclasses

    import reward.models
    from trl import RewardConfig

    monkeypatch.setattr(reward.models, "fields", lambda cls: [f for f in dataclasses.fields(cls)
                                                             if f.name != "activation_checkpointing"])
    assert reward.models.checkpointing_argument(False) == {"gradient_checkpointing": False}
    # ...which the installed release still honours (TRL's own default for it is True).
    config = RewardConfig(output_dir="unused", use_cpu=True, **reward.models.checkpointing_argument(False))
    assert config.gradient_checkpointing is False


def test_held_out_pairs_are_whole_prompts_and_a_lone_prompt_is_too_few_to_split():
    # 12 prompts with 1-4 pairs each: a prompt's pairs must all land on one side, never both.
    rows = [{**row, "prompt": [{"role": "user", "content": f"prompt {i % 12}"}]}
            for i, row in enumerate(rule_pairs(30))]
    data = datasets.Dataset.from_list(rows)
    train, held = split_by_prompt(data, 0.2, seed=3)
    prompts = {side: {r["prompt"][0]["content"] for r in part} for side, part in (("train", train), ("held", held))}
    assert not prompts["train"] & prompts["held"]
    assert len(train) + len(held) == 30 and 6 <= len(held) < 6 + 3  # the target, overshot by less than one prompt
    assert split_by_prompt(data, 0.2, seed=3)[1]["prompt"] == held["prompt"]  # the seed fixes the split
    assert sorted(sum(rows_by_prompt(data, seed=3), [])) == list(range(30))
    assert all(len({rows[i]["prompt"][0]["content"] for i in group}) == 1 for group in rows_by_prompt(data, seed=3))
    # Without a prompt column every pair is its own group.
    assert sorted(map(len, rows_by_prompt(data.remove_columns("prompt"), seed=0))) == [1] * 30
    one_prompt = datasets.Dataset.from_list([{**row, "prompt": rows[0]["prompt"]} for row in rows[:5]])
    with pytest.raises(UserError) as e:
        split_by_prompt(one_prompt, 0.1, seed=0)
    assert "its 5 pair(s) share 1 prompt(s), too few to hold whole prompts out" in _one_line_error(e)
    assert "(eval_data (--eval-data))" in str(e.value) and "(eval_fraction (--eval-fraction) set to 0)" in str(e.value)
    with pytest.raises(UserError) as e:  # many prompts, but a share that takes them all
        split_by_prompt(data, 0.99, seed=0)
    assert _one_line_error(e) == ("eval_fraction (--eval-fraction) 0.99 holds out all 30 pairs, leaving none to "
                                  "train on; hold out a smaller share")


def test_an_empty_prompt_is_not_one_prompt_that_every_such_pair_shares():
    """Rows whose prompt is "", None or missing (the dialogue is in chosen and rejected, as in HH's own layout)
    take TRL's implicit prompt, the turns the two sides share; they once all fell in one group, so 30 pairs on
    30 prompts counted as one prompt in the intervals, the tests over prompts and the held-out split."""
    from reward.data import prompt_of_rows

    def dialogue(i: int, answer: str) -> str:
        return f"\n\nHuman: question {i % 10}\n\nAssistant: {answer}"

    hh = [{"prompt": ["", None, " ", "\n"][i % 4], "chosen": dialogue(i, "good"), "rejected": dialogue(i, "bad")}
          for i in range(30)]
    # The same prompts written out, as a string or as a list of messages.
    written = [{"prompt": f"question {i % 10}", "chosen": "good", "rejected": "bad"} for i in range(30)]
    as_messages = [{**row, "prompt": [{"role": "user", "content": row["prompt"]}]} for row in written]
    for rows in (hh, written, as_messages, hh + written):
        prompts = prompt_of_rows(datasets.Dataset.from_list(rows))
        assert len(set(prompts)) == 10
        assert all(prompts[i] == prompts[j] for i in range(len(rows)) for j in range(len(rows)) if i % 10 == j % 10)
    # Sides that share no turn, with an empty prompt: each pair is a prompt of its own.
    alone = [{"prompt": ["", " "][i % 2], "chosen": f"good {i}", "rejected": "bad"} for i in range(30)]
    assert len(set(prompt_of_rows(datasets.Dataset.from_list(alone)))) == 30


def test_the_saved_model_is_the_best_held_out_step_not_the_last(tmp_path, tiny_rm):
    """Held-out accuracy peaks, then falls (the score head is flipped and learning stopped at step 12): the
    later steps rank most pairs the other way, significantly worse, and the directory written must hold the peak."""
    from transformers import TrainerCallback

    class FlipHeadAt(TrainerCallback):
        def __init__(self, step: int):
            self.step = step

        def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
            if state.global_step != self.step:
                return
            with torch.no_grad():
                model.score.weight.neg_()  # every reward changes sign: held-out accuracy becomes 1 - accuracy
            lr_scheduler.base_lrs = [0.0] * len(lr_scheduler.base_lrs)  # and nothing learns it back
            for group in optimizer.param_groups:
                group["lr"] = 0.0

    eval_rows = rule_pairs(32, seed=1)
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(128)), eval_data=datasets.Dataset.from_list(eval_rows),
        base_model=tiny_rm, output_dir=str(tmp_path / "best"), max_length=48, learning_rate=3e-3,
        num_train_epochs=2, batch_size=16, eval_batch_size=32, precision="fp32", callbacks=[FlipHeadAt(12)],
        progress=False,
    ))
    # Evaluations every 2 steps during training; the very last entry is the final one, after restoring the best.
    during = [h for h in result.history if "eval_accuracy" in h][:-1]
    best = max(h["eval_accuracy"] for h in during)
    assert best > 0.5 and during[-1]["eval_accuracy"] < best
    assert result.best_step is not None and result.best_step < 12
    kept = next(e for e in result.evaluations if e["step"] == result.best_step)
    saved = held_out_accuracy(result.output_dir, eval_rows)
    assert saved == kept["accuracy"] == result.metrics["eval_accuracy"] > 0.5
    assert saved >= best - math.sqrt(best * (1 - best) / len(eval_rows))
    info = json.loads((tmp_path / "best" / "prefloop.json").read_text())
    assert info["best_step"] == result.best_step
    assert info["evaluations"] == [{k: v for k, v in e.items() if k != "correct"} for e in result.evaluations]
    assert all(len(e["correct"]) == len(eval_rows) for e in result.evaluations)


def test_the_saved_held_out_accuracy_is_the_one_reward_eval_gives_after_bf16_training(tmp_path, capsys, monkeypatch):
    """Training evaluates under bf16 autocast, where this barely trained encoder's rewards round to exact ties
    (counted wrong); `reward eval` scores in fp32. The summary, prefloop.json and the result give eval's figure,
    with eval's interval, and the training-time one beside it."""
    monkeypatch.setenv("COLUMNS", "200")  # the summary's row on one line
    eval_rows = rule_pairs(64, seed=1, uneven=True)
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(64, uneven=True)), eval_data=datasets.Dataset.from_list(eval_rows),
        base_model=tiny_encoder_reward_model(tmp_path / "encoder"), output_dir=str(tmp_path / "rm"), max_length=48,
        max_steps=2, batch_size=16, learning_rate=1e-6, precision="bf16", progress=True,
    ))
    report = evaluate_reward_model(result.output_dir, eval_rows, n_bootstrap=1000)  # as training computes it
    assert result.metrics["eval_accuracy"] == report["accuracy"]
    in_training = result.metrics["eval_accuracy_in_training"]
    assert in_training == result.evaluations[-1]["accuracy"] != report["accuracy"]  # the rounding this is about
    info = json.loads((tmp_path / "rm" / "prefloop.json").read_text())
    assert info["metrics"]["eval_accuracy"] == report["accuracy"]
    assert info["metrics"]["eval_accuracy_in_training"] == in_training
    assert info["eval_accuracy_ci"] == report["ci"]  # the interval too is reward eval's
    low, high = report["ci"]
    assert f"{report['accuracy']:.3f} [{low:.3f}, {high:.3f}] (kept step 2, {in_training:.3f} in training's bf16)" in (
        " ".join(capsys.readouterr().err.split()))


def test_held_out_pairs_come_in_row_order_at_every_evaluation(tmp_path, tiny_rm, monkeypatch):
    """The step choice compares steps pair by pair, so each evaluation must list the pairs in one order. The
    held-out batches are grouped by length (not in row order); at a learning rate too small to change a ranking,
    every evaluation must give the same list, which a reshuffled order would not. The step choice takes a prompt's
    pairs together, so it gets each pair's prompt in that order (here three pairs a prompt)."""
    import reward.train

    rows = rule_pairs(96, seed=3, uneven=True)
    for i, row in enumerate(rows):
        row["prompt"] = rows[i - i % 3]["prompt"]
    prompts_seen = []

    def keeps_latest(evaluations, alpha=0.05, prompts=None):
        prompts_seen.append(prompts)
        return choose(evaluations, alpha, prompts)

    choose = reward.train.keeps_latest
    monkeypatch.setattr(reward.train, "keeps_latest", keeps_latest)
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(64, uneven=True)), eval_data=datasets.Dataset.from_list(rows),
        base_model=tiny_rm, output_dir=str(tmp_path / "order"), max_length=48, learning_rate=1e-12, max_steps=6,
        evals_per_epoch=2, batch_size=16, eval_batch_size=8, precision="fp32", progress=False,
    ))
    outcomes = [e["correct"] for e in result.evaluations]
    assert len(outcomes) >= 3 and 0 < sum(outcomes[0]) < len(rows)  # a mix, so a reshuffle would show
    assert all(o == outcomes[0] for o in outcomes)
    assert result.best_step == result.evaluations[-1]["step"]  # nothing beats the latest: it is kept
    # And in the rows' own order, which the step choice's grouping by prompt relies on: pair i's outcome is
    # whether the saved model scores row i's chosen side above its rejected side.
    chosen, rejected = RewardScorer(tmp_path / "order").score_pairs(datasets.Dataset.from_list(rows))
    assert outcomes[-1] == (chosen.mean > rejected.mean).tolist()
    by_prompt = [i // 3 for i in range(96)]
    assert len(prompts_seen) == len(outcomes)
    for prompts in [*prompts_seen, result.held_out_prompts]:  # numbered in another order, the same groups
        assert [prompts.index(p) for p in prompts] == [3 * g for g in by_prompt]
    assert json.loads((tmp_path / "order" / "prefloop.json").read_text())["n_eval_prompts"] == 32
    assert "held-out pairs: 96 on 32 prompts (84 truncated)\n" in (tmp_path / "order" / "README.md").read_text()


def test_progress_in_a_log_is_a_line_per_evaluation(tmp_path, tiny_rm, capsys):
    """Outside a terminal (a log file, CI, a cluster job) a run prints one whole line per held-out evaluation, not
    a bar that Rich would draw once, at the end, cut to 80 columns. Its held-out accuracy is the one the step
    choice and the summary use, each pair counting once, even where the held-out pairs split into uneven batches
    (10 pairs in batches of 4, 4 and 2: TRL's mean of per-batch accuracies would weigh the last two pairs double)."""
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(64)), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
        eval_data=datasets.Dataset.from_list(rule_pairs(10, seed=1, uneven=True)), eval_batch_size=4,
        max_length=32, max_steps=8, evals_per_epoch=2, batch_size=8, precision="fp32", progress=True,
    ))
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("reward training")]
    assert [line.split()[3] for line in lines] == [f"{e['step']}/8" for e in result.evaluations]
    # Whole lines: each ends in the held-out accuracy that evaluation measured.
    assert [line.split()[-3:] for line in lines] == [["held-out", "acc", f"{e['accuracy']:.3f}"]
                                                     for e in result.evaluations]
    assert [h["eval_accuracy"] for h in result.history if "eval_accuracy" in h][:-1] == [
        e["accuracy"] for e in result.evaluations]
    low, high = result.eval_accuracy_ci
    assert f"{result.metrics['eval_accuracy']:.3f} [{low:.3f}, {high:.3f}] (kept step" in out.err


def test_progress_on_an_80_column_terminal_keeps_the_step_count_and_times_whole(tmp_path, tiny_rm, capsys,
                                                                                monkeypatch):
    """A terminal as narrow as the usual default: the numbers wrap onto a second line, nothing is cut."""
    import re

    monkeypatch.setenv("FORCE_COLOR", "1")  # Rich draws its live bar as on a terminal
    monkeypatch.setenv("COLUMNS", "80")
    train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(64)), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
        max_length=32, max_steps=8, evals_per_epoch=2, batch_size=8, precision="fp32", progress=True,
    ))
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().out)
    bar = [line.split() for line in shown.splitlines() if line.startswith("reward training")][-1]
    # "reward training", the bar, then the step count, time elapsed and time remaining, whole.
    assert bar[3] == "8/8" and all(re.fullmatch(r"\d+:\d\d:\d\d", time) for time in bar[4:6]), bar
    assert "…" not in shown
    assert "held-out acc" in shown


def test_progress_breaks_a_line_between_two_numbers_never_between_a_name_and_its_number():
    """Rich wraps text at any space, so at some widths "held-out acc 0.611" came out as "held-out acc" at the end
    of one line and "0.611" under it. Drawn at every width from 80 columns (the usual default) to 200, each number
    stays whole and nothing is cut."""
    import re

    from rich.console import Console

    from reward.progress import progress_bar

    entries = ["loss 0.412", "accuracy 0.688", "held-out acc 0.611"]
    for width in range(80, 201):
        console = Console(width=width, color_system=None)
        bar = progress_bar(widest_entry=len("held-out acc") + 7, console=console)
        bar.add_task("reward training", total=204, completed=100, stats=entries)
        with console.capture() as drawn:
            console.print(bar.make_tasks_table(bar.tasks))
        text = drawn.get()
        assert re.findall(r"(?:loss|accuracy|held-out acc) \d\.\d{3}", text) == entries, (width, text)
        assert "100/204" in text and "…" not in text, (width, text)


def test_progress_in_a_log_without_held_out_pairs_is_a_line_every_tenth_of_the_run(tmp_path, tiny_rm, capsys):
    from reward.progress import LogLines

    lines = LogLines(console=None, total_steps=15)  # a line every 2 steps, and the last
    assert [step for step in range(1, 16) if lines.due(step)] == [2, 4, 6, 8, 10, 12, 14, 15]
    assert not lines.due(15)  # the trainer's closing log of the last step does not repeat it
    train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(64)), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
        eval_fraction=0, max_length=32, max_steps=20, batch_size=8, precision="fp32", progress=True,
    ))
    printed = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("reward training")]
    steps = [int(words[3].split("/")[0]) for words in printed]
    assert len(steps) >= 2 and steps == sorted(set(steps)) and steps[-1] == 20
    assert all(words[4] == "loss" for words in printed)


def test_a_step_beats_another_only_by_more_pairs_right_than_chance_explains():
    from reward.train import better_on_same_pairs

    # Ten pairs only the first gets right: one chance in 2^10 = 0.001 that a coin does as well.
    assert better_on_same_pairs([True] * 10, [False] * 10, alpha=0.05)
    # Six against one: P(at least 6 of 7) = 8/128 = 0.0625, not below 0.05, below 0.1.
    first, second = [True] * 6 + [False], [False] * 6 + [True]
    assert not better_on_same_pairs(first, second, alpha=0.05)
    assert better_on_same_pairs(first, second, alpha=0.1)
    assert not better_on_same_pairs(second, first, alpha=0.1)
    # Pairs both get right (or both wrong) say nothing about which is better.
    assert not better_on_same_pairs(first + [True] * 500, second + [True] * 500, alpha=0.05)
    assert better_on_same_pairs(first + [False] * 500, second + [False] * 500, alpha=0.1)
    with pytest.raises(ValueError, match="same pairs"):
        better_on_same_pairs([True], [True, False], alpha=0.05)


def test_pairs_that_share_a_prompt_count_as_one_piece_of_evidence():
    from scipy.stats import binomtest

    from reward.evaluate import sign_flip_p_value
    from reward.train import better_on_same_pairs

    # One pair a prompt: the exact McNemar test, the one-sided binomial on the pairs the two disagree on.
    rng = random.Random(1)
    for _ in range(30):
        wins, losses = rng.randrange(0, 40), rng.randrange(0, 40)
        assert sign_flip_p_value([1] * wins + [-1] * losses + [0] * 7) == pytest.approx(
            binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue if wins + losses else 1.0)
    # Eight more pairs right, all of one prompt: eight pairs alone would be significant (2^-8), one prompt is a
    # coin toss; as the same eight pairs over eight prompts they are significant again.
    first, second = [True] * 8 + [False] * 20, [False] * 28
    assert better_on_same_pairs(first, second, alpha=0.05)
    assert not better_on_same_pairs(first, second, alpha=0.05, prompts=["post"] * 8 + list(range(20)))
    assert better_on_same_pairs(first, second, alpha=0.05, prompts=list(range(28)))
    # Not a count of prompts either (a sign test would be): 12 prompts a pair better, 2 prompts 5 pairs worse.
    # 12 of 14 prompts is significant by count (p = 0.006), but the total, 12 - 10 = 2 pairs, is not.
    prompts = list(range(12)) + ["a"] * 5 + ["b"] * 5
    first, second = [True] * 12 + [False] * 10, [False] * 12 + [True] * 10
    assert sign_flip_p_value([1] * 12 + [-5, -5]) > 0.2
    assert not better_on_same_pairs(first, second, alpha=0.05, prompts=prompts)
    # Exact: [3, 1, 1] has 8 equally likely sign patterns; totals >= 5 are +3+1+1 only (1/8); >= 3 add +3+1-1,
    # +3-1+1 (3/8).
    assert sign_flip_p_value([3, 1, 1]) == pytest.approx(1 / 8)
    assert sign_flip_p_value([3, 1, -1]) == pytest.approx(3 / 8)
    with pytest.raises(ValueError, match="one per pair"):
        better_on_same_pairs([True, False], [False, False], alpha=0.05, prompts=["a"])


def test_the_latest_step_is_kept_unless_an_earlier_one_is_significantly_better():
    from reward.train import keeps_latest

    def kept_step(evaluations):
        kept = None
        for i in range(len(evaluations)):
            if keeps_latest(evaluations[:i + 1]):
                kept = evaluations[i]["step"]
        return kept

    def evaluation(step, correct):
        return {"step": step, "accuracy": sum(correct) / len(correct), "loss": 0.7, "correct": correct}

    rng = random.Random(0)
    # summarize's seed-0 held-out set in bench/results/reward_steps.md: 88 pairs, the first evaluation (still in
    # warm-up) right on 53 by luck, every later one at chance on other pairs. The highest accuracy would keep
    # the first; the latest is kept because no earlier one is better by more than chance.
    lucky = [True] * 53 + [False] * 35
    later = [[i in right for i in range(88)] for right in (set(rng.sample(range(88), 44)) for _ in range(8))]
    evaluations = [evaluation(12 * (i + 1), c) for i, c in enumerate([lucky, *later])]
    assert max(evaluations, key=lambda e: e["accuracy"])["step"] == 12
    assert kept_step(evaluations) == evaluations[-1]["step"]
    # A model that learned, then lost it on the same pairs (from 80 of 100 right to 50): the learned step stays.
    learned = [True] * 80 + [False] * 20
    lost = [True] * 40 + [False] * 40 + [True] * 10 + [False] * 10
    assert kept_step([evaluation(10, learned[:50] + [False] * 50), evaluation(20, learned), evaluation(30, lost)]) == 20
    # A few points lower on the same pairs is noise, and the later step wins.
    slightly_lower = [True] * 77 + [False] * 23
    assert kept_step([evaluation(20, learned), evaluation(30, slightly_lower)]) == 30
    # The same fall from 80 to 50 on ten prompts of ten pairs each, the lost pairs all on three of them
    # (30 pairs): those are three prompts the earlier step suited, not significant evidence that it was better.
    lost_on_three_prompts = [not (i < 30) and learned[i] for i in range(100)]
    by_prompt = [i // 10 for i in range(100)]
    steps = [evaluation(20, learned), evaluation(30, lost_on_three_prompts)]
    assert kept_step(steps) == 20
    assert keeps_latest(steps, prompts=by_prompt)


def test_lora_run_through_the_cli_saves_and_reloads(tmp_path, tiny_rm):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    from typer.testing import CliRunner

    from reward.cli import app

    data = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(rule_pairs(48)).to_json(str(data), lines=True)
    out = tmp_path / "lora"
    run = CliRunner().invoke(app, ["train", "--data", str(data), "--base", tiny_rm, "--out", str(out), "--lora",
                                   "--max-steps", "3", "--batch-size", "8", "--max-length", "48",
                                   "--learning-rate", "1e-2", "--evals-per-epoch", "2", "--lora-r", "4"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 8)  # alpha 2 * r unless given, as in the Python API
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_rm)
    # The score head was trained in full, and LoRA moved the backbone.
    assert not torch.allclose(merged.score.weight, base.score.weight)
    assert not torch.allclose(merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)
    # base + adapter gives the same rewards as the merged directory.
    with_adapter = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
    batch = torch.tensor([[5, 6, 7, 8, 9]])
    assert torch.allclose(with_adapter(batch).logits, merged(batch).logits, atol=1e-5)
    info = json.loads((out / "prefloop.json").read_text())
    assert info["config"]["lora"] is True and info["config"]["evals_per_epoch"] == 2
    # The fingerprint is the file's as given, held-out pairs too, so anyone can check a file against it.
    from reward.data import fingerprint

    assert info["n_eval"] > 0 and info["data_fingerprint"] == fingerprint(load_preferences(str(data)))
    assert f"- data: `{data}` ({info['data_fingerprint']})" in (out / "README.md").read_text()
    # The adapter alone loses the max length and truncation side the merged folder records: scoring points there.
    with pytest.raises(UserError) as e:
        RewardScorer(str(out / "adapter"))
    assert _one_line_error(e) == (f"reward model {out / 'adapter'}: is the LoRA adapter that `prefloop reward train` "
                                  f"saved beside the reward model in {out}, which has it merged in: score that folder")


def test_the_cli_trains_the_python_apis_recipe(monkeypatch):
    """`prefloop reward train --data D` builds exactly `RewardTrainingConfig(data=D)`, and each switch changes
    only its own field: the CLI and the Python API cannot drift apart."""
    from typer.testing import CliRunner

    import reward.train
    from reward.cli import app

    built = []
    monkeypatch.setattr(reward.train, "train_reward_model", built.append)

    def config(*options: str) -> RewardTrainingConfig:
        run = CliRunner().invoke(app, ["train", "--data", "prefs.parquet", *options])
        assert run.exit_code == 0, run.output + repr(run.exception)
        return built.pop()

    assert config() == RewardTrainingConfig(data="prefs.parquet")
    assert config("--no-align-truncation", "--center-rewards", "0", "--lora-r", "8") == RewardTrainingConfig(
        data="prefs.parquet", align_truncation=False, center_rewards_coefficient=None, lora_r=8)
    assert config("--lora-alpha", "4") == RewardTrainingConfig(data="prefs.parquet", lora_alpha=4)


def test_a_bad_setting_is_named_as_the_python_api_and_the_cli_spell_it(tmp_path, tiny_rm):
    """A CLI user reads `--time-budget`, a Python user `time_budget_s`: the error names both. Fields the CLI does
    not offer are named alone."""
    import typer.main

    from reward.cli import app
    from reward.train import PYTHON_ONLY, setting

    # The names errors give must be the CLI's: a flag renamed in reward/cli.py but not in reward/train.py fails here.
    flags = {name for param in typer.main.get_command(app).commands["train"].params for name in param.opts}
    for field in dataclasses.fields(RewardTrainingConfig):
        named = setting(field.name)
        if field.name in PYTHON_ONLY:
            assert named == field.name and "--" + field.name.replace("_", "-") not in flags
        else:
            assert named.removeprefix(f"{field.name} (").removesuffix(")") in flags, named
    (tmp_path / "a-file").write_text("")
    cases = {
        "set num_train_epochs (--epochs) > 0 or max_steps (--max-steps) > 0": dict(num_train_epochs=0),
        "center_rewards_coefficient (--center-rewards) must be 0 or more": dict(center_rewards_coefficient=-1),
        f"output_dir (--out) {tmp_path / 'a-file'}: is a file": dict(output_dir=str(tmp_path / "a-file")),
        "eval_batch_size must be at least 1, got 0": dict(eval_batch_size=0),
        "precision (--precision) must be one of": dict(precision="fp8"),
        "truncation_side (--truncation-side) must be 'left' or 'right', got 'middle'": dict(truncation_side="middle"),
        "max_length (--max-length) must be at least 8 tokens, got 4": dict(max_length=4),
    }
    for expected, overrides in cases.items():
        with pytest.raises(UserError) as e:
            train_reward_model(RewardTrainingConfig(data=datasets.Dataset.from_list(rule_pairs(4)), base_model=tiny_rm,
                                                    progress=False, **overrides))
        assert expected in _one_line_error(e), overrides


def test_a_setting_another_overrules_is_said_not_dropped(tmp_path):
    """--eval-fraction beside --eval-data, a LoRA rank without --lora, or --no-frozen-cache without --trainable-layers
    would otherwise vanish without a word; the warnings come before the model loads (here a missing one)."""
    import warnings

    rows = datasets.Dataset.from_list(rule_pairs(4))
    missing = str(tmp_path / "no-such-model")
    with pytest.warns(UserWarning, match=r"^eval_fraction \(--eval-fraction\) 0.3 is not used: eval_data "
                      r"\(--eval-data\) gives the held-out pairs$"), pytest.raises(UserError):
        train_reward_model(RewardTrainingConfig(data=rows, eval_data=rows, eval_fraction=0.3, base_model=missing))
    with pytest.warns(UserWarning, match=r"^lora_r \(--lora-r\), lora_dropout not used: they set LoRA's adapter, "
                      r"and lora \(--lora\) is off$"), pytest.raises(UserError):
        train_reward_model(RewardTrainingConfig(data=rows, lora_r=8, lora_dropout=0.0, base_model=missing))
    with pytest.warns(UserWarning, match=r"^cache_frozen_layers \(--no-frozen-cache\) is not used: without "
                      r"trainable_layers \(--trainable-layers\) every layer trains and none is frozen$"), \
            pytest.raises(UserError):
        train_reward_model(RewardTrainingConfig(data=rows, cache_frozen_layers=False, base_model=missing))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the defaults, or the same settings where they apply, say nothing
        for quiet in (dict(eval_data=rows), dict(eval_data=rows, eval_fraction=0), dict(lora=True, lora_r=8),
                      dict(cache_frozen_layers=False, trainable_layers=1)):
            with pytest.raises(UserError):
                train_reward_model(RewardTrainingConfig(data=rows, base_model=missing, **quiet))


def test_max_steps_0_means_no_limit(tmp_path):
    """As --max-steps's help says ("when > 0"); passed on as it was, Transformers ran one step."""
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(32)), base_model=tiny_reward_model(tmp_path / "rm"),
        output_dir=str(tmp_path / "all"), eval_fraction=0, max_length=32, batch_size=8, num_train_epochs=1,
        max_steps=0, precision="fp32", progress=False))
    assert max(h["step"] for h in result.history) == 4  # one epoch of 32 pairs, 8 a step; Transformers alone ran 1


def test_evaluations_an_epoch_come_near_the_number_asked(tmp_path, tiny_rm):
    """7 steps an epoch at 4 evaluations an epoch: every 2 steps and the last, not every step (7 // 4 = 1)."""
    result = train_reward_model(RewardTrainingConfig(
        data=rule_pairs(56), eval_data=rule_pairs(8, seed=1), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
        max_length=32, batch_size=8, num_train_epochs=1, evals_per_epoch=4, precision="fp32", progress=False))
    assert [e["step"] for e in result.evaluations] == [2, 4, 6, 7]


def test_the_same_seed_trains_the_same_model(tmp_path):
    from safetensors.torch import load_file

    # A causal LM gets a new score head when loaded for classification: its draw must follow the seed too.
    base = tiny_causal_lm(tmp_path / "lm")

    def weights(name: str, seed: int) -> dict:
        train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rule_pairs(16)), base_model=base, output_dir=str(tmp_path / name),
            eval_fraction=0, max_length=48, max_steps=2, batch_size=8, seed=seed, precision="fp32", progress=False,
        ))
        return load_file(str(tmp_path / name / "model.safetensors"))

    first, again, other = weights("first", 0), weights("again", 0), weights("other", 1)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["score.weight"], other["score.weight"])


def deepspeed_launch(tmp_path: Path) -> list[str]:
    """`accelerate launch` with the shipped DeepSpeed ZeRO-2 file as a user runs it, but on the CPU (this machine
    has no GPU)."""
    import sys

    import yaml

    shipped = Path(__file__).parent.parent / "reward" / "accelerate" / "deepspeed_zero2.yaml"
    (tmp_path / "deepspeed_cpu.yaml").write_text(yaml.safe_dump(yaml.safe_load(shipped.read_text()) | {"use_cpu": True}))
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "deepspeed_cpu.yaml")]


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_two_ranks_stop_on_the_same_step_and_train_packed_pairs_as_two_sequences_would(tmp_path, tiny_rm, launcher):
    """Data-parallel training (`accelerate launch`, here two CPU ranks under torchrun, or under DeepSpeed ZeRO-2
    with the shipped config): the time budget is rank 0's call, so ranks never stop apart (the one that stopped
    would wait on the other forever); packed pairs go through the data-parallel wrapper, so the ranks average
    their gradients as with two sequences a pair."""
    from safetensors.torch import load_file

    data = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list(rule_pairs(128)).to_parquet(str(data))
    script = Path(__file__).with_name("reward_two_ranks.py")
    launch = TORCHRUN if launcher == "torchrun" else deepspeed_launch(tmp_path)

    def train(way: str) -> tuple[dict, dict]:
        stderr = run_ranks([*launch, str(script), str(data), tiny_rm, str(tmp_path / way), way], "training")
        assert "find_unused_parameters=True" not in stderr  # DDP's per-rank note of a wasted graph walk
        info = json.loads((tmp_path / way / "prefloop.json").read_text())
        assert (info["processes"], info["distributed"]) == (2, "MULTI_CPU" if launcher == "torchrun" else "DEEPSPEED")
        # 115 training pairs, 16 per rank and step: 4 steps an epoch, 2 epochs; rank 1's budget would have
        # stopped at 1.
        assert info["n_train"] == 115
        assert info["evaluations"][-1]["step"] == 8
        return info, load_file(str(tmp_path / way / "model.safetensors"))

    shared, shared_weights = train("shared")
    apart, apart_weights = train("apart")
    assert shared["shared_prompt"] and not apart["shared_prompt"]
    assert shared["tokens_per_pair"] < 0.8 * apart["tokens_per_pair"]
    assert all(torch.allclose(shared_weights[k], apart_weights[k], atol=1e-4) for k in shared_weights)
    assert [e["accuracy"] for e in shared["evaluations"]] == [e["accuracy"] for e in apart["evaluations"]]


def test_the_shipped_deepspeed_config_takes_the_accumulation_and_precision_prefloop_is_given(tmp_path, tiny_rm):
    """The DeepSpeed file leaves gradient accumulation to --gradient-accumulation-steps (a number fixed there made
    Transformers refuse any other) and the precision to --precision (its mixed_precision: bf16 turned an fp32 run
    into a bf16 one)."""
    data = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list(rule_pairs(128)).to_parquet(str(data))
    script = Path(__file__).with_name("reward_two_ranks.py")
    run_ranks([*deepspeed_launch(tmp_path), str(script), str(data), tiny_rm, str(tmp_path / "rm"), "accumulate"],
              "training")
    info = json.loads((tmp_path / "rm" / "prefloop.json").read_text())
    assert (info["distributed"], info["config"]["gradient_accumulation_steps"], info["precision"]) == \
        ("DEEPSPEED", 2, "fp32")
    assert [e["step"] for e in info["evaluations"]][-1] == 2


def test_an_fp32_run_is_refused_where_accelerate_launch_asks_for_bf16(tmp_path, tiny_rm, monkeypatch):
    """`accelerate launch` passes its config's mixed_precision in ACCELERATE_MIXED_PRECISION, which Transformers
    applies where neither bf16 nor fp16 is set: an fp32 run would train in bf16 under a record saying fp32."""
    from trl import RewardConfig

    from reward.models import checkpointing_argument

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert RewardConfig(output_dir=str(tmp_path / "t"), use_cpu=True, report_to="none",
                        **checkpointing_argument(False)).mixed_precision == "bf16"
    with pytest.raises(UserError) as e:
        train_reward_model(RewardTrainingConfig(data=datasets.Dataset.from_list(rule_pairs(16)), base_model=tiny_rm,
                                                output_dir=str(tmp_path / "fp32"), precision="fp32", progress=False))
    assert "precision (--precision) is fp32, but accelerate launch asks for bf16" in _one_line_error(e)
    assert not (tmp_path / "fp32").exists()
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(16)), base_model=tiny_rm, output_dir=str(tmp_path / "bf16"),
        eval_fraction=0, max_length=32, max_steps=1, batch_size=8, precision="bf16", progress=False))
    assert json.loads((Path(result.output_dir) / "prefloop.json").read_text())["precision"] == "bf16"


def test_held_out_outcomes_gathered_from_two_ranks_are_in_row_order(tmp_path, tiny_rm):
    """Under two ranks each scores every other held-out batch and rank 0 gathers them; the step choice groups the
    outcomes by prompt, so they must still be in the held-out rows' order: pair i's outcome is whether the saved
    model (the kept step) scores held-out row i's chosen side above its rejected side."""

    rows = datasets.Dataset.from_list(rule_pairs(128, uneven=True))
    rows.to_parquet(str(tmp_path / "pairs.parquet"))
    script = Path(__file__).with_name("reward_two_ranks.py")
    run_ranks([*TORCHRUN, str(script), str(tmp_path / "pairs.parquet"), tiny_rm, str(tmp_path / "rm"), "row-order"],
              "scoring")
    outcomes = json.loads((tmp_path / "rm.outcomes.json").read_text())
    _, held_out = split_by_prompt(rows, fraction=0.1, seed=0)  # the split training made, by its defaults
    chosen, rejected = RewardScorer(tmp_path / "rm").score_pairs(held_out)
    assert len(outcomes) == len(held_out) == 13  # in 7 batches of 2: rank 0 scored 4, rank 1 3 and a repeat
    assert 0 < sum(outcomes) < len(outcomes)  # a mix, so a reordering would show
    assert outcomes == (chosen.mean > rejected.mean).tolist()


def test_ctrl_c_under_a_launcher_stops_every_rank_and_saves(tmp_path, tiny_rm):
    """A terminal's Ctrl-C reaches torchrun (what `accelerate launch` runs for several processes), which passes it
    to the ranks: they stop on the same step, rank 0's, and save. (The launcher itself then exits 1, and kills the
    ranks if they take longer than TORCH_ELASTIC_SHUTDOWN_TIMEOUT: torch's behaviour, in the README.)"""
    import signal
    import subprocess

    data = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list(rule_pairs(128)).to_parquet(str(data))
    script = Path(__file__).with_name("reward_two_ranks.py")
    run = subprocess.Popen(
        [*TORCHRUN, str(script), str(data), tiny_rm, str(tmp_path / "rm"), "until-ctrl-c"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        for line in run.stdout:  # rank 0's line per held-out evaluation
            if line.startswith("reward training"):
                break
        run.send_signal(signal.SIGINT)  # the launcher alone, as a terminal's Ctrl-C: the ranks have their own session
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert (tmp_path / "rm" / "prefloop.json").exists(), stderr[-3000:]
    info = json.loads((tmp_path / "rm" / "prefloop.json").read_text())
    assert info["processes"] == 2
    stopped_at, planned = info["stopped"].removeprefix("interrupted (Ctrl-C) at step ").split(" of ")
    assert int(stopped_at) == info["evaluations"][-1]["step"] < int(planned) // 1000


def test_trainable_layers_freezes_everything_below_the_top_layers(tmp_path, tiny_rm):
    from transformers import AutoModelForSequenceClassification

    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(32)), base_model=tiny_rm, output_dir=str(tmp_path / "top1"),
        eval_fraction=0, max_length=48, max_steps=3, batch_size=8, learning_rate=1e-2, trainable_layers=1,
        precision="fp32", progress=False,
    ))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_rm)
    trained = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    changed = {name for name, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[name])}
    # The tiny model has 2 layers: embeddings and layer 0 are untouched; layer 1, the final norm and the head moved.
    assert not any(name.startswith(("model.embed_tokens", "model.layers.0.")) for name in changed)
    assert {"model.layers.1.self_attn.q_proj.weight", "model.norm.weight", "score.weight"} <= changed
    # Few weights move: the default learning rate is LoRA's, not full fine-tuning's.
    train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(8)), base_model=tiny_rm, output_dir=str(tmp_path / "lr"),
        eval_fraction=0, max_length=48, max_steps=1, batch_size=8, trainable_layers=1, progress=False,
    ))
    assert json.loads((tmp_path / "lr" / "prefloop.json").read_text())["learning_rate"] == 2e-4
    assert ": the last (no held-out pairs)\n" in (tmp_path / "lr" / "README.md").read_text()  # the kept step
    # Every layer trained: the embeddings are still what is below them, so they stay frozen.
    every = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(32)), base_model=tiny_rm, output_dir=str(tmp_path / "top2"),
        eval_fraction=0, max_length=48, max_steps=3, batch_size=8, learning_rate=1e-2, trainable_layers=2,
        precision="fp32", progress=False,
    ))
    trained = AutoModelForSequenceClassification.from_pretrained(every.output_dir)
    assert torch.equal(trained.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_trainable_layers_also_freezes_what_the_lower_layers_share(tmp_path):
    """DeBERTa registers the relative-position table (and its norm) that every block reads after the blocks:
    training it would change what the frozen blocks compute, and the backward pass would run through them all."""
    from transformers import AutoModelForSequenceClassification

    from reward.train import freeze_lower_layers

    path = tiny_encoder_reward_model(tmp_path / "deberta", kind="deberta")
    for trainable_layers, trained_parts in ((1, ("deberta.encoder.layer.1.",)), (0, ())):
        model = AutoModelForSequenceClassification.from_pretrained(path)
        shared = {name for name, _ in model.named_parameters() if name.startswith("deberta.encoder.rel_embeddings")
                  or name.startswith("deberta.encoder.LayerNorm")}
        assert len(shared) == 3
        freeze_lower_layers(model, trainable_layers)
        trained = {name for name, p in model.named_parameters() if p.requires_grad}
        assert trained and trained.isdisjoint(shared)
        assert {name.split(".")[0] for name in trained if not name.startswith("deberta.")} == {"pooler", "classifier"}
        assert all(name.startswith(trained_parts) for name in trained if name.startswith("deberta."))
        top = list(model.deberta.encoder.layer[1].parameters()) if trainable_layers else []
        assert len([name for name in trained if name.startswith("deberta.")]) == len(top)


def test_held_out_margins_count_only_where_training_margins_do(tmp_path, tiny_rm):
    """The held-out loss is the training loss on other pairs: margins in --eval-data do not enter it when the
    training pairs have none (it also steps reduce_lr_on_plateau and goes in the model card)."""
    def held_out_loss(name: str, eval_rows: list[dict]) -> float:
        result = train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list([{k: v for k, v in row.items() if k != "margin"}
                                             for row in rule_pairs(16)]),
            eval_data=datasets.Dataset.from_list(eval_rows), base_model=tiny_rm, output_dir=str(tmp_path / name),
            max_length=48, max_steps=1, batch_size=8, precision="fp32", progress=False))
        return result.metrics["eval_loss"]

    plain = [{k: v for k, v in row.items() if k != "margin"} for row in rule_pairs(8, seed=1)]
    with_margins = [{**row, "margin": 5.0} for row in plain]
    assert held_out_loss("plain", plain) == pytest.approx(held_out_loss("margins", with_margins), abs=1e-6)


def test_training_on_from_a_reward_model_carries_its_pairs_and_warns_of_held_out_ones_it_trained_on(trained, tmp_path):
    """A base that is a reward model has trained on pairs already: those held out again would be remembered (the
    held-out accuracy measures memory), and the new model has trained on them too (`reward eval` says so)."""
    result, eval_rows = trained
    base_pairs = set((Path(result.output_dir) / "training_pairs.txt").read_text().split())
    data = rule_pairs(256, long_prompt=True, uneven=True)  # the base's own training pairs, 10% held out
    with pytest.warns(UserWarning, match=r"^base_model \(--base\) '.*' trained on \d+ of the \d+ held-out pair\(s\) "
                      r"\(its training_pairs.txt\): the held-out accuracy that picks the step will measure memory"):
        again = train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(data[:64]), base_model=result.output_dir, output_dir=str(tmp_path / "on"),
            max_length=48, max_steps=1, batch_size=16, progress=False))
    assert base_pairs <= set((Path(again.output_dir) / "training_pairs.txt").read_text().split())
    report = evaluate_reward_model(again.output_dir, datasets.Dataset.from_list(data[64:96]), n_bootstrap=100)
    assert report["trained_on"] == 32  # pairs the base trained on, which the new model never saw itself


def test_blocks_that_pass_more_than_their_states_on_are_not_cached():
    """T5's blocks hand the next block their position bias beside the states: passed over, the first trained block
    got none and computed another function. They run every time, and the run says so."""
    from transformers import T5Config, T5ForSequenceClassification

    from reward.train import FrozenLayerCache

    torch.manual_seed(0)
    model = T5ForSequenceClassification(T5Config(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1, num_heads=4, num_labels=1,
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 1]])
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        cache = FrozenLayerCache(model, 1)
        with pytest.warns(UserWarning, match=r"^not caching the frozen layers: its T5Block blocks pass more than "):
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        again = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        cache.close()
    assert cache.unusable and torch.equal(plain, again)


def test_a_run_that_fails_stops_its_progress_bar(tmp_path, tiny_rm, monkeypatch):
    """Transformers calls on_train_end only when training returns: the live bar of a run that raised kept its
    thread, standard output redirected through Rich, and the cursor hidden, for a caller that goes on."""
    import sys
    import threading

    from rich.file_proxy import FileProxy
    from transformers import TrainerCallback

    class Breaks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("broken on purpose")

    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # a live bar, as in a terminal
    threads = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="broken on purpose"):
        train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rule_pairs(16)), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
            eval_fraction=0, max_length=48, max_steps=3, batch_size=8, callbacks=[Breaks()],
        ))
    assert not isinstance(sys.stdout, FileProxy) and not isinstance(sys.stderr, FileProxy)
    assert not [t for t in set(threading.enumerate()) - threads if t.is_alive()]


def test_the_frozen_layers_are_not_cached_with_dropout_on_and_the_run_says_so(tmp_path, tiny_rm, capsys):
    """A warning (it was a print to stdout, which a Python caller could neither filter nor catch)."""
    with pytest.warns(UserWarning, match=r"^not caching the 1 frozen layers: with dropout on their output differs at "
                      r"every pass \(cache_frozen_layers=False silences this\)$"):
        train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rule_pairs(8)), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
            eval_fraction=0, max_length=48, max_steps=1, batch_size=8, trainable_layers=1, disable_dropout=False,
            precision="fp32", progress=False,
        ))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("backbone", ["decoder", "bert", "deberta"])
def test_frozen_layers_run_in_the_first_epoch_only_and_train_the_same_model(tmp_path, tiny_rm, backbone):
    """With trainable_layers, the frozen bottom layer's output for each sequence is kept from its first pass:
    epochs 2 and 3 and the later held-out evaluations never run it, and the model is the one trained without
    the cache (batches are reshuffled every epoch, so a sequence comes back with other padding). DeBERTa's
    blocks answer a tuple (states, attention weights), which the cache passes over in the same shape."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    base = tiny_rm if backbone == "decoder" else tiny_encoder_reward_model(tmp_path / backbone, kind=backbone)

    class CountFrozenLayerCalls(TrainerCallback):
        def __init__(self):
            self.per_epoch: list[int] = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            from reward.models import transformer_layers

            # A part of the block, not the block: a cached block is still called, and passes its input through.
            inside = next(transformer_layers(model)[0].children())
            inside.register_forward_hook(lambda *_: self.per_epoch.__setitem__(-1, self.per_epoch[-1] + 1))

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.per_epoch.append(0)

    def train(name: str, cache: bool) -> tuple[dict, CountFrozenLayerCalls, list]:
        calls = CountFrozenLayerCalls()
        result = train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rule_pairs(48)),
            eval_data=datasets.Dataset.from_list(rule_pairs(8, seed=1)),
            base_model=base, output_dir=str(tmp_path / name), max_length=48, num_train_epochs=3, batch_size=8,
            evals_per_epoch=2, learning_rate=1e-2, trainable_layers=1, cache_frozen_layers=cache, precision="fp32",
            progress=False, callbacks=[calls],
        ))
        return load_file(str(tmp_path / name / "model.safetensors")), calls, result.evaluations

    cached, cached_calls, cached_evaluations = train("cached", True)
    plain, plain_calls, plain_evaluations = train("plain", False)
    assert cached_calls.per_epoch[0] > 0 and cached_calls.per_epoch[1:] == [0, 0]
    assert all(n > 0 for n in plain_calls.per_epoch) and len(plain_calls.per_epoch) == 3
    assert cached.keys() == plain.keys()
    assert all(torch.allclose(cached[k], plain[k], atol=1e-5) for k in cached)
    assert [e["accuracy"] for e in cached_evaluations] == [e["accuracy"] for e in plain_evaluations]


@pytest.mark.parametrize("kind", ["sdpa", "eager", "lora"])
def test_a_packed_pair_gives_the_rewards_of_two_sequences(tiny_rm, kind):
    """A decoder reads each pair as one sequence (shared start, chosen ending, rejected ending), with the same
    rewards as the two sequences run apart, through either attention kernel and through LoRA adapters; edge
    cases: endings of different lengths, an ending that extends the other, identical sides, nothing shared (two
    rows in the same batch)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from reward.shared_prompt import SharedPromptCollator, packed_tokens, pair_rewards, shares_prompt

    attention = "eager" if kind == "eager" else "sdpa"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm, attn_implementation=attention).eval()
    assert shares_prompt(model)
    if kind == "lora":  # adapters drawn at random (not LoRA's zero start), so they change the rewards
        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules="all-linear",
                                                 modules_to_save=["score"], init_lora_weights=False)).eval()
    pairs = [([5, 6, 7, 8, 9, 10], [5, 6, 7, 11]), ([5, 6, 7], [5, 6, 7, 12, 13]), ([5, 6, 7], [5, 6, 7]),
             ([14, 6, 7], [15, 6, 7, 8]), ([5, 6, 7, 8, 9, 10, 16, 17], [5, 6, 7, 8, 9, 10, 18])]
    collate = SharedPromptCollator(pad_token_id=0)
    batch = collate([{"chosen_ids": c, "rejected_ids": r, "margin": 0.5} for c, r in pairs])
    # A batch where nothing packs is TRL's own; in a mixed one, [14, 6, 7] and [15, 6, 7, 8] keep two rows.
    alone = collate([{"chosen_ids": [14, 6, 7], "rejected_ids": [15, 6, 7, 8]}])
    assert "pair_mask" not in alone and alone["input_ids"].shape == (2, 4)
    assert batch["input_ids"].shape == (6, 9) and batch["reward_index"].shape == (5, 2)
    assert batch["attention_mask"].sum() == sum(packed_tokens(c, r) for c, r in pairs) == 7 + 6 + 4 + 7 + 9
    with torch.no_grad():
        packed = pair_rewards(model, **batch)
        apart = torch.cat([model(input_ids=torch.tensor([c])).logits[0] for c, _ in pairs]
                          + [model(input_ids=torch.tensor([r])).logits[0] for _, r in pairs])
    assert torch.allclose(packed, apart, atol=1e-5)


def test_a_packed_pair_skips_an_end_token_that_is_the_pad_token(tiny_rm):
    """Where the pad token is also the end-of-sequence token (Llama 2, Mistral), sequence classification reads the
    reward at the last token before it; a packed pair reads the same tokens, also when a whole ending is pad."""
    from transformers import AutoModelForSequenceClassification

    from reward.shared_prompt import SharedPromptCollator, pair_rewards

    model = AutoModelForSequenceClassification.from_pretrained(tiny_rm).eval()
    model.config.pad_token_id = 10
    pairs = [([5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 10]), ([5, 6, 7, 8, 10], [5, 6, 7, 8, 10, 10]),
             ([14, 6, 7, 10], [15, 6, 7, 8, 10])]
    batch = SharedPromptCollator(pad_token_id=10)([{"chosen_ids": c, "rejected_ids": r} for c, r in pairs])
    assert "pair_mask" in batch
    with torch.no_grad():
        packed = pair_rewards(model, **batch)
        apart = torch.cat([model(input_ids=torch.tensor([c])).logits[0] for c, _ in pairs]
                          + [model(input_ids=torch.tensor([r])).logits[0] for _, r in pairs])
        at_the_end = model.score(model.model(input_ids=torch.tensor([pairs[0][0]])).last_hidden_state[0, -1])
    assert torch.allclose(packed, apart, atol=1e-5)
    assert not torch.allclose(at_the_end, apart[0], atol=1e-3)  # the last token itself gives another reward


def test_a_sliding_window_decoder_keeps_two_sequences():
    """The packed mask would stand in for a sliding window, letting tokens see further back than the model does."""
    from transformers import MistralConfig, MistralForSequenceClassification

    from reward.shared_prompt import shares_prompt

    def model(window):
        return MistralForSequenceClassification(MistralConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, num_labels=1, sliding_window=window))

    assert not shares_prompt(model(8))
    assert shares_prompt(model(None))


@pytest.mark.parametrize("unpacked_share", [0, 3, 1])
def test_shared_prompt_trains_the_model_two_sequences_train_and_encoders_keep_two(tmp_path, tiny_rm, unpacked_share):
    """Every pair packed, a third kept as two rows (mixed batches), or none packed (TRL's own batches): the same
    model as two sequences a pair."""
    from safetensors.torch import load_file

    rows = rule_pairs(48, long_prompt=True)
    if unpacked_share:
        # A longer rejected answer, each side cut alone at 64 tokens (align_truncation=False): the rejected side
        # is cut further from the left and the two starts no longer line up.
        for row in rows[::unpacked_share]:
            row["rejected"] = [{"role": "assistant", "content": row["rejected"][0]["content"] + " tree" * 12}]

    def train(name: str, base: str, share: bool):
        result = train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rows),
            eval_data=datasets.Dataset.from_list(rule_pairs(8, seed=1)), base_model=base,
            # Packed runs group batches by packed length, but on 48 pairs the length-grouped sampler's groups are
            # single batches of a random draw: both runs see the same pairs in each step.
            output_dir=str(tmp_path / name), max_length=64, max_steps=6, batch_size=8, learning_rate=1e-2,
            share_prompt=share, align_truncation=False, precision="fp32", progress=False,
        ))
        return result, load_file(str(tmp_path / name / "model.safetensors"))

    shared, shared_weights = train("shared", tiny_rm, True)
    apart, apart_weights = train("apart", tiny_rm, False)
    assert shared.shared_prompt and not apart.shared_prompt
    if unpacked_share == 0:
        assert shared.tokens_per_pair < 0.7 * apart.tokens_per_pair  # the long prompt runs once
    elif unpacked_share == 3:
        assert shared.tokens_per_pair < apart.tokens_per_pair  # two thirds still pack
    else:
        assert shared.tokens_per_pair == apart.tokens_per_pair  # nothing packed
    assert json.loads((tmp_path / "shared" / "prefloop.json").read_text())["shared_prompt"] is True
    assert all(torch.allclose(shared_weights[k], apart_weights[k], atol=1e-4) for k in shared_weights)
    assert [e["accuracy"] for e in shared.evaluations] == [e["accuracy"] for e in apart.evaluations]
    if unpacked_share == 0:
        encoder, _ = train("encoder", tiny_encoder_reward_model(tmp_path / "bert"), True)
        assert not encoder.shared_prompt  # an encoder's prompt sees the ending: it cannot be shared


def test_head_only_training_and_lora_limited_to_the_top_layers(tmp_path, tiny_rm):
    from transformers import AutoModelForSequenceClassification

    data = datasets.Dataset.from_list(rule_pairs(32))
    head = train_reward_model(RewardTrainingConfig(
        data=data, base_model=tiny_rm, output_dir=str(tmp_path / "head"), eval_fraction=0, max_length=48,
        max_steps=3, batch_size=8, learning_rate=1e-2, trainable_layers=0, precision="fp32", progress=False,
    ))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_rm).state_dict()
    trained = AutoModelForSequenceClassification.from_pretrained(head.output_dir).state_dict()
    assert {name for name, p in trained.items() if not torch.equal(p, base[name])} == {"model.norm.weight",
                                                                                        "score.weight"}
    lora = train_reward_model(RewardTrainingConfig(
        data=data, base_model=tiny_rm, output_dir=str(tmp_path / "lora"), eval_fraction=0, max_length=48,
        max_steps=3, batch_size=8, learning_rate=1e-2, lora=True, trainable_layers=1, progress=False,
    ))
    from safetensors.torch import load_file

    adapter = load_file(f"{lora.output_dir}/adapter/adapter_model.safetensors")
    lora_keys = [k for k in adapter if "lora_" in k]
    assert lora_keys and all(".layers.1." in k for k in lora_keys)


def test_loading_warns_in_one_line_about_weights_only_a_broken_checkpoint_explains(tmp_path, tiny_rm, capfd):
    """A checkpoint loaded for reward scoring lacks its new head (or has a head of another shape) and, cut by
    backbone_layers, leaves its upper layers unused: expected, so no warning and none of Transformers' load-report
    tables. A backbone weight missing or of another shape is a broken checkpoint: one warning naming it."""
    import shutil
    import warnings

    from safetensors.torch import load_file, save_file

    from reward.train import _load_model

    def load_warnings(path: str, **kwargs) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _load_model(path, pad_token_id=0, **kwargs)
        return [str(w.message) for w in caught if str(w.message).startswith("model ")]

    for model, head in ((tiny_rm, "score."), (tiny_encoder_reward_model(tmp_path / "encoder"), "classifier.")):
        headless = tmp_path / f"headless-{head}"
        shutil.copytree(model, headless)
        weights = load_file(headless / "model.safetensors")
        save_file({k: v for k, v in weights.items() if not k.startswith(head)}, headless / "model.safetensors")
        assert load_warnings(str(headless)) == [] and load_warnings(str(headless), backbone_layers=1) == []
    # A classifier checkpoint with two labels: its head gives way to a one-output head, quietly (it raised a
    # RuntimeError about ignore_mismatched_sizes).
    two_labels = tmp_path / "two-labels"
    shutil.copytree(tiny_rm, two_labels)
    weights = load_file(f"{tiny_rm}/model.safetensors")
    save_file({**weights, "score.weight": torch.zeros(2, weights["score.weight"].shape[1])},
              two_labels / "model.safetensors")
    assert load_warnings(str(two_labels)) == []
    assert "LOAD REPORT" not in capfd.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(tiny_rm, broken)
    up = weights.pop("model.layers.0.mlp.up_proj.weight")
    save_file(weights, broken / "model.safetensors")
    assert load_warnings(str(broken)) == [f"model {str(broken)!r}: 1 weight(s) newly initialised, missing from "
                                          "the checkpoint (model.layers.0.mlp.up_proj.weight)"]
    save_file({**weights, "model.layers.0.mlp.up_proj.weight": up[:-1]}, broken / "model.safetensors")
    assert load_warnings(str(broken)) == [f"model {str(broken)!r}: 1 weight(s) of another shape in the checkpoint, "
                                          "newly initialised (model.layers.0.mlp.up_proj.weight)"]


def test_backbone_layers_keeps_the_bottom_layers_and_saves_a_shallower_model(tmp_path, tiny_rm):
    from transformers import AutoModelForSequenceClassification

    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(32)), base_model=tiny_rm, output_dir=str(tmp_path / "short"),
        eval_fraction=0, max_length=48, max_steps=2, batch_size=8, backbone_layers=1, trainable_layers=0,
        learning_rate=1e-2, precision="fp32", progress=False,
    ))
    short = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_rm)
    assert short.config.num_hidden_layers == 1 and len(short.model.layers) == 1
    assert "layers kept from the base model: 1; trained: the top 0" in (tmp_path / "short" / "README.md").read_text()
    assert torch.equal(short.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    for bad in ({"backbone_layers": 3}, {"backbone_layers": 0}, {"trainable_layers": 3}, {"trainable_layers": -1}):
        with pytest.raises(UserError, match=r"layers \(--(backbone|trainable)-layers\) must be between") as e:
            train_reward_model(RewardTrainingConfig(data=datasets.Dataset.from_list(rule_pairs(8)), base_model=tiny_rm,
                                                    output_dir=str(tmp_path / "bad"), progress=False, **bad))
        assert tiny_rm not in str(e.value)  # the model's layers, not its resolved path (in site-packages, for an alias)
    with pytest.raises(UserError, match="nothing to adapt"):
        train_reward_model(RewardTrainingConfig(data=datasets.Dataset.from_list(rule_pairs(8)), base_model=tiny_rm,
                                                output_dir=str(tmp_path / "bad"), lora=True, trainable_layers=0,
                                                progress=False))


# -------------------------------------------------------------------------------------- evaluation


def test_metrics_on_a_hand_checked_example():
    rc = [2.0, 1.0, 0.0, 3.0, 0.5]
    rr = [1.0, 2.0, -1.0, 3.0, -3.5]
    # gaps 1, -1, 1, 0, 4 -> correct 1, 0, 1, 0 (a tie is not a win), 1
    report = preference_metrics(
        rc, rr, groups={"source": ["a", "a", "b", "b", "b"]}, margins=[0.5, 0.0, 0.5, 0.0, 1.0],
        chosen_lengths=[10, 5, 10, 5, 7], rejected_lengths=[5, 10, 5, 10, 7], n_bootstrap=500,
    )
    assert report["accuracy"] == pytest.approx(3 / 5)
    lo, hi = report["ci"]
    assert 0 <= lo <= 0.6 <= hi <= 1
    assert report["by"]["source"]["a"]["accuracy"] == 0.5
    assert report["by"]["source"]["b"]["accuracy"] == pytest.approx(2 / 3)
    # chosen longer in rows 0, 2 (both right); shorter in rows 1, 3 (both wrong); row 4 equal.
    # Two pairs, both right: a bootstrap interval would be [1, 1]; Wilson's, by hand (z = 1.96, p = 1, n = 2):
    # centre (1 + z^2/4) / (1 + z^2/2) = 0.6712, half-width z * sqrt(z^2/16) / (1 + z^2/2) = 0.3288.
    chosen_longer = report["length_bias"]["chosen_longer"]
    assert (chosen_longer["n"], chosen_longer["accuracy"], chosen_longer["ci_method"]) == (2, 1.0, "wilson")
    assert chosen_longer["ci"] == pytest.approx([0.3424, 1.0], abs=1e-4)
    assert report["length_bias"]["chosen_shorter"]["accuracy"] == 0.0
    assert report["length_bias"]["equal_length"] == 1
    assert report["length_bias"]["share_chosen_longer"] == 0.5  # 2 of the 4 pairs of unequal length
    # The model picked the longer response in rows 0, 1 and 2; in row 3 its gap is 0: it prefers neither, left out.
    assert report["length_bias"]["model_prefers_longer"] == 1.0 and report["length_bias"]["tied_unequal_length"] == 1
    # A model that ties every pair prefers no length (a tie was counted as preferring the rejected side's: 20% here,
    # where the raters chose the longer in 80%).
    tied = preference_metrics([0.0] * 10, [0.0] * 10, chosen_lengths=[10] * 8 + [5] * 2,
                              rejected_lengths=[5] * 8 + [10] * 2, n_bootstrap=100)["length_bias"]
    assert (tied["share_chosen_longer"], tied["model_prefers_longer"], tied["tied_unequal_length"]) == (0.8, None, 10)
    # Correlation of gaps (1, -1, 1, 0, 4) with margins (0.5, 0, 0.5, 0, 1): computed by hand.
    gaps, m = np.array([1, -1, 1, 0, 4.0]), np.array([0.5, 0, 0.5, 0, 1])
    pearson = ((gaps - gaps.mean()) * (m - m.mean())).sum() / math.sqrt(((gaps - gaps.mean()) ** 2).sum() * ((m - m.mean()) ** 2).sum())
    assert report["margin_correlation"]["pearson"] == pytest.approx(pearson)


def test_calibration_by_hand():
    # sigmoid(ln 3) = 0.75 -> confidence 0.75, right; sigmoid(-ln 3) -> confidence 0.75, wrong
    # (so that bin is right half the time); sigmoid(ln 19) = 0.95 -> confidence 0.95, right.
    cal = calibration(np.array([math.log(3), -math.log(3), math.log(19)]), n_bins=5)
    bins = {round(b["lo"], 2): b for b in cal["bins"] if b["n"]}
    assert bins[0.7]["n"] == 2 and bins[0.7]["accuracy"] == 0.5 and bins[0.7]["confidence"] == pytest.approx(0.75)
    assert bins[0.9]["n"] == 1 and bins[0.9]["accuracy"] == 1.0
    assert cal["ece"] == pytest.approx(2 / 3 * 0.25 + 1 / 3 * 0.05)


def test_the_interval_resamples_whole_prompts():
    """Pairs on one prompt tend to be right or wrong together (here exactly: 40 prompts of 5 pairs): resampled
    one by one they look like 200 independent pairs and the interval comes out too narrow. With each pair's prompt
    given, whole prompts are resampled, and the interval is as wide as that of 40 pairs."""
    rng = np.random.default_rng(0)
    per_prompt = rng.random(40) < 0.6
    correct = np.repeat(per_prompt, 5).astype(float)
    gaps = np.where(correct > 0, 1.0, -1.0)
    prompts = np.repeat(np.arange(40), 5)
    clustered = preference_metrics(gaps, np.zeros(200), prompts=prompts, n_bootstrap=2000)
    as_if_apart = preference_metrics(gaps, np.zeros(200), n_bootstrap=2000)
    alone = preference_metrics(np.where(per_prompt, 1.0, -1.0), np.zeros(40), n_bootstrap=2000)
    width = {name: r["ci"][1] - r["ci"][0] for name, r in
             (("clustered", clustered), ("apart", as_if_apart), ("alone", alone))}
    assert clustered["ci_method"] == "bootstrap over prompts" and as_if_apart["ci_method"] == "bootstrap"
    assert width["clustered"] == pytest.approx(width["alone"], abs=0.03)
    assert width["clustered"] > 1.8 * width["apart"]  # sqrt(5) = 2.2 in theory


def test_the_interval_is_expanded_for_few_prompts_and_holds_the_truth_about_95_percent_of_the_time():
    """A plain percentile interval is too narrow for few prompts: over 2,000 simulated test sets of 15 prompts (1-3
    pairs each) it misses the true accuracy far more often than 5% of the time; widened as Student's t is for the
    number of prompts, it holds it about 95% of the time (seeded: 91.3% and 94.2%; a coverage of 2,000 sets is
    measured to within 1 point)."""
    from reward.evaluate import bootstrap_interval, expanded_tail

    rng = np.random.default_rng(3)
    held = {False: 0, True: 0}
    for i in range(2000):
        prompts = np.repeat(np.arange(15), rng.integers(1, 4, 15))
        correct = (rng.random(len(prompts)) < 0.65).astype(float)
        for expanded in held:
            lo, hi = bootstrap_interval(correct, 400, seed=i, clusters=prompts, expanded=expanded)
            held[expanded] += lo <= 0.65 <= hi
    assert held[False] / 2000 < 0.93
    assert 0.935 <= held[True] / 2000 <= 0.965
    # The ends read: R's resample package (ExpandProbs) gives 0.00855 for 10 units; 1,000 are nearly plain.
    assert expanded_tail(10) == pytest.approx(0.00855, abs=1e-5)
    assert expanded_tail(1000) == pytest.approx(0.0248, abs=1e-4) and expanded_tail(1) == pytest.approx(0.025)
    assert bootstrap_interval(np.array([1.0, 0.0, 1.0]), 100) == (0.0, 1.0)  # 3 units: 100,000 resamples at most
    # Asked for 100 resamples, 10 prompts' ends would be read from under one draw: enough are drawn for 5 beyond.
    ten = (np.arange(10) % 3 > 0).astype(float)
    assert bootstrap_interval(ten, 100) == bootstrap_interval(ten, math.ceil(5 / expanded_tail(10)))


def test_the_interval_is_the_same_whatever_type_names_the_prompts():
    """`reward eval` passes each pair's prompt number as a string, `reward compare` and training's summary as an
    int: the same prompts give the same interval, so one model's accuracy reads the same in all three."""
    from reward.evaluate import bootstrap_interval

    rng = np.random.default_rng(1)
    prompts = rng.integers(0, 40, size=150)  # 40 prompts, 1-9 pairs each
    correct = (rng.random(150) < 0.6).astype(float)
    as_numbers = bootstrap_interval(correct, 2000, clusters=prompts.tolist())
    assert as_numbers == bootstrap_interval(correct, 2000, clusters=[str(p) for p in prompts])
    assert as_numbers != bootstrap_interval(correct, 2000, clusters=(prompts + 1).tolist())  # other prompts differ


def test_a_wilson_interval_holds_its_proportion_exactly():
    """13 of 13 right once came out as [0.772, 0.9999999999999999]: an interval short of the accuracy it is about,
    which the accuracy plot refused (negative error bar) and `prefloop reward eval` died on."""
    from reward.evaluate import wilson_interval

    for n in range(1, 301):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0


def test_where_wilson_stands_in_for_the_bootstrap_it_counts_prompts_not_pairs():
    """8 prompts of 5 pairs, every pair right: counted as 40 pairs Wilson gave [0.912, 1], as if each pair were
    independent evidence; the 8 prompts give [0.676, 1]. On 3 prompts of 4 pairs, 9 of 12 right, likewise."""
    from reward.evaluate import accuracy_entry, wilson_interval

    entry = accuracy_entry(np.ones(40), 1000, 0, clusters=np.repeat(np.arange(8), 5))
    assert entry["ci_method"] == "wilson over prompts"
    assert entry["ci"] == pytest.approx(list(wilson_interval(8, 8)))
    assert entry["ci"][0] == pytest.approx(0.6756, abs=1e-4)
    few = accuracy_entry(np.array([1, 1, 1, 0] * 3, dtype=float), 1000, 0, clusters=np.repeat(np.arange(3), 4))
    assert few["accuracy"] == 0.75 and few["ci"] == pytest.approx(list(wilson_interval(0.75 * 3, 3)))
    # One pair a prompt: the same as counting pairs.
    assert accuracy_entry(np.ones(5), 1000, 0, clusters=np.arange(5))["ci_method"] == "wilson"


def test_a_margin_or_reward_gap_constant_up_to_rounding_has_no_correlation():
    """np.std of 222 margins of 0.1 is about 1e-17, not 0: the report said Pearson nan, Spearman nan, with no
    reason. A gap of r + 0.1 - r varies in its last bits and gave Pearson -0.39 with the margins."""
    from reward.evaluate import preference_metrics

    rng = np.random.default_rng(0)
    same_margin = preference_metrics(rng.normal(size=222) + 0.5, np.zeros(222), margins=[0.1] * 222, n_bootstrap=100)
    assert same_margin["margin_correlation"] is None
    assert same_margin["margin_correlation_missing"] == "every pair has the same margin"
    rejected = rng.normal(size=50)
    same_gap = preference_metrics(rejected + 0.1, rejected, margins=rng.random(50), n_bootstrap=100)
    assert same_gap["margin_correlation"] is None
    assert same_gap["margin_correlation_missing"] == "every pair has the same reward gap"


def test_loading_a_folder_that_is_not_a_model_is_one_line(tmp_path):
    """reward.models' loader raised Transformers' OSError or ValueError for a folder that holds no model (a
    save_to_disk folder of data, named by mistake)."""
    from reward.models import load_sequence_classifier

    datasets.Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}]).save_to_disk(str(tmp_path / "data"))
    with pytest.raises(UserError, match=r"^cannot load model '.*data': "):
        load_sequence_classifier(str(tmp_path / "data"), trained_head=True)


def test_too_few_bootstrap_resamples_are_refused_before_any_scoring():
    """From one resample, "eval" printed 0.533 with a 95% interval of 0.550 - 0.550; 0 resamples crashed."""
    from reward.evaluate import bootstrap_interval, compare_reward_models

    for call in (lambda: evaluate_reward_model("no/such/model", "no-such.jsonl", n_bootstrap=1),
                 lambda: compare_reward_models("no/such/model", "no/such/model", "no-such.jsonl", n_bootstrap=99),
                 lambda: bootstrap_interval(np.ones(20), n_bootstrap=0)):
        with pytest.raises(UserError, match="at least 100 resamples"):
            call()
    # A seed numpy refuses failed after every pair was scored, in numpy's words.
    for call in (lambda: evaluate_reward_model("no/such/model", "no-such.jsonl", seed=-1),
                 lambda: compare_reward_models("no/such/model", "no/such/model", "no-such.jsonl", seed=2**32)):
        with pytest.raises(UserError, match=r"^seed \(--seed\) must be between 0 and 2\*\*32 - 1, got "):
            call()


def test_the_accuracy_plot_draws_an_interval_that_misses_its_accuracy():
    """A percentile interval need not hold the accuracy it is drawn around (a handful of resamples, or a skewed
    spread); the plot still draws."""
    from reward.evaluate import plot_accuracy

    entry = {"n": 40, "accuracy": 0.7, "ci": [0.72, 0.72], "ci_method": "bootstrap"}
    plot_accuracy({**entry, "by": {}}, "/dev/null")


def test_ece_is_reported_beside_what_a_calibrated_model_would_show():
    """ECE is biased upward on few pairs. For a model whose picks are right exactly as often as it claims, the
    ECE falls as pairs are added, and lies within what `ece_if_calibrated` expects at each size."""
    rng = np.random.default_rng(1)
    for n, expected in ((88, 0.1), (2000, 0.02)):
        gaps = rng.normal(0, 1.5, n)
        confidence = 1 / (1 + np.exp(-np.abs(gaps)))
        right = rng.random(n) < confidence
        cal = calibration(np.where(right, np.abs(gaps), -np.abs(gaps)))
        assert cal["ece"] <= cal["ece_if_calibrated"]["p95"]
        assert cal["ece_if_calibrated"]["mean"] == pytest.approx(expected, abs=0.04)
    # A model whose picks are right far less often than claimed stands out at 2000 pairs.
    overconfident = calibration(np.where(rng.random(2000) < 0.6, 4.0, -4.0))
    assert overconfident["ece"] > 5 * overconfident["ece_if_calibrated"]["p95"]
    assert calibration(np.array([]))["ece"] is None
    # Ties claim 50/50 and count half right: a model that ties every pair is not miscalibrated, and as many ties
    # again beside 30 picks add nothing to their miscalibration (the ECE halves: the ties' bin is a gap of 0).
    assert calibration(np.zeros(40))["ece"] == 0.0
    # The calibrated reference counts them alike: drawn right or wrong there, 40 ties put it at 0.066.
    assert calibration(np.zeros(40))["ece_if_calibrated"] == {"mean": 0.0, "p95": 0.0}
    picks = np.where(np.arange(30) < 24, 1.0, -1.0) * np.log(9)  # 80% right at a claimed 90%
    assert calibration(np.concatenate([picks, np.zeros(30)]))["ece"] == pytest.approx(calibration(picks)["ece"] / 2)


def test_evaluate_writes_json_and_plots(trained, tmp_path):
    import matplotlib

    result, _ = trained
    eval_rows = rule_pairs(32, seed=1, long_prompt=True)  # answers of even length: 'good' is longer than 'bad'
    backend = matplotlib.get_backend()
    matplotlib.use("svg")  # a caller's own, as a notebook's inline backend: the plots must not switch it to Agg
    try:
        report = evaluate_reward_model(result.output_dir, datasets.Dataset.from_list(eval_rows), tmp_path / "eval",
                                       n_bootstrap=200)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(backend)
    assert report["accuracy"] >= 0.9
    assert set(report["by"]["source"]) == {"alpha", "beta"}
    assert report["margin_correlation"] is not None
    # The model trained with the data's margins in its loss, which widens its gaps on purpose: said beside the ECE.
    assert json.loads((Path(result.output_dir) / "prefloop.json").read_text())["margin_in_loss"] is True
    assert report["calibration"]["note"].startswith("trained with the raters' margin in the loss")
    def no_nan(name):
        raise AssertionError(f"eval.json holds {name}: not valid JSON")

    saved = json.loads((tmp_path / "eval" / "eval.json").read_text(), parse_constant=no_nan)
    assert saved["accuracy"] == report["accuracy"]
    # Every chosen answer is the longer one: the "chosen shorter" slice is empty, its numbers null.
    assert saved["length_bias"]["chosen_shorter"] == {"n": 0, "accuracy": None, "ci": [None, None], "ci_method": None}
    for png in ("reliability.png", "accuracy.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"



def test_a_category_the_plot_font_cannot_draw_is_labelled_by_its_escapes_not_boxes_and_warnings(tmp_path):
    import warnings

    import matplotlib

    from reward.evaluate import _drawable, _font_characters, plot_accuracy

    entry = {"n": 2, "accuracy": 0.5, "ci": [0.0, 1.0]}
    report = {**entry, "by": {"lang": {"日本語": entry, "français": entry}}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warned once for each glyph its font lacks
        plot_accuracy(report, tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert _drawable("lang=日本語", _font_characters()) == "lang=\\u65e5\\u672c\\u8a9e"
    assert _drawable("français", _font_characters()) == "français"
    # A character the first font lacks and a fallback font of font.family has is drawn, not escaped.
    with matplotlib.rc_context({"font.family": ["DejaVu Sans", "STIXGeneral"]}):
        assert _drawable("x\u1d81", _font_characters()) == "x\u1d81"
    assert _drawable("x\u1d81", _font_characters()) == "x\\u1d81"


def test_a_comparison_rated_several_times_is_also_counted_once(trained, tiny_rm, tmp_path):
    """Summarize-from-feedback has up to 10 raters on one comparison, which then weighs as 10 in the accuracy per
    row. The evaluation also reports the accuracy with each distinct comparison (same prompt, same two responses)
    counted once, as most of its raters labelled it; one rated evenly both ways is left out of it."""
    from typer.testing import CliRunner

    from reward.cli import app

    result, _ = trained
    rows = rule_pairs(6, seed=2)

    def flipped(row: dict) -> dict:
        return {**row, "chosen": row["rejected"], "rejected": row["chosen"]}

    # Comparison 0: three raters one way, one the other. Comparison 1: one each way. Comparisons 2-5: one rater.
    data = [rows[0], rows[0], flipped(rows[0]), rows[0], rows[1], flipped(rows[1]), *rows[2:]]
    chosen, rejected = RewardScorer(result.output_dir).score_pairs(datasets.Dataset.from_list(rows))
    right = (chosen.mean > rejected.mean).tolist()  # whether the model ranks each comparison as `rows` labels it
    report = evaluate_reward_model(result.output_dir, datasets.Dataset.from_list(data), n_bootstrap=200)
    per_row = 3 * right[0] + (not right[0]) + 1 + sum(right[2:])
    assert (report["n"], report["accuracy"]) == (10, pytest.approx(per_row / 10))
    once = report["per_comparison"]
    assert (once["comparisons"], once["rated_evenly"], once["n"]) == (6, 1, 5)
    assert once["accuracy"] == pytest.approx((right[0] + sum(right[2:])) / 5)
    assert report["accuracy"] != once["accuracy"]  # 0.8 against 1.0 for a model that ranks all six as labelled
    # Every comparison rated once: nothing to add.
    assert "per_comparison" not in evaluate_reward_model(result.output_dir, datasets.Dataset.from_list(rows),
                                                         n_bootstrap=200)
    datasets.Dataset.from_list(data).to_json(str(tmp_path / "repeated.jsonl"), lines=True)
    run = CliRunner().invoke(app, ["eval", "--model", result.output_dir, "--data", str(tmp_path / "repeated.jsonl"),
                                   "--out", str(tmp_path / "eval"), "--n-bootstrap", "100"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    assert "each comparison once" in run.output and "6 distinct comparisons" in " ".join(run.output.split())
    assert "1 rated evenly both ways left out" in " ".join(run.output.split())
    # `reward compare` likewise: the untrained base as the baseline, each comparison once.
    compared = compare_reward_models(result.output_dir, tiny_rm, datasets.Dataset.from_list(data), n_bootstrap=200)
    base_chosen, base_rejected = RewardScorer(tiny_rm).score_pairs(datasets.Dataset.from_list(rows))
    base_right = (base_chosen.mean > base_rejected.mean).tolist()
    once = compared["per_comparison"]
    assert (once["comparisons"], once["rated_evenly"], once["n"]) == (6, 1, 5)
    assert once["model"]["accuracy"] == pytest.approx((right[0] + sum(right[2:])) / 5)
    assert once["baseline"]["accuracy"] == pytest.approx((base_right[0] + sum(base_right[2:])) / 5)
    run = CliRunner().invoke(app, ["compare", "--model", result.output_dir, "--baseline", tiny_rm, "--data",
                                   str(tmp_path / "repeated.jsonl"), "--n-bootstrap", "100"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    assert "each comparison once (6 distinct among 10 pairs" in " ".join(run.output.split())


def test_a_paired_comparison_counts_pairs_one_model_gets_right_and_tests_over_prompts():
    from scipy.stats import binomtest

    from reward.evaluate import accuracy_entry, paired_comparison, wilson_interval

    # 40 pairs, one a prompt: 10 only the first model gets right, 2 only the second, 20 both, 8 neither.
    first = [True] * 10 + [False] * 2 + [True] * 20 + [False] * 8
    second = [False] * 10 + [True] * 2 + [True] * 20 + [False] * 8
    report = paired_comparison(first, second, n_bootstrap=500)
    assert report["first"]["accuracy"] == 0.75 and report["second"]["accuracy"] == 0.55
    assert report["difference"] == pytest.approx(0.2)
    assert (report["only_first_right"], report["only_second_right"], report["prompts"]) == (10, 2, 40)
    # Two-sided exact McNemar: twice P(at least 10 of 12 fair coins) = 2 * 79 / 4096.
    assert report["p_value"] == pytest.approx(2 * 79 / 4096)
    assert report["p_value"] == pytest.approx(binomtest(10, 12, 0.5).pvalue)
    low, high = report["ci"]
    assert 0 < low < 0.2 < high and report["ci_method"] == "bootstrap"
    # The same pairs with the ten the first model alone gets right all on one prompt: one prompt's luck. Three
    # prompts tell the two apart, too few for a bootstrap interval (see the next case): the test alone decides.
    prompts = [0] * 10 + list(range(1, 31))
    clustered = paired_comparison(first, second, prompts=prompts, n_bootstrap=500)
    assert clustered["difference"] == report["difference"] and clustered["prompts"] == 31
    assert clustered["p_value"] > 0.5 and clustered["ci"] == [None, None]
    # Twenty pairs only the first gets right, two a prompt on ten prompts, against two on two prompts: evidence
    # again. Exactly: P(total >= 18) = (1 + 10 / 4) / 1024 over the ten prompts' and two prompts' sign flips.
    first, second = [True] * 20 + [False] * 2 + [True] * 18, [False] * 20 + [True] * 2 + [True] * 18
    spread = paired_comparison(first, second, prompts=[i // 2 for i in range(20)] + list(range(10, 30)),
                               n_bootstrap=500)
    assert spread["prompts"] == 30 and spread["p_value"] == pytest.approx(2 * 3.5 / 1024)
    assert spread["ci_method"] == "bootstrap over prompts" and 0 < spread["ci"][0] < 0.45 < spread["ci"][1]
    # Four pairs of 100 told apart, all one way: a percentile bootstrap would give an interval above 0 (it rarely
    # draws none of the four) where the exact test says p = 2 / 16; so no interval.
    few = paired_comparison([True] * 4 + [False] * 96, [False] * 100, n_bootstrap=500)
    assert few["p_value"] == pytest.approx(0.125) and few["ci"] == [None, None]
    assert few["ci_missing"] == "under 10 prompts tell them apart"
    # A model against itself: no difference, no pair told apart, nothing to resample.
    same = paired_comparison(first, first)
    assert (same["difference"], same["p_value"], same["ci"]) == (0.0, 1.0, [None, None])
    # Every pair right against every pair wrong: each resample's difference is 1, so a bootstrap interval would be
    # [1, 1]; there is none, and p = 2 / 2^30 decides.
    sweep = paired_comparison([True] * 30, [False] * 30)
    assert sweep["ci"] == [None, None] and sweep["ci_missing"] == "every pair goes the same way"
    assert sweep["p_value"] == pytest.approx(2 / 2 ** 30) and report["ci_missing"] is None
    # 20 prompts, on each one pair the first alone gets right and one both get: every resample's difference is 0.5.
    alike = paired_comparison([True, True] * 20, [False, True] * 20, prompts=np.repeat(np.arange(20), 2))
    assert alike["ci"] == [None, None] and alike["ci_missing"] == "every prompt's pairs differ alike"
    # And an accuracy whose prompts each have the same share right: Wilson over them, not a bootstrap of width 0.
    half = accuracy_entry(np.array([1.0, 0.0] * 20), 1000, 0, clusters=np.repeat(np.arange(20), 2))
    assert half["ci_method"] == "wilson over prompts" and half["ci"] == pytest.approx(list(wilson_interval(10, 20)))


def test_reward_compare_tells_the_trained_model_from_the_untrained_one(trained, tiny_rm, tmp_path):
    """`prefloop reward compare`, as a user runs it: a trained model against its untrained base on 32 held-out
    pairs, pair by pair; the same numbers as each model's own evaluation."""
    from typer.testing import CliRunner

    from reward.cli import app

    result, eval_rows = trained
    data = tmp_path / "heldout.jsonl"
    datasets.Dataset.from_list(eval_rows).to_json(str(data), lines=True)
    run = CliRunner().invoke(app, ["compare", "--model", result.output_dir, "--baseline", tiny_rm, "--data", str(data),
                                   "--out", str(tmp_path / "compare.json"), "--n-bootstrap", "300"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    report = json.loads((tmp_path / "compare.json").read_text())
    alone = {name: evaluate_reward_model(path, str(data), n_bootstrap=300)
             for name, path in (("model", result.output_dir), ("baseline", tiny_rm))}
    for name in ("model", "baseline"):  # the interval too (the baseline's a bootstrap over the same 32 prompts)
        assert (report[name]["accuracy"], report[name]["ci"]) == (alone[name]["accuracy"], alone[name]["ci"])
    assert alone["baseline"]["ci_method"] == "bootstrap"
    assert report["difference"] == pytest.approx(alone["model"]["accuracy"] - alone["baseline"]["accuracy"])
    assert report["difference"] > 0.2
    assert report["ci"][0] > 0 and report["p_value"] < 0.01
    assert report["models"]["model"] == [str(Path(result.output_dir).resolve())]
    assert "difference" in run.output and "two-sided p =" in run.output
    # Compared with itself, a model is refused: it would differ on nothing.
    itself = CliRunner().invoke(app, ["compare", "--model", tiny_rm, "--baseline", tiny_rm, "--data", str(data)])
    assert isinstance(itself.exception, UserError)
    assert str(itself.exception).startswith("model and baseline (--model, --baseline) are the same: ")
    again = CliRunner().invoke(app, ["compare", "--model", result.output_dir, "--baseline", tiny_rm, "--data",
                                     str(data), "--out", str(tmp_path / "compare.json"), "--n-bootstrap", "300"])
    assert again.exit_code == 0, again.output  # an earlier comparison's file is replaced
    # A name ending in '/' means a folder: Path would drop the slash and write a file of that name.
    slashed = CliRunner().invoke(app, ["compare", "--model", result.output_dir, "--baseline", tiny_rm, "--data",
                                       str(data), "--out", f"{tmp_path / 'runs'}/"])
    assert str(slashed.exception) == f"out (--out) {tmp_path / 'runs'}/: ends in '/', a folder; name a file"
    assert not (tmp_path / "runs").exists()
    into_a_folder = CliRunner().invoke(app, ["compare", "--model", result.output_dir, "--baseline", tiny_rm,
                                             "--data", str(data), "--out", str(tmp_path)])
    assert isinstance(into_a_folder.exception, UserError) and str(tmp_path) in str(into_a_folder.exception)
    # Under a file, however deep: refused before scoring, for compare and for eval alike.
    (tmp_path / "notes.txt").write_text("x")
    for command, out in (("compare", tmp_path / "notes.txt" / "runs" / "c.json"), ("eval", tmp_path / "notes.txt" / "ev")):
        models = ["--model", result.output_dir] + (["--baseline", tiny_rm] if command == "compare" else [])
        under_a_file = CliRunner().invoke(app, [command, *models, "--data", str(data), "--out", str(out)])
        assert isinstance(under_a_file.exception, UserError), under_a_file.output
        # Named as Python's argument and the flag, the same in both
        assert str(under_a_file.exception) == f"out (--out) {out}: {tmp_path / 'notes.txt'} is a file"
    missing = CliRunner().invoke(app, ["compare", "--model", tiny_rm, "--baseline", str(tmp_path / "nope"),
                                       "--data", str(data)])
    assert isinstance(missing.exception, UserError)
    assert str(missing.exception) == f"baseline: model '{tmp_path / 'nope'}': no such directory"


def test_what_scoring_reads_otherwise_than_trl_is_said(trained, tiny_rm, tmp_path):
    """Where prefloop reads data otherwise than TRL does, it says so: TRL's chat-template columns are not used, and
    a model trained elsewhere (no prefloop.json) is scored on plain-text pairs laid out as chat turns, which is not
    the prompt + response + EOS that TRL trains such a model on."""
    import warnings as warnings_module

    result, _ = trained
    plain = [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}, {"prompt": "Count.", "chosen": "1 2 3",
                                                                          "rejected": "3 1"}]
    with pytest.warns(UserWarning, match=r"no prefloop.json \(trained elsewhere\): plain-text pairs are read as a "
                                         r"user turn and an assistant turn"):
        evaluate_reward_model(tiny_rm, datasets.Dataset.from_list(plain), n_bootstrap=100)
    with warnings_module.catch_warnings():
        warnings_module.simplefilter("error")  # prefloop's own model trained on these layouts: nothing to say
        evaluate_reward_model(result.output_dir, datasets.Dataset.from_list(plain), n_bootstrap=100)
    with_kwargs = [{**row, "chat_template_kwargs": {"persona": "terse"}} for row in rule_pairs(4)]
    with pytest.warns(UserWarning, match=r"^data: column\(s\) chat_template_kwargs not used: TRL passes them to the "
                                         "chat template, prefloop renders each conversation with the template alone"):
        evaluate_reward_model(result.output_dir, datasets.Dataset.from_list(with_kwargs), n_bootstrap=100)
    single = tmp_path / "single.jsonl"
    single.write_text(json.dumps({"messages": rule_pairs(1)[0]["prompt"], "tools": [{"name": "search"}]}) + "\n")
    with pytest.warns(UserWarning, match=r"column\(s\) tools not used"):
        score_file(result.output_dir, single, tmp_path / "scored.jsonl")


def _card_recipe_reward(model_dir: str, conversation: list[dict]) -> float:
    """Run the model card's plain-Transformers recipe (its second Python block) as a user would paste it, on the
    model in `model_dir` (the card names the folder the model was trained into)."""
    import re

    blocks = re.findall(r"```python\n(.*?)```", (Path(model_dir) / "README.md").read_text(), re.S)
    trained_into = json.loads((Path(model_dir) / "prefloop.json").read_text())["output_dir"]
    namespace = {"conversation": conversation}
    exec(blocks[1].replace(f'model="{trained_into}"', f'model="{model_dir}"'), namespace)
    return namespace["reward"]


def test_the_model_cards_transformers_recipe_gives_prefloops_reward(trained, tmp_path):
    """The model card's recipe in plain Transformers (a pipeline, the chat template or the plain layout, the saved
    tokenizer cutting an over-long conversation as training did) gives the reward RewardScorer gives, also with a
    tokenizer that adds a BOS of its own to a template that writes one."""
    import shutil

    from tokenizers import processors
    from transformers import AutoTokenizer

    result, eval_rows = trained
    long = eval_rows[0]["prompt"] + eval_rows[0]["chosen"]  # over the 48 tokens the model trained with
    assert _card_recipe_reward(result.output_dir, long) == pytest.approx(
        RewardScorer(result.output_dir).score([long]).mean[0], abs=1e-5)
    card = (Path(result.output_dir) / "README.md").read_text()
    assert "eval_num_tokens (training tokens seen" in card and "cuts from the left to 48 tokens" in card

    with_bos = Path(shutil.copytree(result.output_dir, tmp_path / "with-bos"))
    tokenizer = AutoTokenizer.from_pretrained(with_bos)
    tokenizer.backend_tokenizer.post_processor = processors.Sequence([
        tokenizer.backend_tokenizer.post_processor,
        processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", tokenizer.bos_token_id)])])
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    tokenizer.save_pretrained(with_bos)
    short = eval_rows[0]["chosen"]
    expected = RewardScorer(str(with_bos)).score([short]).mean[0]
    assert _card_recipe_reward(str(with_bos), short) == pytest.approx(expected, abs=1e-5)
    from transformers import pipeline

    twice = pipeline("text-classification", model=str(with_bos), function_to_apply="none")  # the BOS doubled
    assert twice(tokenizer.apply_chat_template(short, tokenize=False))[0]["score"] != pytest.approx(expected, abs=1e-3)

    encoder = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(32)), base_model=tiny_encoder_reward_model(tmp_path / "bert"),
        output_dir=str(tmp_path / "encoder-rm"), max_length=48, max_steps=2, batch_size=16, progress=False))
    hello = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]  # the card's text
    assert _card_recipe_reward(encoder.output_dir, hello) == pytest.approx(
        RewardScorer(encoder.output_dir).score([hello]).mean[0], abs=1e-5)


def test_eval_compare_and_score_say_how_far_they_cut_and_take_another_max_length(trained, tiny_rm, tmp_path,
                                                                                 monkeypatch):
    """Scoring cuts a conversation to the length its model trained with (prefloop.json), or to the model's own limit
    where nothing says; evaluations say how many pairs were cut and to what, and --max-length sets another."""
    from typer.testing import CliRunner

    from reward.cli import app

    result, eval_rows = trained  # every held-out pair is longer than the 48 tokens the model trained with
    held_out = datasets.Dataset.from_list(eval_rows)
    report = evaluate_reward_model(result.output_dir, held_out, n_bootstrap=100)
    assert report["truncated"] == {"pairs": 32, "limits": [{"max_length": 48, "truncation_side": "left",
                                                            "from": "prefloop.json"}]}
    whole = evaluate_reward_model(result.output_dir, held_out, n_bootstrap=100, max_length=1000)
    assert whole["truncated"] == {"pairs": 0, "limits": [{"max_length": 1000, "truncation_side": "left",
                                                          "from": "max_length given"}]}
    chosen, rejected = RewardScorer(result.output_dir, max_length=1000).score_pairs(held_out)
    assert whole["accuracy"] == pytest.approx(float(np.mean(chosen.mean > rejected.mean)))
    assert not chosen.truncated.any() and RewardScorer(result.output_dir).score_pairs(held_out)[0].truncated.all()
    base = evaluate_reward_model(tiny_rm, held_out, n_bootstrap=100)  # no prefloop.json: the model's own limit
    assert base["truncated"] == {"pairs": 0, "limits": [{"max_length": 512, "truncation_side": "left",
                                                         "from": "the model's own limit"}]}
    # A pair counts as cut when either side is, by any member: here only the rejected side is long, and only the
    # member that trained at 48 tokens cuts it.
    short = [{"prompt": f"hi {i}", "chosen": "good", "rejected": "bad"} for i in range(4)]
    short[3]["rejected"] = " ".join(["river house"] * 40)  # 80 words: over 48 tokens, under 512
    one_side = datasets.Dataset.from_list(short)
    sides = RewardScorer([result.output_dir, tiny_rm]).score_pairs(one_side)
    assert [side.truncated.tolist() for side in sides] == [[False] * 4, [False] * 3 + [True]]
    ensemble = evaluate_reward_model([result.output_dir, tiny_rm], one_side, n_bootstrap=100)
    assert ensemble["truncated"]["pairs"] == 1
    assert [limit["max_length"] for limit in ensemble["truncated"]["limits"]] == [48, 512]
    long_and_short = [eval_rows[0]["prompt"] + eval_rows[0]["chosen"], [{"role": "user", "content": "hi"}]]
    assert RewardScorer(result.output_dir).score(long_and_short).truncated.tolist() == [True, False]
    # A model trained with no max_length (Python only) says so, rather than that nothing records its length.
    unlimited = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(8)), base_model=tiny_rm, output_dir=str(tmp_path / "unlimited"),
        eval_fraction=0, max_length=None, max_steps=1, batch_size=8, progress=False))
    assert RewardScorer(unlimited.output_dir).length_limits() == [
        {"max_length": 512, "truncation_side": "left", "from": "trained with no limit"}]
    # A longer max_length than the model has positions for (BERT's learnt table) is capped there, and said so.
    bert = tiny_encoder_reward_model(tmp_path / "bert", max_position_embeddings=64)
    with pytest.warns(UserWarning, match=r"^max_length \(--max-length\) 4096: reward model .* takes at most 64 "
                      r"positions; its conversations are cut to 64 tokens$"):
        capped = RewardScorer(bert, max_length=4096)
    assert capped.length_limits() == [{"max_length": 64, "truncation_side": "left", "from": "its position limit"}]
    with pytest.raises(UserError, match=r"^max_length: set it when the RewardScorer is made"):
        evaluate_reward_model(RewardScorer(tiny_rm), held_out, max_length=64)
    with pytest.raises(UserError, match=r"^batch_size: set it when the RewardScorer is made"):
        compare_reward_models(RewardScorer(tiny_rm), tiny_rm, held_out, batch_size=4)
    # The loaded one second: refused before the first scores.
    def never(*args, **kwargs):
        raise AssertionError("scored before the settings were checked")

    monkeypatch.setattr(RewardScorer, "score_pairs", never)
    with pytest.raises(UserError, match=r"^batch_size: set it when the RewardScorer is made"):
        compare_reward_models(tiny_rm, RewardScorer(tiny_rm), held_out, batch_size=4)
    monkeypatch.undo()

    data = tmp_path / "held_out.jsonl"
    held_out.to_json(str(data), lines=True)
    run = CliRunner().invoke(app, ["eval", "--model", result.output_dir, "--data", str(data), "--out",
                                   str(tmp_path / "eval"), "--n-bootstrap", "100", "--max-length", "1000"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    assert ("truncated: 0 of 32 pairs; limit 1000 tokens, cut from the left (as --max-length says)"
            in " ".join(run.output.split()))
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["truncated"] == whole["truncated"]
    # --seed makes the random draws the API's seed makes (calibration's draws of a calibrated model's error too).
    run = CliRunner().invoke(app, ["eval", "--model", result.output_dir, "--data", str(data), "--out",
                                   str(tmp_path / "eval"), "--n-bootstrap", "100", "--seed", "7"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    seeded = evaluate_reward_model(result.output_dir, held_out, n_bootstrap=100, seed=7)["calibration"]
    written = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert written["calibration"]["ece_if_calibrated"] == seeded["ece_if_calibrated"] \
        != report["calibration"]["ece_if_calibrated"]
    assert (written["seed"], written["n_bootstrap"]) == (7, 100)  # what reproduces the report's draws
    run = CliRunner().invoke(app, ["compare", "--model", result.output_dir, "--baseline", tiny_rm, "--data",
                                   str(data), "--n-bootstrap", "100", "--seed", "7"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    assert ("model: truncated: 32 of 32 pairs; limit 48 tokens, cut from the left (the length it trained with)"
            in " ".join(run.output.split()))
    # --out names an earlier comparison or a new file: not the data, nor another file (a model's config.json).
    for other in (data, Path(result.output_dir) / "config.json"):
        before = other.read_bytes()
        run = CliRunner().invoke(app, ["compare", "--model", result.output_dir, "--baseline", tiny_rm, "--data",
                                       str(data), "--out", str(other)])
        assert "exists and is not an earlier comparison" in str(run.exception)
        assert other.read_bytes() == before
    run = CliRunner().invoke(app, ["score", "--model", result.output_dir, "--data", str(data), "--out",
                                   str(tmp_path / "scored.jsonl"), "--max-length", "1000"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    scored = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert np.allclose([r["reward_chosen"] for r in scored], chosen.mean, atol=1e-6)


def test_reward_eval_prints_paths_and_categories_with_brackets_as_given(trained, tmp_path, monkeypatch):
    """Rich reads "[v2]" as a style and drops it; a user's folder and category names are printed whole."""
    from typer.testing import CliRunner

    from reward.cli import app

    result, eval_rows = trained
    folder = tmp_path / "runs [v2]"
    folder.mkdir()
    data = folder / "heldout.jsonl"
    datasets.Dataset.from_list([{**row, "domain": ["[red]", "[b]law"][i % 2]} for i, row in enumerate(eval_rows)]
                               ).to_json(str(data), lines=True)
    run = CliRunner().invoke(app, ["eval", "--model", result.output_dir, "--data", str(data),
                                   "--out", str(folder / "eval"), "--n-bootstrap", "100"])
    assert run.exit_code == 0, run.output + repr(run.exception)

    def shown(text: str) -> bool:  # the table's title wraps at its width: compare without the line breaks
        return "".join(text.split()) in "".join(run.output.split())

    assert shown(f"on {data}") and shown(f"wrote {folder / 'eval' / 'eval.json'}")
    assert shown("domain = [red]") and shown("domain = [b]law")
    # Each row names where its interval comes from; the length-bias shares are printed, not only written.
    report = json.loads((folder / "eval" / "eval.json").read_text())
    assert shown("interval from") and shown({"bootstrap": "bootstrap over pairs"}.get(report["ci_method"],
                                                                                       report["ci_method"]))
    bias = report["length_bias"]
    assert bias["chosen_longer"]["n"] and bias["chosen_shorter"]["n"]
    assert shown(f"of the {bias['chosen_longer']['n'] + bias['chosen_shorter']['n']} pairs whose responses differ in "
                 f"length") and shown(f"the raters chose the longer in {bias['share_chosen_longer']:.0%}, the model "
                                      f"prefers it in {bias['model_prefers_longer']:.0%}")
    # A Hub id (here one in the Hugging Face cache) has no folder of its own to write beside: asked for --out before
    # anything loads; a file is named as one.
    from huggingface_hub import constants

    _cache_as_hub_model(result.output_dir, tmp_path / "hub", "acme/rm")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    hub = CliRunner().invoke(app, ["eval", "--model", "acme/rm", "--data", str(data)])
    assert str(hub.exception) == "--out: acme/rm is not a local folder to write the evaluation beside; name one"
    assert not (tmp_path / "acme").exists()
    a_file = CliRunner().invoke(app, ["eval", "--model", str(data), "--data", str(data)])
    assert str(a_file.exception) == f"model '{data}': is a file; name the model's folder"


def test_sources_are_broken_down_up_to_fifty():
    from reward.evaluate import category_columns

    def sources(n_sources: int, n_pairs: int) -> datasets.Dataset:
        return datasets.Dataset.from_list([{"source": f"s{i % n_sources}"} for i in range(n_pairs)])

    assert category_columns(sources(1, 10))[0]["source"] == ["s0"] * 10  # one source: still shown
    assert len(set(category_columns(sources(50, 100))[0]["source"])) == 50
    used, skipped = category_columns(sources(51, 1000))
    assert "source" not in used
    assert skipped["source"] == "51 distinct values in 1000 pairs (source is broken down up to 50)"
    # Its own rule, not another column's half-the-rows cap (which said "2 to 30" of 60 sources in 60 pairs).
    assert len(set(category_columns(sources(40, 40))[0]["source"])) == 40
    assert category_columns(sources(60, 60))[1]["source"] == ("60 distinct values in 60 pairs (source is broken "
                                                              "down up to 50)")


# ----------------------------------------------------------------------------------------- scoring


def test_scoring_equals_what_the_trainer_saw(trained):
    """The trainer's own held-out numbers (one eval batch of 32) equal the scorer's on the same pairs."""
    result, eval_rows = trained
    # fp32 on both sides (a GPU would otherwise score in bf16, about 1e-2 off).
    chosen, rejected = RewardScorer(result.output_dir, device="cpu").score_pairs(datasets.Dataset.from_list(eval_rows))
    gap = chosen.mean - rejected.mean
    assert result.metrics["eval_margin"] == pytest.approx(gap.mean(), abs=1e-4)
    assert result.metrics["eval_accuracy"] == pytest.approx((gap > 0).mean())
    assert result.metrics["eval_mean_reward"] == pytest.approx(np.concatenate([chosen.mean, rejected.mean]).mean(), abs=1e-4)
    # The same pairs as a list of dicts or a pandas DataFrame: what evaluate_reward_model takes, score_pairs takes.
    import pandas as pd

    scorer = RewardScorer(result.output_dir, device="cpu")
    for same in (eval_rows, pd.DataFrame(eval_rows)):
        assert np.array_equal(scorer.score_pairs(same)[0].mean, chosen.mean)


@pytest.mark.parametrize("batch_size", [16, 2])
def test_scoring_pairs_packs_them_with_the_rewards_of_each_conversation_alone(tiny_rm, tmp_path, batch_size):
    """A decoder scores each pair as one sequence, its shared start once, as it trained; the rewards are those of
    each conversation scored alone, in batches of several packed pairs (16 sequences) or of one (2). Some pairs
    here are truncated on both sides and keep two sequences. An encoder scores the two sides apart."""
    from reward.shared_prompt import packs

    rows = rule_pairs(12, long_prompt=True)
    for row in rows[::3]:  # a longer rejected answer is cut further from the left: the starts no longer line up
        row["rejected"] = [{"role": "assistant", "content": row["rejected"][0]["content"] + " tree" * 12}]
    scorer = RewardScorer(tiny_rm, device="cpu", batch_size=batch_size, max_length=64)
    member = scorer.members[0]
    packing = [packs(member.encoder.encode(r["prompt"] + r["chosen"])[0],
                     member.encoder.encode(r["prompt"] + r["rejected"])[0]) for r in rows]
    assert member.shares_prompt and 0 < sum(packing) < len(rows)
    chosen, rejected = scorer.score_pairs(datasets.Dataset.from_list(rows))
    apart = RewardScorer(tiny_rm, device="cpu", batch_size=batch_size, max_length=64, share_prompt=False)
    alone = apart.score([r["prompt"] + r["chosen"] for r in rows] + [r["prompt"] + r["rejected"] for r in rows])
    np.testing.assert_allclose(np.concatenate([chosen.mean, rejected.mean]), alone.mean, atol=1e-5)

    encoder = RewardScorer(tiny_encoder_reward_model(tmp_path / "bert"), device="cpu", max_length=64)
    assert not encoder.members[0].shares_prompt
    chosen, rejected = encoder.score_pairs(datasets.Dataset.from_list(rows))
    alone = encoder.score([r["prompt"] + r["chosen"] for r in rows] + [r["prompt"] + r["rejected"] for r in rows])
    np.testing.assert_allclose(np.concatenate([chosen.mean, rejected.mean]), alone.mean, atol=1e-5)


@pytest.mark.parametrize("batch_size", [16, 2])
def test_scoring_packs_responses_that_share_a_prompt(tiny_rm, batch_size):
    """Several responses to one prompt (a GRPO group, best-of-n samples) run as packed rows, the prompt once, with
    the rewards of each conversation scored alone; edge cases: a response repeated, a sequence that is the start
    of others, one ending inside another's; a row never holds more than twice its longest sequence's tokens."""
    from reward.shared_prompt import prompt_groups, row_tokens

    rng = random.Random(3)
    conversations, prompt_of = [], []
    # Two long prompts with short answers (rows of 3 and more), one short prompt with long answers (rows of 2).
    for k, row in enumerate(rule_pairs(2, long_prompt=True) + rule_pairs(1, seed=1)):
        for n in range(5):
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12) if k < 2 else rng.randint(8, 12)))
            conversations.append(row["prompt"] + [{"role": "assistant", "content": answer}])
            prompt_of.append(k)
    conversations.append(conversations[0])
    prompt_of.append(0)
    conversations.append([{"role": "user", "content": "a prompt of its own"}, {"role": "assistant", "content": "yes"}])
    prompt_of.append(3)
    # Long enough for the whole dialogues: a prompt cut from the left by each response's own amount shares no start.
    scorer = RewardScorer(tiny_rm, device="cpu", batch_size=batch_size, max_length=256)
    apart = RewardScorer(tiny_rm, device="cpu", batch_size=batch_size, max_length=256, share_prompt=False)
    rewards = scorer.score(conversations).mean
    np.testing.assert_allclose(rewards, apart.score(conversations).mean, atol=1e-5)
    assert rewards[0] == rewards[-2]  # a repeat gets the very same reward (an exact tie stays one)

    member = scorer.members[0]
    ids = [member.encoder.encode(c)[0] for c in conversations]
    groups = prompt_groups(ids)
    assert sorted(i for g in groups for i in g) == list(range(len(ids)))
    assert max(map(len, groups)) >= 3  # more than a pair shares one row
    for g in groups:
        assert len({prompt_of[i] for i in g}) == 1
        assert row_tokens([ids[i] for i in g]) <= 2 * max(len(ids[i]) for i in g)
    # Hand-made token sequences: a repeat, a sequence that starts others, one that shares nothing.
    sequences = [[5, 6, 7, 8, 9], [5, 6, 7, 8, 10, 11], [5, 6, 7, 12], [5, 6, 7, 8, 9], [5, 6, 7], [14, 6, 7]]
    assert len(prompt_groups(sequences)) < len(sequences)
    # Two pairs whose dialogues open alike: each pair shares more within itself, so each pair is a row.
    opening = [1, 2, 3, 4, 5, 6, 7]
    pairs = [opening + [8, 9, 10, 20], opening + [8, 9, 10, 21], opening + [11, 12, 13, 22], opening + [11, 12, 13, 23]]
    assert prompt_groups(pairs) == [[0, 1], [2, 3]]
    np.testing.assert_allclose(member.score_ids(sequences, batch_size), apart.members[0].score_ids(sequences, 16),
                               atol=1e-5)


def test_ensemble_returns_mean_and_spread(trained, tiny_rm, tmp_path):
    result, eval_rows = trained
    conversations = [r["prompt"] + r["chosen"] for r in eval_rows[:6]]
    one = RewardScorer(result.output_dir).score(conversations).mean
    other = RewardScorer(tiny_rm, max_length=48).score(conversations).mean
    both = RewardScorer([result.output_dir, tiny_rm], max_length=48).score(conversations)
    assert both.per_model.shape == (2, 6)
    np.testing.assert_allclose(both.mean, (one + other) / 2, atol=1e-5)
    np.testing.assert_allclose(both.spread, np.abs(one - other) / 2, atol=1e-5)
    assert (both.spread > 0).all()

    # A scored file holds each member's reward beside the mean and spread, so a user can see what the spread is.
    # Written to 15 significant digits, so the mean of the members is the mean written; each row says whether a
    # member cut it (all of these are over the 48 tokens the model trained with), and a warning counts them.
    rows = [{"messages": c} for c in conversations] + [{"messages": conversations[0][:-1] + [
        {"role": "assistant", "content": ""}]}]
    with pytest.warns(UserWarning, match=r"^data: 1 response\(s\) are empty \(first: data\[6\]\)"):
        alone = [json.loads(line) for line in
                 score_file(result.output_dir, rows, tmp_path / "one.jsonl").read_text().splitlines()]
    with pytest.warns(UserWarning, match=r"^data: 7 of 7 row\(s\) had a conversation cut to 48 tokens from the left"):
        scored = [json.loads(line) for line in
                  score_file([result.output_dir, tiny_rm], rows, tmp_path / "both.jsonl").read_text().splitlines()]
    members = np.array([row["reward_members"] for row in scored])
    assert members.shape == (7, 2)
    np.testing.assert_allclose(members[:, 0], [row["reward"] for row in alone], atol=1e-6)
    np.testing.assert_allclose(members.mean(axis=1), [row["reward"] for row in scored], rtol=1e-13)
    np.testing.assert_allclose(members.std(axis=1), [row["reward_spread"] for row in scored], atol=1e-6)
    assert "reward_members" not in alone[0] and all(row["reward_truncated"] for row in scored)
    # Scoring the ensemble's output again with one model leaves none of the ensemble's columns beside it.
    with pytest.warns(UserWarning):
        again = json.loads(score_file(result.output_dir, str(tmp_path / "both.jsonl"),
                                      tmp_path / "again.jsonl").read_text().splitlines()[0])
    assert again["reward"] == alone[0]["reward"] and not {"reward_spread", "reward_members"} & set(again)
    # A pair file's own `reward` column is the data's: scoring its pairs (reward_chosen, reward_rejected) keeps it.
    pairs = [{"prompt": "q", "chosen": "a", "rejected": "b", "reward": 0.9}]
    kept = json.loads(score_file(result.output_dir, pairs, tmp_path / "pairs.jsonl").read_text())
    assert kept["reward"] == 0.9 and {"reward_chosen", "reward_rejected"} <= set(kept)
    # A model named twice would be an ensemble of copies, with no disagreement to show; models of other kinds
    # (here an encoder beside a decoder) are on scales of their own, which the spread would mostly measure.
    with pytest.raises(UserError, match=r"^reward model .*: named twice; an ensemble's members are different models"):
        RewardScorer([result.output_dir, result.output_dir + "/"])
    with pytest.warns(UserWarning, match=r"^the ensemble mixes kinds of model \(bert \(\d+ tokens\), llama "):
        RewardScorer([result.output_dir, tiny_encoder_reward_model(tmp_path / "bert")])


def test_reward_score_names_its_output_after_the_data_and_never_overwrites_a_name_it_chose(trained, tmp_path,
                                                                                           monkeypatch):
    from typer.testing import CliRunner

    from reward.cli import app

    result, eval_rows = trained
    for folder, n in (("a", 3), ("b", 1)):
        (tmp_path / folder).mkdir()
        datasets.Dataset.from_list(eval_rows[:n]).to_json(str(tmp_path / folder / "pairs.jsonl"), lines=True)
    monkeypatch.chdir(tmp_path)
    score = ["score", "--model", result.output_dir, "--data"]
    run = CliRunner().invoke(app, [*score, "a/pairs.jsonl"])
    assert run.exit_code == 0, run.output + repr(run.exception)
    assert len((tmp_path / "pairs.scored.jsonl").read_text().splitlines()) == 3
    run = CliRunner().invoke(app, [*score, "b/pairs.jsonl"])  # the same default name: a's scores stay
    assert isinstance(run.exception, UserError)
    assert str(run.exception) == "pairs.scored.jsonl exists; pass --out pairs.scored.jsonl to replace it, or another name"
    assert len((tmp_path / "pairs.scored.jsonl").read_text().splitlines()) == 3
    run = CliRunner().invoke(app, [*score, "b/pairs.jsonl", "--out", "pairs.scored.jsonl"])
    assert run.exit_code == 0 and len((tmp_path / "pairs.scored.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "pairs.scored.jsonl"]  # no partial file left


def test_scoring_does_not_import_deepspeed(trained, tmp_path):
    """Unwrapping a data-parallel model imports DeepSpeed where it is installed (a dev extra), which logs "Setting
    accelerator to CPU"; scoring's model is never wrapped, pairs that share a prompt packed or not."""
    import subprocess
    import sys

    result, eval_rows = trained
    data = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(eval_rows[:4]).to_json(str(data), lines=True)
    code = (f"import sys; from reward.score import score_file; score_file({result.output_dir!r}, {str(data)!r}, "
            f"{str(tmp_path / 'out.jsonl')!r}); print('deepspeed' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "False"


def test_score_file_adds_reward_columns(trained, tmp_path):
    result, eval_rows = trained
    path = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(eval_rows[:5]).to_json(str(path), lines=True)
    out = score_file(result.output_dir, str(path), tmp_path / "scored.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r["reward_chosen"] > r["reward_rejected"] for r in rows)
    completions = tmp_path / "completions.jsonl"
    completions.write_text(json.dumps({"prompt": "hi", "completion": "hello good"}) + "\n")
    scored = [json.loads(x) for x in score_file(result.output_dir, str(completions), tmp_path / "c.jsonl").read_text().splitlines()]
    assert isinstance(scored[0]["reward"], float)
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": "hi", "answer": "hello"}) + "\n")
    with pytest.raises(UserError) as e:
        score_file(result.output_dir, str(answers), tmp_path / "a.jsonl")
    assert "answers.jsonl: nothing to score" in _one_line_error(e) and "it has answer, prompt" in str(e.value)
    # Pairs with no prompt column, as raw HH has them, are scored: the message offers them.
    assert "'chosen' + 'rejected' (with a 'prompt', or whole conversations)" in str(e.value)
    whole = tmp_path / "whole.jsonl"
    whole.write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello",
                                 "rejected": "\n\nHuman: hi\n\nAssistant: go"}) + "\n")
    scored = json.loads(score_file(result.output_dir, str(whole), tmp_path / "w.jsonl").read_text())
    assert isinstance(scored["reward_chosen"], float) and isinstance(scored["reward_rejected"], float)


# ------------------------------------------------------------------------------------- bad input


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_wrong_columns_empty_data_and_missing_model_are_clear_errors(tmp_path, tiny_rm, monkeypatch):
    with pytest.raises(UserError) as e:
        load_preferences(datasets.Dataset.from_list([{"prompt": "x", "answer": "y"}]))
    assert "missing column(s) chosen, rejected" in _one_line_error(e)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError) as e:
        load_preferences(str(empty))
    assert "empty" in _one_line_error(e)
    with pytest.raises(UserError) as e:
        load_preferences(datasets.Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}))
    assert "empty" in _one_line_error(e)

    with pytest.raises(UserError) as e:
        load_preferences(str(tmp_path / "nope.parquet"))
    assert "nope.parquet" in _one_line_error(e)
    with pytest.raises(UserError) as e:  # it said "data: None: no such file or directory"
        train_reward_model(RewardTrainingConfig(data=None, base_model=tiny_rm, output_dir=str(tmp_path / "rm")))
    assert _one_line_error(e).startswith("data: none given (a file, a save_to_disk folder, a Dataset")

    bad_row = [{"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"text": "b"}]}]
    with pytest.raises(UserError) as e:
        load_preferences(datasets.Dataset.from_list(bad_row))
    assert "data[0]" in _one_line_error(e) and "rejected" in str(e.value)

    with pytest.raises(UserError) as e:
        train_reward_model(RewardTrainingConfig(data=datasets.Dataset.from_list(rule_pairs(4)),
                                                base_model=str(tmp_path / "no-such-model"), progress=False))
    assert "no-such-model" in _one_line_error(e)
    with pytest.raises(UserError) as e:
        train_reward_model(RewardTrainingConfig(data=datasets.Dataset.from_list(rule_pairs(4)), base_model=tiny_rm,
                                                evals_per_epoch=0, progress=False))
    assert "evals_per_epoch (--evals-per-epoch) must be at least 1, got 0" in _one_line_error(e)
    # What `accelerate launch` sets from a config with zero_stage: 3 (checked by hand with such a config on two
    # CPU ranks: each rank printed this error and no output directory was made).
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(UserError) as e:
        train_reward_model(RewardTrainingConfig(data=datasets.Dataset.from_list(rule_pairs(4)), base_model=tiny_rm,
                                                output_dir=str(tmp_path / "zero3"), progress=False))
    assert "ZeRO-3 is not supported" in _one_line_error(e) and not (tmp_path / "zero3").exists()
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    with pytest.raises(UserError) as e:
        RewardScorer(str(tmp_path / "no-such-model"))
    assert "no-such-model" in _one_line_error(e)


def test_sequences_longer_than_the_model_has_positions_are_refused_before_training(tmp_path):
    """--max-length 1024 on minilm-l6 (512 positions) failed at the first step with a tensor-size RuntimeError.
    Only a learned table of absolute positions sets a hard limit: rotary and relative positions run longer."""
    from transformers import (DebertaV2Config, DebertaV2ForSequenceClassification, LlamaConfig,
                              LlamaForSequenceClassification, RobertaConfig, RobertaForSequenceClassification)

    from reward.data import position_limit

    short = tiny_encoder_reward_model(tmp_path / "short", max_position_embeddings=16)
    # Refused whatever the data: short pairs would train, and the saved model could not score a long one.
    for data in (rule_pairs(16, long_prompt=True), rule_pairs(16)):
        with pytest.raises(UserError) as e:
            train_reward_model(RewardTrainingConfig(
                data=datasets.Dataset.from_list(data), base_model=short, output_dir=str(tmp_path / "rm"),
                eval_fraction=0, max_length=40, max_steps=1, precision="fp32", progress=False))
        assert _one_line_error(e) == (f"max_length (--max-length) is 40, beyond the 16 positions {short} takes; "
                                      "set it to 16 or less")
        assert not (tmp_path / "rm").exists()
    # Without a max_length the data's longest sequence is what is checked.
    with pytest.raises(UserError) as e:
        train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rule_pairs(16, long_prompt=True)), base_model=short,
            output_dir=str(tmp_path / "rm"), eval_fraction=0, max_length=None, max_steps=1, precision="fp32",
            progress=False))
    assert _one_line_error(e).startswith(f"data for {short}: a sequence of ")
    assert "tokens, beyond the 16 positions the model takes; set max_length (--max-length) to 16 or less" in str(e.value)
    # A model saved with a max_length beyond its positions (as earlier releases allowed) scores at its positions.
    trained = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rule_pairs(16)), base_model=short, output_dir=str(tmp_path / "ok"),
        eval_fraction=0, max_length=16, max_steps=1, precision="fp32", progress=False))
    info = json.loads((Path(trained.output_dir) / "prefloop.json").read_text())
    (Path(trained.output_dir) / "prefloop.json").write_text(json.dumps(info | {"max_length": 40}))
    chosen, rejected = RewardScorer(trained.output_dir).score_pairs(
        datasets.Dataset.from_list(rule_pairs(4, long_prompt=True)))
    assert len(chosen.mean) == 4 and np.isfinite(chosen.mean).all()
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=1)
    roberta = RobertaForSequenceClassification(RobertaConfig(max_position_embeddings=18, **small))
    assert position_limit(roberta) == 16  # its positions start after the padding index
    with pytest.raises(Exception):  # what the limit prevents
        roberta(input_ids=torch.full((1, 17), 5))
    for relative_or_rotary in (
            DebertaV2ForSequenceClassification(DebertaV2Config(max_position_embeddings=16, position_biased_input=False,
                                                               relative_attention=True, **small)),
            LlamaForSequenceClassification(LlamaConfig(max_position_embeddings=16, pad_token_id=0, **small))):
        assert position_limit(relative_or_rotary) is None
        relative_or_rotary(input_ids=torch.full((1, 40), 5))  # longer than max_position_embeddings, and it runs


def test_a_chat_template_that_refuses_a_conversation_names_the_row(tmp_path, tiny_rm):
    import shutil

    from transformers import AutoTokenizer

    strict = tmp_path / "strict"
    shutil.copytree(tiny_rm, strict)
    tokenizer = AutoTokenizer.from_pretrained(strict)
    tokenizer.chat_template = ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role "
                               "not supported') }}{% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    tokenizer.save_pretrained(strict)
    rows = rule_pairs(8)
    rows[5] = {**rows[5], "prompt": [{"role": "system", "content": "Be terse."}, *rows[5]["prompt"]]}
    with pytest.raises(UserError) as e:
        train_reward_model(RewardTrainingConfig(data=datasets.Dataset.from_list(rows), base_model=str(strict),
                                                output_dir=str(tmp_path / "rm"), eval_fraction=0, max_steps=1,
                                                progress=False))
    assert _one_line_error(e) == ("data: the pair that starts 'Be terse.': the model's chat template refuses this "
                                  "conversation (System role not supported)")
    # Scoring names it by where it is: an index, a side of a pair, a file's line.
    scorer = RewardScorer(str(strict))
    with pytest.raises(UserError) as e:
        scorer.score([rows[0]["prompt"], rows[5]["prompt"]])
    assert _one_line_error(e) == ("conversation 1: the model's chat template refuses this conversation (System role "
                                  "not supported)")
    with pytest.raises(UserError) as e:
        scorer.score_pairs(rows)
    assert _one_line_error(e).startswith("data[5] (chosen): the model's chat template refuses this conversation")
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(UserError) as e:
        score_file(str(strict), str(path), tmp_path / "scored.jsonl")
    assert _one_line_error(e).startswith(f"{path}:6 (chosen): the model's chat template refuses this conversation")


def test_a_diverged_run_stops_where_the_loss_turns_nan_and_saves_nothing(tmp_path, tiny_rm):
    """At a learning rate of 1000 the loss reached 5e11, then NaN, which the logs showed as a finite number; the run
    trained on to its end and, with nothing held out, saved a NaN model."""
    with pytest.raises(UserError) as e:
        train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rule_pairs(64)), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
            eval_fraction=0, max_length=32, max_steps=40, batch_size=8, learning_rate=1000.0, precision="fp32",
            progress=False))
    message = _one_line_error(e)
    assert message.startswith("training diverged: the trained weights hold NaN or infinite values after step ")
    assert message.endswith("nothing was saved (a learning rate below 1000 usually helps: learning_rate "
                            "(--learning-rate))")
    assert int(message.split(" after step ")[1].split(";")[0]) < 40 and not (tmp_path / "rm").exists()


def test_offline_model_aliases():
    assert set(MODEL_ALIASES) == {"smollm2-135m-instruct", "minilm-l6"}
    minilm = resolve_model("minilm-l6")
    assert (Path(minilm) / "config.json").exists()
    assert resolve_model(minilm) == minilm  # an existing folder: itself


# ------------------------------------------------------------------- bad input: files, rows, options, folders


def test_a_bad_row_is_named_by_its_file_line_or_index(tmp_path):
    """JSON Lines errors name the file's own line (blank lines count), Parquet rows count from 1, in-memory
    datasets give the index; a column mixing kinds of value names the field and both lines."""
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    cases = {
        "broken.jsonl": (f"{good}\n\n{good}\n{{\"prompt\": \"q\", \"chosen\": \n", "broken.jsonl:4: invalid JSON"),
        "null.jsonl": (f"{good}\n\n{good}\n" + json.dumps({"prompt": "q", "chosen": None, "rejected": "b"}) + "\n",
                       "null.jsonl:4: field 'chosen': is missing or null"),
        "nokey.jsonl": (f"{good}\n" + json.dumps({"prompt": "q", "chosen": "a"}) + "\n",
                        "nokey.jsonl:2: field 'rejected': is missing or null"),
        "nocontent.jsonl": (json.dumps({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"})
                            + "\n" + json.dumps({"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}) + "\n",
                            "nocontent.jsonl:2: field 'chosen[0].content': is missing or null"),
        "mixed.jsonl": (f"{good}\n" + json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "margin": 1}) + "\n"
                        + json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "margin": True}) + "\n",
                        "mixed.jsonl:3: field 'margin': true/false where"),  # not read as 1.0, as Arrow would
        "blank.jsonl": ("\n\n", "blank.jsonl: the file is empty"),
        "content.jsonl": (json.dumps({"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"})
                          + "\n" + json.dumps({"prompt": "q", "chosen": [{"role": "assistant", "content": 42}],
                                               "rejected": "b"}) + "\n",
                          "content.jsonl:2: field 'chosen[0].content': expected a string"),
        "role.jsonl": (json.dumps({"prompt": [{"role": None, "content": "q"}], "chosen": "a", "rejected": "b"}) + "\n",
                       "role.jsonl:1: field 'prompt[0].role': expected a role name, got None"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as e:
            load_preferences(str(tmp_path / name))
        assert expected in _one_line_error(e), name
    assert "mixed.jsonl:2 has a number" in str(pytest.raises(UserError, load_preferences, str(tmp_path / "mixed.jsonl")).value)
    # `--no-margin` reads no margin, so a margin column that mixes kinds no longer stops the run.
    assert load_preferences(str(tmp_path / "mixed.jsonl"), use_margin=False)["margin"] == [None, "1", "true"]
    # A column the pair is not read from may mix kinds: kept as text, it stops nothing.
    (tmp_path / "notes.jsonl").write_text("".join(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b",
                                                              "rating": rating}) + "\n" for rating in (3, "n/a", None, [1])))
    assert load_preferences(str(tmp_path / "notes.jsonl"))["rating"] == ["3", "n/a", None, "[1]"]

    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a", "rejected": None}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    with pytest.raises(UserError) as e:
        load_preferences(str(tmp_path / "rows.parquet"))
    assert _one_line_error(e).endswith("rows.parquet: row 2: field 'rejected': is missing or null")
    with pytest.raises(UserError) as e:  # no message at all
        load_preferences([{"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": []}])
    assert _one_line_error(e) == "data[0]: field 'rejected': is empty"
    # An empty response is a response (HH harmless has four that import and export keep): loaded, with a warning.
    empty = [{"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}],
              "rejected": [{"role": "assistant", "content": ""}]},
             {"prompt": "q", "chosen": [{"role": "assistant", "content": " "}],
              "rejected": [{"role": "assistant", "content": "b"}]}]
    with pytest.warns(UserWarning, match=r"^data: 2 response\(s\) are empty \(first: data\[0\], rejected\); they are "
                      "scored as an empty last turn$"):
        assert len(load_preferences(empty)) == 2
    with pytest.raises(UserError) as e:
        load_preferences(datasets.Dataset.from_list(rows))
    assert _one_line_error(e).startswith("data[1]: field 'rejected'")
    datasets.Dataset.from_list(rows[:1]).select([]).to_parquet(str(tmp_path / "none.parquet"))
    with pytest.raises(UserError) as e:
        load_preferences(str(tmp_path / "none.parquet"))
    assert "none.parquet: the file is empty" in _one_line_error(e)
    # What Dataset.to_json writes under a .json name (JSON lines), and a pandas DataFrame, load as they are.
    datasets.Dataset.from_list(rows[:1]).to_json(str(tmp_path / "lines.json"))
    assert len(load_preferences(str(tmp_path / "lines.json"))) == 1
    assert len(load_preferences(datasets.Dataset.from_list(rows[:1]).to_pandas())) == 1
    # The margin column is checked only where it is read.
    bad_margin = [dict(rows[0], margin="high")]
    with pytest.raises(UserError) as e:
        load_preferences(bad_margin)
    assert "data[0]: field 'margin': expected a number, got 'high'" in _one_line_error(e)
    assert len(load_preferences(bad_margin, use_margin=False)) == 1
    for margin in (-0.5, float("inf")):  # the export contract (../shared/DESIGN.md): margin >= 0; a signed one is refused, not learnt
        with pytest.raises(UserError) as e:
            load_preferences([dict(rows[0], margin=1.0), dict(rows[0], margin=margin)])
        assert (f"data[1]: field 'margin': {margin!r} is not a finite number >= 0 (how strongly 'chosen' beats "
                "'rejected'; use_margin=False (`reward train --no-margin`) ignores the column)") == _one_line_error(e)
    assert len(load_preferences([dict(rows[0], margin=0), dict(rows[0], margin=1.5)])) == 2
    # A list's columns are every row's keys, not the first row's (Dataset.from_list dropped this margin unread).
    with pytest.raises(UserError) as e:
        load_preferences([rows[0], dict(rows[0], margin=-1.0)])
    assert _one_line_error(e).startswith("data[0]: field 'margin': missing or null where other rows have one")
    with pytest.raises(UserError) as e:
        load_preferences([dict(rows[0], margin=None)] * 2)
    assert _one_line_error(e).startswith("field 'margin': null in every row; drop the column")
    with pytest.raises(UserError) as e:
        load_preferences([rows[0], "a string"])
    assert _one_line_error(e) == "data[1]: expected a dict, got str"


def test_a_datasetdict_is_read_by_the_split_each_command_means(tmp_path, tiny_rm):
    """Training reads 'train'; held-out pairs (`--eval-data`) and `reward eval` read 'test'; scoring, which has
    no such convention, asks. The splits left unread are named; a DatasetDict of one split is that split."""
    import re

    rows = [{"prompt": "q", "chosen": f"a{i}", "rejected": "b"} for i in range(3)]
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                                   "test": datasets.Dataset.from_list(rows[:1])})
    splits.save_to_disk(str(tmp_path / "prefs"))
    folder = str(tmp_path / "prefs")
    with pytest.warns(UserWarning, match=re.escape(f"{folder}: reading the DatasetDict's 'train' split; 'test' not read")):
        assert len(load_preferences(folder)) == 3
    with pytest.warns(UserWarning, match=re.escape("eval_data: reading the DatasetDict's 'test' split; 'train' not")):
        assert len(load_preferences(splits, "eval_data", split="test")) == 1
    assert len(load_preferences(str(tmp_path / "prefs" / "test"))) == 1  # one split's own folder
    with pytest.raises(UserError) as e:
        load_rows(folder, "data", split=None)
    assert _one_line_error(e) == (f"{folder}: a DatasetDict with splits 'train', 'test', which split?: pass one "
                                  "split (its folder FOLDER/SPLIT, or dataset['SPLIT'] in Python)")
    with pytest.raises(UserError, match="'train', 'validation', no 'test' split: pass one split"):
        load_preferences(datasets.DatasetDict({"train": splits["train"], "validation": splits["test"]}),
                         "eval_data", split="test")
    assert len(load_preferences(datasets.DatasetDict({"validation": splits["train"]}), split="test")) == 3
    # The model's record names the split each read, with its size (not the DatasetDict's count of splits).
    with pytest.warns(UserWarning, match="not read"):
        result = train_reward_model(RewardTrainingConfig(
            data=splits, eval_data=splits, base_model=tiny_rm, output_dir=str(tmp_path / "rm"), max_steps=1,
            precision="fp32", progress=False))
    recorded = json.loads((Path(result.output_dir) / "prefloop.json").read_text())["config"]
    assert (recorded["data"], recorded["eval_data"]) == ("<DatasetDict, its 'train' split: 3 row(s)>",
                                                         "<DatasetDict, its 'test' split: 1 row(s)>")


def test_one_prompt_with_most_pairs_is_not_held_out_whole():
    """Held-out pairs are whole prompts, about the fraction asked: a prompt holding 15 of 20 pairs stays in
    training, where the first prompt drawn would have taken three quarters of the data out."""
    rows = [{"prompt": "shared", "chosen": f"a{i}", "rejected": "b"} for i in range(15)]
    rows += [{"prompt": f"own {i}", "chosen": "a", "rejected": "b"} for i in range(5)]
    for seed in range(10):
        train, held = split_by_prompt(datasets.Dataset.from_list(rows), 0.1, seed)
        assert len(held) <= 4 and len(train) + len(held) == 20
        assert {r["prompt"] for r in held}.isdisjoint(r["prompt"] for r in train)


def test_the_output_folder_is_checked_before_training_and_replaced_whole(tmp_path, tiny_rm, monkeypatch):
    """A bad output_dir fails before any training; a previous model directory is replaced whole (no stale adapter
    or evaluation of the old model left beside the new one), with the permissions the umask gives."""
    def config(out, **overrides) -> RewardTrainingConfig:
        return RewardTrainingConfig(**{"data": datasets.Dataset.from_list(rule_pairs(16)), "base_model": tiny_rm,
                                       "output_dir": str(out), "eval_fraction": 0, "max_length": 32, "max_steps": 1,
                                       "batch_size": 8, "precision": "fp32", "progress": False, **overrides})

    monkeypatch.setattr("reward.train.load_preferences", lambda *a, **k: pytest.fail("loaded data before the checks"))
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    for out, expected in ((tmp_path / "a-file", "is a file"), (tmp_path / "a-file" / "sub", "a-file is a file"),
                          (tmp_path / "theirs", "holds other files (no prefloop.json)")):
        with pytest.raises(UserError) as e:
            train_reward_model(config(out))
        assert expected in _one_line_error(e)
    for bad, message in (({"learning_rate": 0.0}, "learning_rate (--learning-rate) must be above 0"),
                         ({"gradient_accumulation_steps": 0},
                          "gradient_accumulation_steps (--gradient-accumulation-steps) must be at least 1"),
                         ({"lora": True, "lora_r": 0}, "lora_r (--lora-r) must be at least 1"),
                         ({"seed": -1}, "seed (--seed) must be between 0"),
                         ({"time_budget_s": -5}, "time_budget_s (--time-budget) must be above 0"),
                         ({"time_budget_s": math.nan}, "time_budget_s (--time-budget) must be a finite number, got nan"),
                         ({"num_train_epochs": math.inf}, "num_train_epochs (--epochs) must be a finite number"),
                         ({"learning_rate": math.nan}, "learning_rate (--learning-rate) must be a finite number"),
                         ({"lora": True, "lora_alpha": 0}, "lora_alpha (--lora-alpha) must be at least 1, got 0"),
                         ({"warmup_ratio": 2.0}, "warmup_ratio must be in [0, 1), got 2.0"),
                         ({"lr_scheduler_type": "bogus"}, "lr_scheduler_type 'bogus' is not one of Transformers'"),
                         # Schedules that need settings of their own failed in Transformers after the model loaded.
                         ({"lr_scheduler_type": "cosine_with_min_lr"},
                          "lr_scheduler_type 'cosine_with_min_lr' needs settings this config has no field for"),
                         ({"lr_scheduler_type": "warmup_stable_decay"}, "needs settings this config has no field"),
                         # ...and those that step on the held-out loss failed there too when nothing is held out.
                         ({"lr_scheduler_type": "reduce_lr_on_plateau", "eval_fraction": 0},
                          "'reduce_lr_on_plateau' steps on the held-out loss, and nothing is held out")):
        with pytest.raises(UserError) as e:
            train_reward_model(config(tmp_path / "new", **bad))
        assert message in _one_line_error(e)
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"
    # The current folder (empty, so no other check objects) cannot be replaced whole: it is refused before training
    # instead of failing at the save.
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    for out in (".", str(tmp_path)):
        with pytest.raises(UserError) as e:
            train_reward_model(config(out))
        assert "holds the current folder" in _one_line_error(e)
    # A path through a missing folder back up (rm/new/..) was let through, trained, and failed at the save.
    (tmp_path / "theirs2").mkdir()
    with pytest.raises(UserError) as e:
        train_reward_model(config(str(tmp_path / "theirs2" / "new" / "..")))
    assert _one_line_error(e) == f"output_dir (--out) {tmp_path / 'theirs2' / 'new' / '..'}: ends in '..'; name the " \
                                 "folder itself"
    monkeypatch.undo()

    out = tmp_path / "rm"
    train_reward_model(config(out, lora=True))
    assert (out / "adapter").is_dir()
    (out / "eval").mkdir()
    (out / "eval" / "eval.json").write_text("{}")
    old_umask = os.umask(0o022)
    try:
        train_reward_model(config(out))
    finally:
        os.umask(old_umask)
    assert not (out / "adapter").exists() and not (out / "eval").exists()
    assert json.loads((out / "prefloop.json").read_text())["output_dir"] == str(out)
    # The training data kept in an earlier model's folder would go with it: refused before training, kept.
    datasets.Dataset.from_list(rule_pairs(16)).to_json(str(out / "prefs.jsonl"))
    for field, flag in (("data", "--data"), ("eval_data", "--eval-data")):
        with pytest.raises(UserError) as e:
            train_reward_model(config(out, **{field: str(out / "prefs.jsonl")}))
        assert _one_line_error(e) == (f"output_dir (--out) {out}: holds {field} ({flag}) {out / 'prefs.jsonl'}, which "
                                      "the new output would delete as it replaces the folder whole; move it out, or "
                                      "name another folder")
    with pytest.raises(UserError, match=r"holds base_model \(--base\) "):
        train_reward_model(config(out, base_model=str(out)))
    assert (out / "prefs.jsonl").is_file()
    (out / "prefs.jsonl").unlink()
    assert {oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {"0o644"}
    assert oct(out.stat().st_mode & 0o777) == "0o755"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left

    # A save that fails at the last step (the swap) leaves the previous model where it was, whole.
    from collect.output_dirs import replacing_dir

    before = sorted(p.name for p in out.iterdir())
    real_replace = os.replace

    def swap_fails(src, dst):  # moving the old model aside and back works; moving the new one in does not
        if Path(src).name != out.name:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr("collect.output_dirs.os.replace", swap_fails)
    with pytest.raises(OSError, match="disk full"):
        with replacing_dir(out) as staging:
            (staging / "partial.bin").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_scoring_names_bad_conversations_and_models_it_cannot_score(trained, tmp_path, tiny_rm):
    import shutil

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result, _ = trained
    scorer = RewardScorer(result.output_dir)
    # One conversation not wrapped in a list: a string was scored letter by letter.
    for one in ("Hello", {"role": "user", "content": "Hello"}):
        with pytest.raises(UserError, match=r"^conversations: expected a list of conversations, got a (str|dict) \(to "
                           r"score one conversation, pass \[conversation\]\)$"):
            scorer.score(one)
    for arguments, expected in ((dict(batch_size=0), "batch_size must be a whole number, at least 1; got 0"),
                                (dict(max_length="64"), "max_length must be a whole number of tokens; got '64'"),
                                (dict(device="gpu"), "device 'gpu': not a torch device (cpu, cuda, cuda:1, mps, ...)")):
        with pytest.raises(UserError) as e:
            RewardScorer(result.output_dir, **arguments)
        assert _one_line_error(e) == expected
    # What is whole and iterable is taken: a numpy integer, a generator of conversations.
    hello = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    scores = RewardScorer(result.output_dir, batch_size=np.int64(2)).score(c for c in [hello, hello])
    assert scores.mean.tolist() == scorer.score([hello, hello]).mean.tolist()
    with pytest.raises(UserError, match=r"^places: 1 given for 2 rows; give one each$"):
        scorer.score([hello, hello], places=["a.jsonl:1"])  # zipped, it scored one conversation of two
    for conversations, expected in (([[]], "conversation 0: field 'messages': is empty"),
                                    ([[{"role": "user", "content": "hi"}], [{"role": "user"}]],
                                     "conversation 1: field 'messages[0]': expected a message"),
                                    ([{"messages": []}], "conversation 0: field 'messages': expected a string or a list")):
        with pytest.raises(UserError) as e:
            scorer.score(conversations)
        assert expected in _one_line_error(e)
    # A copied-in tokenizer with a larger vocabulary than the model's embeddings.
    mismatched = tmp_path / "mismatched"
    shutil.copytree(result.output_dir, mismatched)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (mismatched / name).unlink(missing_ok=True)
        source = Path(resolve_model("minilm-l6")) / name
        if source.exists():
            shutil.copy(source, mismatched / name)
    with pytest.raises(UserError) as e:
        RewardScorer(str(mismatched)).score([[{"role": "user", "content": "hello there, general kenobi"}]])
    assert "beyond the model's" in _one_line_error(e) and "the tokenizer is not this model's" in str(e.value)
    # Weights that hold NaN: an error naming the model, not NaN rewards that pass for wrong picks.
    broken = tmp_path / "nan"
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    with torch.no_grad():
        model.score.weight[0, 0] = float("nan")
    model.save_pretrained(broken)
    shutil.copy(Path(result.output_dir) / "prefloop.json", broken)
    AutoTokenizer.from_pretrained(result.output_dir).save_pretrained(broken)
    with pytest.raises(UserError) as e:
        RewardScorer(str(broken)).score([[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]])
    assert _one_line_error(e) == (f"reward model {broken}: 2 of 2 sequences scored NaN or infinite (its weights "
                                  "hold NaN, or the run that trained it diverged)")
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "a.txt").write_text("x")
    with pytest.raises(UserError) as e:
        RewardScorer(str(not_a_model))
    assert "not a model directory (it has no config.json)" in _one_line_error(e)
    # A base model with no score head (its config says one label): a head drawn at random would score each run
    # differently, so it is refused, not scored.
    headless = tmp_path / "headless"
    model.base_model.save_pretrained(headless)
    config = json.loads((headless / "config.json").read_text())
    (headless / "config.json").write_text(json.dumps({**config, "architectures": [type(model).__name__],
                                                      "num_labels": 1, "id2label": {"0": "LABEL_0"}}))
    AutoTokenizer.from_pretrained(result.output_dir).save_pretrained(headless)
    with pytest.raises(UserError) as e:
        RewardScorer(str(headless))
    assert _one_line_error(e).startswith(f"model {str(headless)!r}: its score head (score.weight) is not in the "
                                         "checkpoint, so it would be drawn at random")
    # Weights without their tokenizer: Transformers would build one from the config alone and score nonsense.
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(result.output_dir) / name, no_tokenizer)
    with pytest.raises(UserError) as e:
        RewardScorer(str(no_tokenizer))
    assert _one_line_error(e).startswith(f"cannot load model {str(no_tokenizer)!r}: no tokenizer in it")
    # A damaged weights file: one line, whatever the file's reader raises.
    damaged = tmp_path / "damaged"
    shutil.copytree(result.output_dir, damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(UserError) as e:
        RewardScorer(str(damaged))
    assert _one_line_error(e).startswith(f"reward model {damaged}: cannot load it (SafetensorError: ")
    (damaged / "prefloop.json").write_text("{")  # cut short too: named, not a JSON traceback
    with pytest.raises(UserError) as e:
        RewardScorer(str(damaged))
    assert _one_line_error(e).startswith(f"{damaged / 'prefloop.json'}: cannot read it (")
    # Valid JSON of the wrong shape (edited by hand) gave a traceback where scoring read it.
    for written, said in (("[1, 2]", "expected a JSON object, as `prefloop reward train` writes it; got [1, 2]"),
                          ("null", "expected a JSON object, as `prefloop reward train` writes it; got null"),
                          ('{"max_length": "64"}', "field 'max_length': expected a whole number of tokens, got '64'"),
                          ('{"truncation_side": "middle"}',
                           "field 'truncation_side': expected 'left' or 'right', got 'middle'")):
        (damaged / "prefloop.json").write_text(written)
        with pytest.raises(UserError) as e:
            RewardScorer(str(damaged))
        assert _one_line_error(e) == f"{damaged / 'prefloop.json'}: {said}"
    with pytest.raises(UserError) as e:
        score_file(result.output_dir, "unused.jsonl", tmp_path / "out.csv")
    assert "written as .jsonl or .parquet" in _one_line_error(e)


def test_evaluation_reports_ties_unused_columns_and_why_the_margin_agreement_is_missing(trained, tmp_path):
    result, _ = trained
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "same"}],
             "rejected": [{"role": "assistant", "content": "same" if i < 2 else f"other {i}"}], "margin": 1.0,
             "topic": ["x", None][i % 2], "rater_note": f"note {i}", "flag": True, "domain": "",
             # what prefloop export writes beside each pair: a number of judgments is a category, a share is not
             "n_judgments": 1 + i % 2, "confidence": [1.0, 0.75, 2 / 3][i % 3]} for i in range(6)]
    report = evaluate_reward_model(result.output_dir, rows, tmp_path / "eval", n_bootstrap=100)
    assert report["ties"] == 2  # identical sides: equal rewards, counted wrong
    assert set(report["by"]["topic"]) == {"x", "(none)"}
    assert set(report["by"]["n_judgments"]) == {"1", "2"}
    assert report["not_broken_down"] == {
        "rater_note": "6 distinct values in 6 pairs (a category has 2 to 3)", "flag": "one value for every pair (True)",
        "domain": "one value for every pair ((empty))",
        "confidence": "fractional numbers (to break down by them, bin them into a column of labels)"}
    assert report["margin_correlation"] is None
    assert report["margin_correlation_missing"] == "every pair has the same margin"
    # A margin training would refuse leaves out the agreement figure, not the evaluation; scoring reads none.
    rows[3]["margin"] = -0.5
    report = evaluate_reward_model(result.output_dir, rows, n_bootstrap=100)
    assert report["n"] == 6 and report["margin_correlation"] is None
    assert report["margin_correlation_missing"].startswith("data[3]: field 'margin': -0.5 is not a finite number >= 0")
    scored = score_file(result.output_dir, rows, tmp_path / "scored.jsonl")
    assert len(scored.read_text().splitlines()) == 6
    (tmp_path / "a-file").write_text("keep")
    with pytest.raises(UserError) as e:
        evaluate_reward_model(result.output_dir, rows, tmp_path / "a-file")
    assert "a-file: is a file; the evaluation writes a folder" in _one_line_error(e)
    # Another model's folder, named as --out by mistake: refused before scoring; an earlier evaluation is replaced.
    with pytest.raises(UserError) as e:
        evaluate_reward_model(result.output_dir, rows, result.output_dir)
    assert _one_line_error(e).startswith(f"out (--out) {result.output_dir}: holds other files (README.md, "
                                         "chat_template.jinja, config.json, ...); name a new or empty folder")
    assert not (Path(result.output_dir) / "eval.json").exists()
    evaluate_reward_model(result.output_dir, rows, tmp_path / "eval", n_bootstrap=100)  # written there above
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["accuracy.png", "eval.json", "reliability.png"]


def test_a_local_path_or_a_near_miss_of_an_alias_fails_at_once(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not read")
    for name, expected in (("/no/such/model", "no such directory"), ("./rm", "no such directory"),
                           (str(weights), "is a file; name the model's folder"),
                           ("smollm2-135m", "did you mean 'smollm2-135m-instruct'?"),
                           ("minilm", "did you mean 'minilm-l6'?")):
        with pytest.raises(UserError) as e:
            resolve_model(name)
        assert expected in _one_line_error(e)


def _cache_as_hub_model(model_dir: str, hub_cache: Path, repo_id: str) -> Path:
    """Lay a model out as `hf download` leaves it in the Hugging Face cache."""
    import shutil

    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return snapshot


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_hub_id_is_read_from_the_hugging_face_cache_where_the_hub_cannot_be_reached(tmp_path, tiny_rm,
                                                                                       monkeypatch):
    """On an air-gapped machine Transformers retries each file of a Hub id for about half a minute before it looks
    in the cache (2.5 minutes to load a cached model); prefloop asks the Hub once and, where it does not answer,
    loads the cached snapshot, or says at once that there is none."""
    import http.server
    import threading

    from huggingface_hub import constants

    snapshot = _cache_as_hub_model(tiny_rm, tmp_path / "hub", "some-org/tiny-rm")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets it; here the Hub is asked
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert resolve_model("some-org/tiny-rm") == str(snapshot)
    with pytest.raises(UserError) as e:
        resolve_model("some-org/not-cached")
    assert _one_line_error(e).startswith(
        f"model 'some-org/not-cached': not a local directory, not in the Hugging Face cache ({tmp_path / 'hub'}), "
        f"and the Hub ({constants.ENDPOINT}) cannot be reached (")
    assert "`hf download some-org/not-cached`" in _one_line_error(e)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("some-org/tiny-rm") == str(snapshot)
    with pytest.raises(UserError, match="and HF_HUB_OFFLINE is set;"):
        resolve_model("some-org/not-cached")

    # Where the Hub answers (any status), the id is Transformers' to download or to check for a newer revision.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
        assert resolve_model("some-org/not-cached") == "some-org/not-cached"
        assert resolve_model("some-org/tiny-rm") == "some-org/tiny-rm"
    finally:
        hub.shutdown()


def test_training_from_a_cached_hub_id_without_a_network(tmp_path, tiny_rm):
    import subprocess
    import sys

    _cache_as_hub_model(tiny_rm, tmp_path / "hf" / "hub", "some-org/tiny-rm")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rule_pairs(16)))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
           "HF_HUB_OFFLINE": "0"}
    run = subprocess.run([sys.executable, "-m", "apps.cli", "reward", "train", "--data", str(data), "--base",
                          "some-org/tiny-rm", "--out", str(tmp_path / "rm"), "--max-steps", "1", "--batch-size", "8",
                          "--max-length", "32", "--precision", "fp32"],
                         cwd=Path(__file__).parent.parent, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Retrying" not in run.stderr
    info = json.loads((tmp_path / "rm" / "prefloop.json").read_text())
    assert info["base_model"] == "some-org/tiny-rm"
    assert info["base_model_path"].endswith("models--some-org--tiny-rm/snapshots/0123abcd")


ADAPTER_CONVERSATIONS = [
    [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "general kenobi"}],
    [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "go away"}],
    [{"role": "user", "content": "a b c"}, {"role": "assistant", "content": "d e f g"}],
]


def _peft_rewards(adapter: str, base: str, tokenizer=None) -> list[float]:
    """ADAPTER_CONVERSATIONS' rewards from PEFT's own model (base + adapter, unmerged), one conversation at a time."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=1),
                                      adapter).eval()
    with torch.no_grad():
        rewards = [model(torch.tensor([Encoder(tokenizer, None).encode(c)[0]])).logits[0, 0].item()
                   for c in ADAPTER_CONVERSATIONS]
    assert len(set(np.round(rewards, 4))) == len(rewards)  # the check below can tell conversations apart
    return rewards


def test_a_lora_reward_adapter_is_scored_on_its_base_as_peft_scores_it(tmp_path, monkeypatch):
    """A reward model kept as a PEFT adapter (task_type SEQ_CLS: the LoRA weights and the score head, as TRL's
    RewardTrainer saves one given such a peft_config) is scored on the base model its adapter_config.json names,
    from a folder or by Hub id from the Hugging Face cache, with the base's tokenizer or its own. An adapter of LoRA
    weights alone is a reward model where its base already has a one-output head."""
    from huggingface_hub import constants
    from transformers import AutoTokenizer

    causal = tiny_causal_lm(tmp_path / "lm")  # no score head of its own
    adapter = tiny_lora_reward_adapter(tmp_path / "adapter", causal)
    expected = _peft_rewards(adapter, causal)
    assert np.allclose(RewardScorer(adapter).score(ADAPTER_CONVERSATIONS).mean, expected, atol=1e-5)

    snapshot = _cache_as_hub_model(adapter, tmp_path / "hub", "some-org/tiny-rm-lora")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert np.allclose(RewardScorer("some-org/tiny-rm-lora").score(ADAPTER_CONVERSATIONS).mean, expected, atol=1e-5)
    # Given the id itself, as resolve_model passes it on where the Hub answers, adapter_folder fetches the
    # repository (here from the cache).
    assert adapter_folder("some-org/tiny-rm-lora") == snapshot

    # A tokenizer saved with the adapter is the one it reads with (here its chat template is another).
    import shutil

    own = Path(shutil.copytree(adapter, tmp_path / "own-tokenizer"))
    tokenizer = AutoTokenizer.from_pretrained(causal)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }} says: {{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(own)
    assert np.allclose(RewardScorer(str(own)).score(ADAPTER_CONVERSATIONS).mean,
                       _peft_rewards(str(own), causal, tokenizer), atol=1e-5)

    # LoRA alone on a reward model (its head kept frozen), and on an encoder (BERT's head is `classifier`).
    reward_base = tiny_reward_model(tmp_path / "rm")
    lora_only = tiny_lora_reward_adapter(tmp_path / "lora-only", reward_base, with_head=False)
    assert np.allclose(RewardScorer(lora_only).score(ADAPTER_CONVERSATIONS).mean,
                       _peft_rewards(lora_only, reward_base), atol=1e-5)
    encoder = tiny_encoder_reward_model(tmp_path / "encoder")
    on_encoder = tiny_lora_reward_adapter(tmp_path / "on-encoder", encoder, target_modules=("query", "value"))
    assert np.allclose(RewardScorer(on_encoder).score(ADAPTER_CONVERSATIONS).mean,
                       _peft_rewards(on_encoder, encoder), atol=1e-5)


def test_an_adapter_that_does_not_make_a_reward_model_is_refused_in_one_line(tmp_path):
    """Each adapter below would score with weights drawn at random, or not at all; each is refused, naming it."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    causal = tiny_causal_lm(tmp_path / "lm")
    headless = tiny_lora_reward_adapter(tmp_path / "headless", causal, with_head=False)
    with pytest.raises(UserError) as e:
        RewardScorer(headless)
    assert _one_line_error(e) == (f"adapter {headless!r}: brings no score head, and its base {causal!r} has none that "
                                  "fits, so the head would be drawn at random; a LoRA reward adapter is trained with "
                                  "task_type SEQ_CLS or its head in modules_to_save")
    two_outputs = tiny_lora_reward_adapter(tmp_path / "two-outputs", causal, num_labels=2)
    with pytest.raises(UserError) as e:
        RewardScorer(two_outputs)
    assert _one_line_error(e) == (f"adapter {two_outputs!r}: its score.weight has shape [2, 32], where a one-output "
                                  f"reward model on {causal!r} takes [1, 32]")

    def moved_to(adapter: str, base: str) -> str:  # the same adapter with another base named in its config
        config_file = Path(adapter) / "adapter_config.json"
        config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": base}))
        return adapter

    wider = tiny_reward_model(tmp_path / "wider", hidden_size=64)
    other_base = moved_to(tiny_lora_reward_adapter(tmp_path / "other-base", tiny_reward_model(tmp_path / "rm"),
                                                   with_head=False), wider)
    with pytest.raises(UserError) as e:
        RewardScorer(other_base)
    assert _one_line_error(e).startswith(f"adapter {other_base!r}: does not fit its base {wider!r}, so it was trained "
                                         "on another model (size mismatch for ")
    one_layer = tiny_causal_lm(tmp_path / "one-layer", num_hidden_layers=1)
    fewer_layers = moved_to(tiny_lora_reward_adapter(tmp_path / "fewer-layers", one_layer), causal)
    with pytest.raises(UserError) as e:
        RewardScorer(fewer_layers)
    assert _one_line_error(e).startswith(f"adapter {fewer_layers!r}: 4 of the weights it adapts on its base "
                                         f"{causal!r} are not in it (first: ")
    assert _one_line_error(e).endswith("so it was trained on another model, or on fewer of its layers")
    prompt_tuning = tmp_path / "prompt-tuning"
    get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_reward_model(tmp_path / "rm2")),
                   PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=2)).save_pretrained(prompt_tuning)
    with pytest.raises(UserError) as e:
        RewardScorer(str(prompt_tuning))
    assert _one_line_error(e) == (f"adapter {str(prompt_tuning)!r}: a PROMPT_TUNING adapter adds virtual tokens, which "
                                  "cannot be merged into its base; a reward model can be a LoRA, DoRA or IA3 adapter")
    adapter = tiny_lora_reward_adapter(tmp_path / "adapter", causal)
    relative = moved_to(tiny_lora_reward_adapter(tmp_path / "relative", causal), "lm")  # as TRL saves a base named so
    with pytest.raises(UserError) as e:
        RewardScorer(relative)
    assert _one_line_error(e).startswith(f"adapter {relative!r}: its base (base_model_name_or_path in "
                                         "adapter_config.json, 'lm'): model 'lm': ")
    with pytest.raises(UserError) as e:
        train_reward_model(RewardTrainingConfig(data=rule_pairs(8), base_model=adapter, progress=False,
                                                output_dir=str(tmp_path / "trained")))
    assert _one_line_error(e) == (f"base_model (--base) {adapter!r}: is a PEFT adapter, not a whole model; train "
                                  f"from a whole model, such as the one it was trained on ({causal})")


def test_shapes_teams_bring_are_read_as_they_mean_or_said(tmp_path, tiny_rm):
    """Found by a review with data in the shapes of other tools' exports."""
    import gzip
    import warnings

    from reward.data import check_preferences, load_rows, pair_conversations

    question = [{"role": "user", "content": "What is 2 plus 2?"}]
    good, bad = [{"role": "assistant", "content": "4."}], [{"role": "assistant", "content": "5."}]
    # HuggingFaceH4/ultrafeedback_binarized: a prompt string and sides that hold it again as their first turn. The
    # user turn was read twice; now once, as TRL reads it, and the pair is the one the implicit-prompt copy makes.
    h4 = {"prompt": question[0]["content"], "chosen": question + good, "rejected": question + bad,
          "messages": question + good, "score_chosen": 8.0, "score_rejected": 8.0}
    assert pair_conversations(h4) == (question + good, question + bad)
    assert pair_conversations({**h4, "prompt": question}) == pair_conversations({"chosen": question + good,
                                                                                  "rejected": question + bad})
    # Equal scores are a tie, trained as a preference all the same: said.
    rows, places = load_rows([h4, {**h4, "score_rejected": 3.0}])
    with pytest.warns(UserWarning, match=r"^data: 1 pair\(s\) have score_chosen equal to score_rejected \(first: "
                      r"data\[0\]\): ties, read as a preference for 'chosen' all the same; leave them out$"):
        check_preferences(rows, places, "data")
    # `reward score` scores such a file's pairs, not its `messages` column (the chosen side alone).
    path = tmp_path / "h4.jsonl"
    path.write_text(json.dumps(h4) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scored = json.loads(score_file(tiny_rm, str(path), tmp_path / "h4.scored.jsonl").read_text())
    assert {"reward_chosen", "reward_rejected"} <= set(scored) and "reward" not in scored
    # Scoring reads no preference from the tie, and says so rather than what training would do.
    said = [str(w.message) for w in caught if "ties" in str(w.message)]
    assert said == [f"{path}: 1 pair(s) have score_chosen equal to score_rejected (first: {path}:1): ties, scored as "
                    "reward_chosen and reward_rejected all the same, though neither side is preferred"]
    # A pair with no prompt among pairs with one, its sides holding no question: said.
    rows, places = load_rows([{"prompt": question, "chosen": good, "rejected": bad},
                              {"prompt": None, "chosen": good, "rejected": bad}])
    with pytest.warns(UserWarning, match=r"^data: 1 pair\(s\) have no prompt where others have one, and no user "
                      r"turn in their responses \(first: data\[1\]\)"):
        check_preferences(rows, places, "data")
    # Tool calls: prefloop reads role and content; a turn of calls alone is said, and one with null content named so.
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "weather"}}]}
    rows, places = load_rows([{"prompt": question + [call, {"role": "tool", "content": "sunny"}], "chosen": good,
                               "rejected": bad}])
    with pytest.warns(UserWarning, match=r"^data: 1 pair\(s\) have turns with tool_calls \(first: data\[0\]\)"):
        check_preferences(rows, places, "data")
    with pytest.raises(UserError, match=r"is missing or null \(a tool call: prefloop reads each turn's role and "):
        pair_conversations({"prompt": question + [{**call, "content": None}], "chosen": good, "rejected": bad})
    # Two responses and a label: refused with what to do.
    with pytest.raises(UserError, match=r"put the preferred one in 'chosen', leave ties out"):
        check_preferences(*load_rows([{"prompt": "q", "response_a": "a", "response_b": "b", "label": "A"}]), "data")
    # A gzipped Parquet file is read (it was "corrupted").
    plain = tmp_path / "pairs.parquet"
    datasets.Dataset.from_list(rule_pairs(3)).to_parquet(str(plain))
    packed = tmp_path / "pairs.parquet.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_rows(str(packed))[0].to_list() == load_rows(str(plain))[0].to_list()


def test_hh_dialogue_strings_are_split_into_turns_and_grouped_by_their_shared_turns():
    """Anthropic HH's files hold each side as one string; split into turns they render through a chat template as
    a dialogue (not as one assistant message holding "Human: ..."), and two rows on the same dialogue are one
    prompt when held-out pairs are drawn."""
    from reward.data import pair_conversations

    dialogue = "\n\nHuman: how do I pick a lock?\n\nAssistant: Why do you need to?\n\nHuman: locked out"
    rows = [{"chosen": dialogue + "\n\nAssistant: Call a locksmith.", "rejected": dialogue + "\n\nAssistant: Use a pin."},
            {"chosen": dialogue + "\n\nAssistant: Try the landlord.", "rejected": dialogue + "\n\nAssistant: Kick it."},
            {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi there\n\nAssistant: go away"}]
    chosen, rejected = pair_conversations(rows[0])
    assert [m["role"] for m in chosen] == ["user", "assistant", "user", "assistant"]
    assert chosen[:3] == rejected[:3] and chosen[-1]["content"] == "Call a locksmith."
    groups = sorted(sorted(g) for g in rows_by_prompt(datasets.Dataset.from_list(rows), seed=0))
    assert groups == [[0, 1], [2]]  # row 2's sides share no turn: a group of its own
    # Sides that part at a user turn share the prompt up to the last user turn both have, as import reads them
    # (collect.formats.shared_prompt_turns): these two rows are one prompt, "how do I pick a lock?".
    parting = [{"chosen": dialogue + "\n\nAssistant: Call a locksmith.",
                "rejected": dialogue.replace("locked out", "just curious") + "\n\nAssistant: Use a pin."},
               {"chosen": "\n\nHuman: how do I pick a lock?\n\nAssistant: Don't.",
                "rejected": "\n\nHuman: how do I pick a lock?\n\nAssistant: With a pin."}]
    assert sorted(map(sorted, rows_by_prompt(datasets.Dataset.from_list(parting), seed=0))) == [[0, 1]]


def test_hh_variants_are_read_as_dialogues_and_plain_sides_that_start_alike_are_said(tmp_path, tiny_rm):
    """HH with each side's leading "\\n\\n" stripped, and Dahoas/rm-static's layout (the dialogue in `prompt`, ending
    "Assistant:", the response alone in each side), read as the turns they hold: the same pairs as the message
    lists, grouped by that prompt. Plain-text sides with no prompt that start alike are read as they are (as TRL
    reads them), but said: the shared start is likely the question, which pairs are then not grouped by."""
    from collect.formats import read_records
    from reward.data import check_preferences, pair_conversations, pair_digests

    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Why?"},
             {"role": "user", "content": "just because"}]
    as_lists = {"prompt": turns, "chosen": [{"role": "assistant", "content": "hello"}],
                "rejected": [{"role": "assistant", "content": "go away"}]}
    stripped = {"chosen": "Human: hi\n\nAssistant: Why?\n\nHuman: just because\n\nAssistant: hello",
                "rejected": "Human: hi\n\nAssistant: Why?\n\nHuman: just because\n\nAssistant: go away"}
    dahoas = {"prompt": "\n\nHuman: hi\n\nAssistant: Why?\n\nHuman: just because\n\nAssistant:",
              "chosen": " hello", "rejected": " go away"}  # the space that followed "Assistant:"
    assert pair_conversations(stripped) == pair_conversations(dahoas) == pair_conversations(as_lists)
    assert pair_digests([stripped, dahoas]) == pair_digests([as_lists]) * 2  # the same pair, whichever layout
    # The same whole dialogues beside the HH prompt they start with: read once, as the implicit prompt's copy.
    assert pair_conversations({**stripped, "prompt": dahoas["prompt"]}) == pair_conversations(as_lists)
    other = {"prompt": "\n\nHuman: bye\n\nAssistant:", "chosen": "bye", "rejected": "no"}
    groups = rows_by_prompt(datasets.Dataset.from_list([dahoas, other, dahoas]), seed=0)
    assert sorted(sorted(g) for g in groups) == [[0, 2], [1]]
    # Text that merely quotes a dialogue is read as written: a response beside a prompt that is not in HH's layout,
    # and a prompt that does not end with the empty "Assistant:" a response completes.
    quoting = {"prompt": "Write a dialogue between Human and Assistant.", "chosen": stripped["chosen"],
               "rejected": "No."}
    assert pair_conversations(quoting)[0][-1] == {"role": "assistant", "content": stripped["chosen"]}
    transcript = "Human: is how my logs start. Here is one:\n\nAssistant: Hello\nWhat does it mean?"
    assert pair_conversations({**quoting, "prompt": transcript})[0][0] == {"role": "user", "content": transcript}
    # Beside an HH prompt, sides that quote a dialogue they do not continue are responses, as import reads them.
    odd = {"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " Sure, hello!",
           "rejected": " Human: and then?\n\nAssistant: ok"}
    assert pair_conversations(odd)[1][-1] == {"role": "assistant", "content": "Human: and then?\n\nAssistant: ok"}
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(odd))
    record, rejected = read_records(path, "trl", rater="crowd")[0], pair_conversations(odd)[1]
    assert (record.prompt, record.response_b) == (rejected[:-1], rejected[-1]["content"])
    # One side a dialogue, the other not, with no prompt: refused, as `prefloop import` refuses it.
    with pytest.raises(UserError, match=r"^row: field 'rejected': has no '\\n\\nHuman:' turn$"):
        pair_conversations({"chosen": stripped["chosen"], "rejected": "go away"})

    question = "Question: what is the capital of France?\nAnswer: "
    plain = [{"chosen": question + "Paris", "rejected": question + "Lyon"}, {"chosen": "Paris", "rejected": "Lyon"}]
    rows, places = load_rows(plain)
    with pytest.warns(UserWarning, match=r"^data: 1 pair\(s\) have no prompt and plain-text sides that start alike "
                      rf"\(first: data\[0\], {len(question.strip())} characters alike\): each side is read as one "
                      r"response, its start included, .* put it in a 'prompt' column, or write each side as "
                      r"messages$") as caught:
        check_preferences(rows, places, "data")
    assert pair_conversations(plain[0])[0] == [{"role": "assistant", "content": question + "Paris"}]
    # No pair has a question anywhere: said too. Both warnings point at this line, the caller's, not inside prefloop;
    # so they do from deeper in prefloop.
    assert [str(w.message) for w in caught][0] == ("data: no pair has a prompt, nor a user turn in its sides: every "
                                                   "response is read without the question it answers")
    assert {w.filename for w in caught} == {__file__}
    with pytest.warns(UserWarning, match="plain-text sides that start alike") as caught:
        score_file(tiny_rm, plain, tmp_path / "scored.jsonl")
    assert {w.filename for w in caught} == {__file__}


def test_a_question_kept_in_another_column_is_said_to_be_unread():
    """Intel/orca_dpo_pairs keeps its question in `question` (and a system prompt in `system`), others in
    `instruction` or `input`: with no `prompt`, every response would be read without its question, unsaid."""
    import hashlib

    from reward.data import check_preferences

    orca = [{"system": "You are an AI assistant. Think step by step.", "question": f"What is {i} plus {i}? Explain.",
             "chosen": f"{2 * i}, because...", "rejected": "No idea.", "source": "orca",
             "prompt_id": hashlib.sha256(str(i).encode()).hexdigest()} for i in range(3)]
    orca[1]["question"] = None  # a missing value does not hide the column; ids and labels are not text
    with pytest.warns(UserWarning, match=r"^data: no pair has a prompt, nor a user turn in its sides: every response "
                      r"is read without the question it answers \(column\(s\) system, question hold text prefloop "
                      r"does not read: the question belongs in 'prompt'\)$"):
        check_preferences(*load_rows(orca), "data")
    # openbmb/UltraInteract_pair keeps it in `trajectory`, a list of turns: named too.
    # Labels in lists and metadata in dicts are not: they are not named.
    interact = [{"task": "Coding", "trajectory": [{"from": "user", "value": f"Write a function that adds {i}."}],
                 "chosen": f"def f(x): return x + {i}", "rejected": "pass", "id": f"id{i}",
                 "tags": ["coding", "python", "math"], "models": ["gpt-4-0613", "claude-2.1"],
                 "meta": {"source": "sharegpt", "model": "llama-2-70b"}} for i in range(3)]
    with pytest.warns(UserWarning, match=r"\(column\(s\) trajectory hold text prefloop does not read: "):
        check_preferences(*load_rows(interact), "data")


def warnings_checking(rows: list[dict]) -> list[str]:
    """The warnings `check_preferences` gives for `rows`, sorted."""
    from reward.data import check_preferences

    with pytest.warns(UserWarning) as caught:
        check_preferences(*load_rows(rows), "data")
    return sorted(str(w.message) for w in caught)


def test_a_file_of_ties_alone_is_refused_for_training_and_evaluation_and_scored(tmp_path, tiny_rm):
    """`prefloop export --include-ties`'s side file named as --data trained a model on ties read as preferences;
    `align --method dpo` refused the same file."""
    from reward.data import check_preferences

    ties = [{"prompt": "q", "chosen": "a", "rejected": "b", "kind": "tie"},
            {"prompt": "r", "chosen": "c", "rejected": "d", "kind": "both_bad"}]
    with pytest.raises(UserError) as e:
        check_preferences(*load_rows(ties), "data")
    assert _one_line_error(e) == ("data: every pair is marked a tie (kind = 'tie'; kind = 'both_bad'): there is no "
                                  "preference to train on or measure (an export's side file of ties, named by "
                                  "mistake?)")
    with pytest.raises(UserError, match="every pair is marked a tie"):
        train_reward_model(RewardTrainingConfig(data=ties, base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
                                                progress=False))
    with pytest.raises(UserError, match="every pair is marked a tie"):
        evaluate_reward_model(tiny_rm, ties)
    with pytest.warns(UserWarning, match="ties, scored as reward_chosen and reward_rejected all the same"):
        score_file(tiny_rm, ties, tmp_path / "scored.jsonl")


def test_sides_that_answer_different_conversations_are_said_in_training_and_refused_on_import(tmp_path):
    """Rows out of line (each side from another conversation) train silently as TRL trains them; `prefloop import`
    refused them. Training now says so, by the same rule (collect.formats.shared_prompt_turns)."""
    from collect.formats import read_records

    def user(text: str) -> dict:
        return {"role": "user", "content": text}

    def assistant(text: str) -> dict:
        return {"role": "assistant", "content": text}

    sums = {"chosen": [user("What is 2+2?"), assistant("4")], "rejected": [user("Capital of France?"),
                                                                        assistant("Lyon")]}
    same = {"chosen": [user("What is 2+2?"), assistant("4")], "rejected": [user("What is 2+2?"), assistant("5")]}
    system = {"role": "system", "content": "Be brief."}
    behind_system = {side: [system, *turns] for side, turns in sums.items()}  # a shared system turn is no prompt
    assert warnings_checking([same, sums, {"prompt": "What is 2+2?", **sums}, behind_system]) == [
        "data: 3 pair(s) have sides that share no prompt turns (first: data[1]): two answers to different "
        "conversations are compared, not two answers to one prompt (rows out of line?); `prefloop import` refuses "
        "such pairs"]
    path = tmp_path / "pairs.jsonl"
    for row in (sums, behind_system):
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(UserError, match="has no prompt turns shared with 'rejected'"):
            read_records(path, "trl", rater="crowd")


def test_a_prompt_string_beside_whole_conversations_is_read_as_trl_reads_it_and_odd_turns_are_said():
    """Found by a review with public datasets' shapes. A prompt string beside sides that hold their own user turns
    (argilla's capybara, whose copy differs by a trailing space; H4's orca_dpo_pairs, whose sides start with a
    system turn): the sides alone, as TRL's maybe_extract_prompt reads them, not the question twice. A `system`
    column (jondurbin/truthy-dpo), ratings of both sides (argilla's chosen_rating), and a column no pair is read
    from that mixes kinds inside its lists are read or said."""
    from reward.data import pair_conversations

    system = {"role": "system", "content": "You are an AI assistant."}
    question, answer = {"role": "user", "content": "What is 2+2? "}, {"role": "assistant", "content": "4."}
    wrong = {"role": "assistant", "content": "5."}
    capybara = {"prompt": "What is 2+2?", "chosen": [question, answer], "rejected": [question, wrong]}
    assert pair_conversations(capybara) == ([question, answer], [question, wrong])
    orca = {"prompt": "What is 2+2?", "chosen": [system, question, answer], "rejected": [system, question, wrong]}
    assert pair_conversations(orca) == ([system, question, answer], [system, question, wrong])
    hh_prompt = {**orca, "prompt": "\n\nHuman: What is 2+2?\n\nAssistant:"}  # HH's layout changes nothing here
    assert pair_conversations(hh_prompt) == pair_conversations(orca)
    # A list prompt is the conversation's start, as TRL concatenates it; one that the sides repeat in other words
    # reads as two user turns in a row, which is said.
    later = {"prompt": [{"role": "user", "content": "And times 3?"}], "chosen": [question, answer],
             "rejected": [question, wrong], "chosen_rating": 3, "rejected_rating": 4,
             "system": "You are Albert Einstein, a physicist who answers in German."}
    assert warnings_checking([later, {**later, "chosen_rating": 4}]) == [
        "data: 1 pair(s) have chosen_rating below rejected_rating (first: data[0]): where a higher rating is better, "
        "'chosen' is the side rated worse; check which side is which",
        "data: 1 pair(s) have chosen_rating equal to rejected_rating (first: data[1]): ties, read as a preference for "
        "'chosen' all the same; leave them out",
        "data: 2 pair(s) read with two user turns in a row, or a system turn after the first (first: data[0]: user, "
        "user, assistant): a 'prompt' list that the sides repeat in other words, or turns out of order; check "
        "'prompt' against the sides' first turns",
        "data: column system holds text prefloop does not read (a system prompt, as jondurbin/truthy-dpo keeps it): "
        "put it first in 'prompt', as a message of role system"]
    # ShareGPT's messages (LLaMA-Factory's layout): refused with what to rename.
    with pytest.raises(UserError, match=r"^row: field 'chosen\[0\]': expected a message \{role, content\} "
                                        r"\(ShareGPT's \{from, value\}: rename 'from' to 'role'"):
        pair_conversations({"chosen": [{"from": "human", "value": "hi"}], "rejected": [{"from": "gpt", "value": "x"}]})
    # A column no pair is read from, its lists mixing kinds: kept as text (Arrow refused the file).
    rows, _ = load_rows([{**capybara, "extra": [1, "a"]}, {**capybara, "extra": [2]}])
    assert rows["extra"][:] == ['[1, "a"]', "[2]"]


def test_ties_marked_in_another_column_are_said(tmp_path):
    """Ties marked beside a pair are trained as a preference for `chosen` all the same, so each way of marking them
    is said: a label saying tie (lmsys/chatbot_arena_conversations' `winner`, "tie" and "tie (bothbad)"), the same
    as a ClassLabel, a 0/1 column named for ties (lmsys/arena-human-preference-55k's `winner_tie`), and equal
    score_chosen and score_rejected."""
    import warnings

    from collect.formats import read_records
    from reward.data import check_preferences

    pair = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    rows = [{**pair, "winner": "model_a", "winner_tie": 0, "category": "draw"}, {**pair, "winner": " Tie "},
            {**pair, "winner": "tie (bothbad)"}, {**pair, "winner": "model_b", "winner_tie": 1},
            {**pair, "winner": "model_b", "is_tie": True}]
    said = " (first: data[{}]): ties, read as a preference for 'chosen' all the same; leave them out"
    assert warnings_checking(rows) == [f"data: 1 pair(s) have {marked}" + said.format(i) for i, marked in (
        (4, "is_tie = 1"), (1, "winner = ' Tie '"), (2, "winner = 'tie (bothbad)'"), (3, "winner_tie = 1"))]
    # Import reads the same rows as the same ties (collect.formats.marked_tie), both-bad where the label says so.
    path = tmp_path / "ties.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert [(r.judgments[0].choice, r.judgments[0].both_bad) for r in read_records(path, "trl", rater="crowd")] == [
        (1, False), (0, False), (0, True), (0, False), (0, False)]
    labelled = datasets.Dataset.from_list([{**pair, "winner": i} for i in (0, 2, 2)], features=datasets.Features({
        **{c: datasets.Value("string") for c in pair},
        "winner": datasets.ClassLabel(names=["model_a", "model_b", "tie"])}))
    with pytest.warns(UserWarning, match=r"^data: 2 pair\(s\) have winner = 'tie' \(first: data\[1\]\)"):
        check_preferences(labelled, [f"data[{i}]" for i in range(3)], "data")
    # Ratings written as text, as import reads them (a CSV holds nothing else); a side that ends on the user's turn.
    assert warnings_checking([{**pair, "score_chosen": "8", "score_rejected": "8.0"},
                              {**pair, "chosen": "\n\nHuman: hi\n\nAssistant: yo\n\nHuman:", "prompt": "",
                               "rejected": "\n\nHuman: hi\n\nAssistant: no", "score_chosen": "9",
                               "score_rejected": None}]) == [
        "data: 1 pair(s) have score_chosen equal to score_rejected (first: data[0]): ties, read as a preference for "
        "'chosen' all the same; leave them out",
        "data: 1 side(s) end with a turn that is not the assistant's (first: data[1], chosen): their reward is read "
        "after it, with no response to judge"]
    # A rank is better lower; lengths are not ratings; text that starts "Tie" is not a label.
    assert warnings_checking([{**pair, "chosen_rank": 3, "rejected_rank": 1}]) == [
        "data: 1 pair(s) have chosen_rank above rejected_rank (first: data[0]): where a lower rank is better, "
        "'chosen' is the side rated worse; check which side is which"]
    rows, places = load_rows([{**pair, "prompt": "Tie a knot?", "winner": "model_a", "note": "tied-up",
                               "chosen_rank": 1, "rejected_rank": 2, "chosen_len": 3, "rejected_len": 3}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_preferences(rows, places, "data")


def test_training_warns_about_pairs_with_nothing_to_learn_and_held_out_pairs_it_trains_on(tmp_path, tiny_rm):
    """Each warning is one line of the command's output, as errors are."""
    import subprocess
    import sys

    rows = rule_pairs(16)
    rows[3] = {**rows[3], "rejected": rows[3]["chosen"]}
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = subprocess.run([sys.executable, "-m", "apps.cli", "reward", "train", "--data", str(data), "--eval-data",
                          str(data), "--base", tiny_rm, "--out", str(tmp_path / "rm"), "--max-steps", "1",
                          "--batch-size", "8", "--max-length", "32", "--precision", "fp32"],
                         cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if line.startswith("warning: ")]
    assert warned == [
        f"warning: eval_data {data}: 16 of its 16 pair(s) are also in data {data}: the held-out accuracy that picks "
        "the step will measure memory, not generalisation",
        "warning: data: 1 of 16 training pair(s) read the same on both sides (chosen = rejected as the model sees "
        "them; first: the pair whose chosen response starts "
        f"{rows[3]['chosen'][-1]['content'][:40]!r}): they carry no preference to learn",
    ]
    # DeepSpeed (a dev extra), which Accelerate imports in every run, is told it is a CPU run instead of saying so.
    assert "Setting accelerator to CPU" not in run.stdout + run.stderr
    assert "Loading weights" not in run.stderr  # Transformers' bar for each model it loads
    assert "Writing model shards" not in run.stderr  # and for each it saves


def test_loading_a_model_hides_transformers_bar_not_the_hubs_and_puts_both_back(monkeypatch):
    import warnings

    from huggingface_hub import constants
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    from collect.offline_models import no_transformers_bar

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", None)  # as where the variable is not set
    assert transformers_logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()
    with no_transformers_bar():
        assert not transformers_logging.is_progress_bar_enabled()
        assert not hub_utils.are_progress_bars_disabled()  # a download while loading still shows its progress
    assert transformers_logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()
    with pytest.raises(RuntimeError), no_transformers_bar():
        raise RuntimeError("a load that fails")
    assert transformers_logging.is_progress_bar_enabled()
    # HF_HUB_DISABLE_PROGRESS_BARS=0: the user asked for every bar, and gets it, with no warning that the Hub's
    # switch was overruled.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with no_transformers_bar():
            assert transformers_logging.is_progress_bar_enabled()


def test_ctrl_c_stops_training_and_saves_the_model_so_far(tmp_path, tiny_rm):
    """The first Ctrl-C ends training after the step it is in, with one last held-out evaluation, and the run
    keeps its step and saves as if it had finished (a second Ctrl-C would abort)."""
    import signal
    import subprocess
    import sys

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rule_pairs(64)))
    run = subprocess.Popen([sys.executable, "-m", "apps.cli", "reward", "train", "--data", str(data), "--base", tiny_rm,
                            "--out", str(tmp_path / "rm"), "--epochs", "10000", "--batch-size", "8",
                            "--max-length", "32", "--precision", "fp32"],
                           cwd=Path(__file__).parent.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "COLUMNS": "300"})  # the summary's rows unwrapped at any width
    for line in run.stdout:  # outside a terminal: one line per held-out evaluation
        if line.startswith("reward training"):
            break
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert "stopping after this step and saving the model so far" in out
    info = json.loads((tmp_path / "rm" / "prefloop.json").read_text())
    step = info["evaluations"][-1]["step"]
    stopped_at, planned = info["stopped"].removeprefix("interrupted (Ctrl-C) at step ").split(" of ")
    assert int(stopped_at) == step < int(planned) // 1000  # 10,000 epochs planned
    assert "stopped early: interrupted (Ctrl-C)" in " ".join(err.split())


def test_a_run_that_fails_gives_ctrl_c_back(tmp_path, tiny_rm):
    """Training takes Ctrl-C over while it runs; a run that raises must hand it back, or the caller's next Ctrl-C
    (in a notebook, say) would only ask a finished run to stop."""
    import signal

    from transformers import TrainerCallback

    class FailAtFirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            raise RuntimeError("disk full")

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="disk full"):
        train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rule_pairs(16)), base_model=tiny_rm, output_dir=str(tmp_path / "rm"),
            eval_fraction=0, max_steps=2, batch_size=8, max_length=32, precision="fp32", progress=False,
            callbacks=[FailAtFirstStep()]))
    assert signal.getsignal(signal.SIGINT) is before


def test_eval_and_compare_say_when_they_score_pairs_the_model_trained_on(tmp_path, tiny_rm):
    """The model directory keeps a digest of each training pair (not its text), so evaluating on the training file
    by mistake is said, and counted in eval.json; the held-out pairs, or a model trained elsewhere, say nothing."""
    import warnings

    from reward.data import pair_digests

    rows = rule_pairs(40)
    result = train_reward_model(RewardTrainingConfig(
        data=datasets.Dataset.from_list(rows), base_model=tiny_rm, output_dir=str(tmp_path / "rm"), eval_fraction=0.25,
        max_steps=1, batch_size=8, max_length=32, precision="fp32", progress=False))
    digests = (Path(result.output_dir) / "training_pairs.txt").read_text().split()
    assert len(digests) == result.n_train == 30 and digests == sorted(digests)
    # The same pairs in another layout (plain strings, not messages) are the same pairs.
    plain = [{"prompt": r["prompt"][0]["content"], "chosen": r["chosen"][0]["content"],
              "rejected": r["rejected"][0]["content"]} for r in rows]
    assert set(pair_digests(plain)) == set(pair_digests(rows)) >= set(digests)
    with pytest.warns(UserWarning, match=rf"^data: 30 of its 40 pair\(s\) are pairs {result.output_dir} trained on: "
                      "accuracy on them measures memory, not generalisation$"):
        report = evaluate_reward_model(result.output_dir, plain, n_bootstrap=100)
    assert report["trained_on"] == 30
    with pytest.warns(UserWarning, match="30 of its 40 pair"):
        compare_reward_models(result.output_dir, tiny_rm, plain, n_bootstrap=100)
    held_out = [r for r, d in zip(rows, pair_digests(rows)) if d not in set(digests)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate_reward_model(result.output_dir, held_out, n_bootstrap=100)["trained_on"] == 0
        assert "trained_on" not in evaluate_reward_model(tiny_rm, held_out, n_bootstrap=100)  # no record to check


def test_held_out_pairs_that_are_also_training_pairs_are_counted_in_a_warning(tmp_path, tiny_rm):
    """A subset of the training pairs, written in another layout (plain strings rather than messages), is still
    the training pairs."""
    rows = rule_pairs(40)
    plain = [{"prompt": r["prompt"][0]["content"], "chosen": r["chosen"][0]["content"],
              "rejected": r["rejected"][0]["content"]} for r in rows[:10] + rule_pairs(2, seed=5)]
    with pytest.warns(UserWarning, match=r"eval_data: 10 of its 12 pair\(s\) are also in data"):
        train_reward_model(RewardTrainingConfig(
            data=datasets.Dataset.from_list(rows), eval_data=plain, base_model=tiny_rm,
            output_dir=str(tmp_path / "rm"), max_steps=1, batch_size=8, max_length=32, precision="fp32",
            progress=False))


def test_unknown_roles_and_conversations_without_a_response_are_warned_about(trained, tmp_path):
    rows = [{"prompt": [{"role": "human", "content": "q"}], "chosen": [{"role": "gpt", "content": "a"}],
             "rejected": [{"role": "gpt", "content": "b"}]}]
    with pytest.warns(UserWarning, match="data: role\\(s\\) 'gpt', 'human' are not system, user, assistant or tool "
                      "\\(first: data\\[0\\]\\)"):
        load_preferences(rows)
    result, _ = trained
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n"
                       + json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                  {"role": "assistant", "content": "good"}]}) + "\n")
    with pytest.warns(UserWarning, match="1 of 2 conversation\\(s\\) have no assistant turn"):
        score_file(result.output_dir, str(prompts), tmp_path / "scored.jsonl")
