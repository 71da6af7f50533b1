"""finetune/: each alignment method on tiny in-process models, the evaluation numbers, and bad inputs."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from collect.errors import UserError
from finetune.align import AlignConfig, align
from finetune.evaluate import EvalConfig, evaluate, win_rate, win_rate_interval
from finetune.policy import check_chat_template, load_policy, load_tokenizer
from finetune.prompts import fit_prompt, read_preferences, read_prompts
from finetune.sampling import completion_kl
from tests.tiny_models import tiny_causal_lm, tiny_lora_reward_adapter, tiny_reward_model, tiny_tokenizer

PROMPTS = [f"What is {i} plus {i + 1}?" for i in range(8)]
PROBES = [[{"role": "user", "content": text}] for text in ("Hello, who are you?", "Write a poem about the sea.",
                                                           "What is the capital of France?")]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"policy": tiny_causal_lm(root / "lm"), "reward": tiny_reward_model(root / "rm"),
            "judge": tiny_reward_model(root / "judge", seed=1)}


def preference_rows(n: int = 8) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"Say hello number {i}"}],
             "chosen": [{"role": "assistant", "content": "Hello! Happy to help."}],
             "rejected": [{"role": "assistant", "content": "Go away."}]} for i in range(n)]


def greedy(model, tokenizer, prompt) -> list[int]:
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True).to(model.device)  # load_policy puts it on a GPU if any
    out = model.generate(**ids, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def small_config(models, method: str, out, **overrides) -> AlignConfig:
    training_data = {"data": preference_rows()} if method == "dpo" else {"prompts": PROMPTS}
    fields = dict(
        **training_data, output_dir=out, method=method,
        policy=models["policy"], reward_model=None if method == "dpo" else models["reward"],
        max_steps=3, learning_rate=5e-2, max_completion_length=12, show_progress=False,
    )
    return AlignConfig(**(fields | overrides))


@pytest.mark.parametrize("method", ["grpo", "rloo", "dpo", "bon"])
def test_method_saves_an_adapter_that_reloads_and_changes_generations(models, tmp_path, method):
    result = align(small_config(models, method, tmp_path / method, merge=method == "dpo"))

    manifest = json.loads((result.output_dir / "prefloop.json").read_text())
    assert manifest["method"] == method
    assert manifest["base_policy"]["name"] == models["policy"]
    assert (manifest["reward_model"] is None) == (method == "dpo")
    assert manifest["config"]["max_steps"] == 3 and manifest["config"]["eval_prompts"] is None  # not "None"
    assert manifest["precision"] == "fp32"  # no GPU, and nothing launched it in another precision
    assert manifest["metrics"]["train_runtime_s"] > 0
    assert (result.output_dir / "adapter_config.json").exists()

    model, tokenizer = load_policy(models["policy"], str(result.output_dir))
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # LoRA B starts at zero: it moved
    aligned = [greedy(model, tokenizer, p) for p in PROBES]
    with model.disable_adapter():
        base = [greedy(model, tokenizer, p) for p in PROBES]
    assert aligned != base

    if method == "dpo":
        assert_merged_is_base_plus_adapter(models, result)


def assert_merged_is_base_plus_adapter(models, result) -> None:
    """The merged model is in the base's float32 and computes what base + adapter compute on the CPU."""
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    assert merged.dtype == torch.float32
    model, tokenizer = load_policy(models["policy"], str(result.output_dir), device="cpu")
    ids = tokenizer.apply_chat_template(PROBES[0], add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, model(input_ids=ids).logits, atol=1e-4)


def test_a_policy_trained_in_bf16_merges_in_float32(models, tmp_path, monkeypatch):
    """On a GPU the policy trains in bf16 (here forced on the CPU); merged in place, the model would be bf16 and
    would lose much of the LoRA update to rounding. The merge adds the saved adapter to the float32 base instead."""
    import finetune.align

    monkeypatch.setattr(finetune.align, "use_bf16", lambda: True)
    # As `accelerate launch` with mixed_precision bf16 passes it on: training runs in bf16, and the manifest says so.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    result = align(small_config(models, "dpo", tmp_path / "dpo", merge=True))
    assert json.loads((result.output_dir / "prefloop.json").read_text())["precision"] == "bf16"
    assert_merged_is_base_plus_adapter(models, result)


def test_progress_in_a_log_is_a_line_every_tenth_of_the_run(models, tmp_path, capsys):
    """Outside a terminal (a log file, CI, a cluster job) alignment prints whole lines, one every tenth of the
    run and one at the end, not a bar that Rich would draw once, at the end, cut to 80 columns."""
    align(small_config(models, "dpo", tmp_path / "dpo", max_steps=20, show_progress=True))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("dpo on ")]
    assert [line.split()[4] for line in lines] == [f"{step}/20" for step in range(2, 21, 2)]
    assert all(line.split()[5] == "loss" and float(line.split()[6]) > 0 for line in lines)


def test_ctrl_c_stops_alignment_after_the_step_and_saves_the_adapter(models, tmp_path, monkeypatch, capsys):
    """As in reward training: the first Ctrl-C ends the run after its step, the adapter so far is saved and
    prefloop.json says why it stopped; the caller's Ctrl-C handler is back afterwards."""
    import os
    import signal

    from transformers import TrainerCallback

    import finetune.align

    class CtrlCAtStepOne(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGINT)

    train = finetune.align._train
    monkeypatch.setattr(finetune.align, "_train", lambda config, model, tokenizer, data, callbacks, stop_early,
                        console: train(config, model, tokenizer, data, callbacks + [CtrlCAtStepOne()], stop_early,
                                       console))
    before = signal.getsignal(signal.SIGINT)
    result = align(small_config(models, "dpo", tmp_path / "dpo", max_steps=20))

    assert "stopping after this step and saving the model so far" in capsys.readouterr().out
    stopped_at = int(result.stopped.removeprefix("interrupted (Ctrl-C) at step ").split(" of ")[0])
    assert stopped_at == 2 and result.stopped.endswith(" of 20")  # the Ctrl-C came after StopEarly's step-1 check
    assert json.loads((result.output_dir / "prefloop.json").read_text())["stopped"] == result.stopped
    assert (result.output_dir / "adapter_model.safetensors").exists()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_time_budget_stops_alignment_and_saves_the_adapter(models, tmp_path):
    result = align(small_config(models, "dpo", tmp_path / "dpo", max_steps=10_000, time_budget_s=0.5))
    stopped_at = int(result.stopped.removeprefix("time budget at step ").split(" of ")[0])
    assert 1 <= stopped_at < 10_000
    assert json.loads((result.output_dir / "prefloop.json").read_text())["stopped"] == result.stopped
    with pytest.raises(UserError, match=r"time_budget_s \(--time-budget\) must be above 0"):
        small_config(models, "dpo", tmp_path / "never", time_budget_s=0)
    # A budget spent on the last step cut nothing: the run is not recorded as stopped.
    finished = align(small_config(models, "dpo", tmp_path / "one", max_steps=1, time_budget_s=0.001))
    assert finished.stopped is None


def test_what_would_fail_after_training_is_refused_before_it(models, tmp_path):
    """Each of these trained first and then failed, or saved an untrained adapter with exit 0."""
    cases = [
        # GRPO with fewer prompts than a step takes ran no step at all.
        (dict(method="grpo", prompts=PROMPTS[:1], prompts_per_step=2), "1 prompt(s) to train on, fewer than one step"),
        # A reward model as the policy trained a randomly initialised lm_head.
        (dict(method="dpo", policy=models["reward"]), "is not a causal language model"),
        # The evaluation's inputs: a reward model to compare with, prompts that exist, a judge that is one.
        (dict(method="dpo", eval_prompts=PROMPTS), "the evaluation needs a reward model to compare with"),
        (dict(method="grpo", eval_prompts=str(tmp_path / "nope.jsonl")), "nope.jsonl"),
        (dict(method="grpo", eval_prompts=PROMPTS, judge=models["policy"]), "not a sequence classifier"),
        # Each model names its option: with both given, the line says which one is missing.
        (dict(method="grpo", eval_prompts=PROMPTS, judge=str(tmp_path / "nojudge")), "judge (--judge): "),
        (dict(method="grpo", reward_model=str(tmp_path / "norm")), "reward model (--reward-model): "),
    ]
    for name, value, expected in (("num_generations", 0, "num_generations (--num-generations) must be at least 1"),
                                  ("temperature", 0.0, "temperature (--temperature) must be above 0"),
                                  ("learning_rate", -1.0, "learning_rate (--learning-rate) must be above 0"),
                                  ("lora_dropout", 2.0, "lora_dropout (--lora-dropout) must be in [0, 1)"),
                                  ("max_prompts", -1, "max_prompts (--max-prompts) must be at least 1")):
        with pytest.raises(UserError, match=re.escape(expected)):
            small_config(models, "bon", tmp_path / "out", **{name: value})
    # DPO's loss at beta 0 is log 2 whatever the weights: it trained nothing, exit 0 (other methods: no KL term).
    with pytest.raises(UserError, match=re.escape("beta (--beta) must be above 0 for dpo")):
        small_config(models, "dpo", tmp_path / "out", beta=0.0)
    assert small_config(models, "grpo", tmp_path / "out", beta=0.0).beta == 0.0
    cases.append((dict(method="dpo", lora_target_modules=["q_proj", "foo"]),
                  "lora_target_modules (--lora-target-modules) foo: no linear layer of the policy has that name"))
    for overrides, expected in cases:
        method = overrides.pop("method")
        with pytest.raises(UserError, match=re.escape(expected)):
            align(small_config(models, method, tmp_path / "out", **overrides))
        assert not (tmp_path / "out").exists(), overrides


def test_an_evaluation_that_is_no_independent_check_says_so(models, tmp_path):
    with pytest.warns(UserWarning, match=r"eval_prompts: 2 of 3 held-out prompt\(s\) are also training prompts"):
        result = align(small_config(models, "grpo", tmp_path / "grpo", max_steps=1,
                                    eval_prompts=PROMPTS[:2] + ["A prompt of its own?"]))
    with pytest.warns(UserWarning, match="is the training reward model: its win rate is no independent check"):
        evaluate(EvalConfig(adapter=str(result.output_dir), prompts=["A prompt of its own?"],
                            judge=models["reward"], show_progress=False))


def test_held_out_prompts_are_compared_as_training_fitted_them_and_for_dpo_too(models, tmp_path):
    """A long multi-turn prompt trains with its oldest turns dropped; held out as read, it never matched. DPO
    trains on its pairs' prompts, which the check left out."""
    long_turn = "word " * 200
    long = [{"role": "user", "content": long_turn}, {"role": "assistant", "content": long_turn},
            {"role": "user", "content": "And now?"}]
    with pytest.warns(UserWarning, match=r"eval_prompts: 1 of 2 held-out prompt\(s\) are also training prompts"), \
            pytest.raises(UserError, match="foo"):  # refused after the checks: no training needed to see them
        align(small_config(models, "grpo", tmp_path / "out", prompts=[long, "Other?"], max_prompt_length=64,
                           eval_prompts=[long, "A prompt of its own?"], lora_target_modules=["foo"]))
    pairs = preference_rows()
    with pytest.warns(UserWarning, match=r"eval_prompts: 1 of 2 held-out prompt\(s\) are also training prompts"), \
            pytest.raises(UserError, match="foo"):
        align(small_config(models, "dpo", tmp_path / "out", reward_model=models["reward"], lora_target_modules=["foo"],
                           eval_prompts=[pairs[0]["prompt"], "A prompt of its own?"]))


def test_a_judge_that_is_the_training_reward_model_is_said_before_training(models, tmp_path):
    # Said with the checks made before training: here training never starts (no such LoRA target), and it is said.
    with pytest.warns(UserWarning, match="is the training reward model"), pytest.raises(UserError, match="foo"):
        align(small_config(models, "grpo", tmp_path / "out", eval_prompts=["A prompt of its own?"],
                           judge=models["reward"], lora_target_modules=["foo"]))


def test_a_prompt_the_chat_template_refuses_is_named(models, tmp_path):
    from tests.tiny_models import CHAT_TEMPLATE

    strict = tmp_path / "strict.jinja"  # the tiny policy's own template, refusing a system turn as Llama 2's do
    strict.write_text("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not "
                      "supported') }}{% endif %}{% endfor %}" + CHAT_TEMPLATE)
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "system", "content": "Be terse."},
                                                     {"role": "user", "content": "hello"}]]
    with pytest.raises(UserError) as e:
        align(small_config(models, "grpo", tmp_path / "out", prompts=prompts, chat_template=str(strict)))
    assert str(e.value) == ("prompts: the prompt that starts 'Be terse.': the policy's chat template refuses it "
                            "(System role not supported)")


def test_the_evaluation_fits_prompts_to_the_length_the_adapter_trained_with(models, tmp_path, monkeypatch):
    """It fitted them to 256 tokens whatever the training's --max-prompt-length, and dropped longer ones unsaid."""
    import finetune.evaluate

    result = align(small_config(models, "dpo", tmp_path / "dpo", max_steps=1, max_prompt_length=300))
    lengths = []
    real = finetune.evaluate.fit_prompts
    monkeypatch.setattr(finetune.evaluate, "fit_prompts",
                        lambda tok, prompts, n: lengths.append(n) or real(tok, prompts, n))
    for asked, used in ((None, 300), (40, 40)):
        evaluate(EvalConfig(adapter=str(result.output_dir), prompts=PROMPTS[:2], reward_model=models["reward"],
                            max_prompt_length=asked, show_progress=False))
        assert lengths[-1] == used
    with pytest.raises(UserError, match=r"max_completion_length \(--max-completion-length\) must be at least 1, got 0"):
        evaluate(EvalConfig(adapter=str(result.output_dir), prompts=PROMPTS, max_completion_length=0))
    # A seed the win rate's bootstrap (numpy) refuses failed after all the sampling.
    with pytest.raises(UserError, match=r"^seed \(--seed\) must be between 0 and 2\*\*32 - 1, got -1$"):
        evaluate(EvalConfig(adapter=str(result.output_dir), prompts=PROMPTS, seed=-1))
    # --out is the JSON report: a .png there was overwritten by the plot, a folder failed after all the sampling.
    for out, expected in ((tmp_path / "report.png", "name a .json file"), (tmp_path, "is a folder; name a file")):
        with pytest.raises(UserError, match=re.escape(expected)):
            evaluate(EvalConfig(adapter=str(result.output_dir), prompts=PROMPTS, out=str(out)))
    # Another base than the one the adapter was trained on: named, not a size-mismatch traceback.
    wider = tiny_causal_lm(tmp_path / "wider", hidden_size=64)
    with pytest.raises(UserError, match=r"does not fit policy .*wider .*pass the policy it was trained from"):
        load_policy(wider, str(result.output_dir))


def test_an_adapter_is_checked_against_the_stop_tokens_of_its_policy(models, tmp_path):
    """A policy whose turns end on a token its generation config names but its tokenizer's EOS is not (the first
    Llama-3-Instruct release: <|eot_id|> against <|end_of_text|>): its adapter folder has the tokenizer and no
    generation config, and a good adapter was refused as if its template belonged to another model."""
    import shutil

    from transformers import AutoTokenizer

    policy = tmp_path / "lm"
    shutil.copytree(models["policy"], policy)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    turn_end = tokenizer.eos_token
    tokenizer.chat_template = tokenizer.chat_template.replace("{{ eos_token }}", turn_end)  # the turn's own end
    tokenizer.eos_token = tokenizer.unk_token
    tokenizer.save_pretrained(policy)
    assert turn_end in tokenizer.apply_chat_template([{"role": "assistant", "content": "x"}], tokenize=False)
    result = align(small_config(models, "dpo", tmp_path / "dpo", policy=str(policy), max_steps=1))
    model, loaded = load_policy(str(policy), str(result.output_dir))
    assert loaded.eos_token == tokenizer.unk_token


def test_an_adapter_made_from_a_relative_policy_path_evaluates_from_anywhere(models, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(models["policy"], tmp_path / "lm")
    monkeypatch.chdir(tmp_path)
    result = align(small_config(models, "dpo", tmp_path / "dpo", policy="lm", max_steps=1))
    manifest = json.loads((result.output_dir / "prefloop.json").read_text())
    assert manifest["base_policy"] == {"name": "lm", "path": str(tmp_path / "lm")}
    monkeypatch.chdir(tmp_path.parent)
    report = evaluate(EvalConfig(adapter=str(result.output_dir), prompts=PROMPTS[:2], reward_model=models["reward"],
                                 show_progress=False))
    assert report.summary["n_prompts"] == 2 and report.summary["policy"] == str(tmp_path / "lm")
    # `prefloop generate --policy aligned=ADAPTER` and PEFT's own loaders find the base from here too.
    from collect.generate import GenerationSettings, LocalBackend, parse_model

    spec = parse_model(f"aligned={result.output_dir}")
    assert spec.model == "lm"  # as named: what a round is keyed on
    assert LocalBackend(spec, GenerationSettings()).info["path"] == str(tmp_path / "lm")
    peft_config = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert peft_config["base_model_name_or_path"] == str(tmp_path / "lm")


def test_ctrl_c_or_the_budget_while_best_of_n_samples_ends_sampling_and_saves(models, tmp_path, monkeypatch, capsys):
    """Best-of-n spends most of its time sampling, before training: the first Ctrl-C there (or the time budget
    running out) ends sampling after the current batch; training then stops after its first step (the stop still
    stands) and the adapter is saved, as a stop during training would be. Four batches of two prompts are planned
    (8 prompts, 4 samples each, 8 sequences a batch)."""
    import os
    import signal

    import finetune.best_of_n

    sample = finetune.best_of_n.sample

    def ctrl_c_in_the_first_batch(*args, should_stop, **kwargs):
        def ctrl_c_then_ask(sampled: int, total: int) -> bool:
            os.kill(os.getpid(), signal.SIGINT)
            return should_stop(sampled, total)
        return sample(*args, should_stop=ctrl_c_then_ask, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(finetune.best_of_n, "sample", ctrl_c_in_the_first_batch)
        before = signal.getsignal(signal.SIGINT)
        interrupted = align(small_config(models, "bon", tmp_path / "ctrl-c", max_steps=4, num_generations=4))
        assert signal.getsignal(signal.SIGINT) is before
    assert "stopping after this sampling batch and saving the model so far" in capsys.readouterr().out
    out_of_time = align(small_config(models, "bon", tmp_path / "budget", max_steps=4, num_generations=4,
                                     time_budget_s=0.001))

    for result, why in ((interrupted, "interrupted (Ctrl-C)"), (out_of_time, "time budget")):
        assert result.stopped == f"{why} while sampling, after 2 of 8 prompts; training stopped at step 1 of 4"
        manifest = json.loads((result.output_dir / "prefloop.json").read_text())
        assert manifest["stopped"] == result.stopped
        assert manifest["metrics"]["bon_prompts"] == 2 == result.metrics["bon_prompts"]
        assert (result.output_dir / "adapter_model.safetensors").exists()


def test_grpo_length_penalty(models, tmp_path):
    result = align(small_config(models, "grpo", tmp_path / "lp", length_penalty=0.5, max_steps=1))
    # One reward per function is logged; the total reward includes -0.5 per token (>= 1 token each).
    assert result.metrics["first_reward"] < -0.4


def test_the_reward_function_reads_prompts_as_reward_training_reads_them(models):
    """TRL hands the reward function prompts and completions as strings or as messages; a prompt string in HH's
    layout (as Dahoas/rm-static keeps prompts) is the turns it holds, as the reward model's training pairs read it."""
    from finetune.rewards import RewardFunction, load_scorer

    reward = RewardFunction(load_scorer(models["reward"], device="cpu"))
    as_messages = reward([[{"role": "user", "content": "Name a colour."}]], [[{"role": "assistant", "content": "Red"}]])
    assert reward(["Name a colour."], ["Red"]) == as_messages
    assert reward(["\n\nHuman: Name a colour.\n\nAssistant:"], ["Red"]) == as_messages
    assert reward(["Human: Name a colour.\n\nAssistant:"], ["Red"]) == as_messages
    assert reward(["Name a colour."], ["Blue"]) != as_messages
    with pytest.raises(UserError, match=r"^completion 0: field 'completion\[0\]': expected a message"):
        reward(["Name a colour."], [["Red"]])


def test_best_of_n_prefers_a_finished_response_to_a_cut_off_one(tmp_path, monkeypatch):
    """A response cut off at max_completion_length teaches the policy to stop there: it is picked only where no
    response finished, and the run warns how often that happened."""
    import torch

    import finetune.best_of_n as bon
    from finetune.sampling import Samples

    texts = [["a long answer that ran out", "short"], ["cut one", "cut two, longer"]]
    monkeypatch.setattr(bon, "sample", lambda *a, **k: Samples(texts=texts, token_ids=[[[1], [2]]] * 2, indices=[0, 1],
                                                               finished=[[False, True], [False, False]]))
    monkeypatch.setattr(bon, "score", lambda scorer, conversations: [float(len(c[-1]["content"]))
                                                                     for c in conversations])  # longer scores higher
    config = AlignConfig(prompts=PROMPTS, output_dir=tmp_path / "out", method="bon", policy="unused",
                         reward_model="unused", num_generations=2, max_completion_length=12)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS[:2]]
    with pytest.warns(UserWarning, match=r"^best-of-n: 1 of 2 prompt\(s\) had no response that finished within "
                      r"max_completion_length \(12 tokens"):
        rows, stats = bon.best_responses(config, torch.nn.Linear(1, 1), None, prompts, scorer=None)
    assert [row["completion"][0]["content"] for row in rows] == ["short", "cut two, longer"]
    assert stats["bon_picked_cut_off"] == 1
    # Every response is scored: the mean over all of them is what picking is measured against.
    assert stats["bon_mean_reward_all"] == pytest.approx(sum(map(len, texts[0] + texts[1])) / 4)


def test_best_of_n_fine_tunes_on_the_highest_scored_sample(models, tmp_path):
    """The SFT rows are exactly, per prompt, the sample the reward model scores highest."""
    from finetune.best_of_n import best_responses
    from finetune.rewards import load_scorer
    from finetune.sampling import sample

    config = small_config(models, "bon", tmp_path / "bon", num_generations=4, temperature=1.0)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    model, tokenizer = load_policy(models["policy"])
    scorer = load_scorer(models["reward"], device="cpu")
    rows, stats = best_responses(config, model, tokenizer, prompts, scorer)

    # The same draws (same seed and settings), each sample scored on its own.
    samples = sample(model, tokenizer, prompts, n=4, max_new_tokens=config.max_completion_length,
                     temperature=1.0, seed=config.seed)
    expected, picks, best_rewards = [], [], []
    for prompt, texts, finished in zip(prompts, samples.texts, samples.finished):
        # The finished responses compete; the cut-off ones only where none finished.
        candidates = [t for t, done in zip(texts, finished) if t and done] or [t for t in texts if t]
        rewards = [float(scorer.score([prompt + [{"role": "assistant", "content": t}]]).mean[0]) for t in candidates]
        pick = max(range(len(candidates)), key=rewards.__getitem__)
        expected.append({"prompt": prompt, "completion": [{"role": "assistant", "content": candidates[pick]}]})
        picks.append(pick)
        best_rewards.append(rewards[pick])
    assert rows == expected
    assert any(pick != 0 for pick in picks)  # taking the first sample would not pass
    assert stats["bon_prompts"] == len(PROMPTS)
    assert stats["bon_mean_reward_best"] == pytest.approx(sum(best_rewards) / len(best_rewards), abs=1e-5)
    assert stats["bon_picked_cut_off"] == sum(not any(done for t, done in zip(texts, finished) if t)
                                              for texts, finished in zip(samples.texts, samples.finished))



def test_best_of_n_under_two_ranks_shares_the_sampling_and_stops_together(models, tmp_path):
    """Under `accelerate launch` (here two CPU ranks under torchrun) each rank samples and scores half the prompts,
    and both get every row: the rows one process picks. The stop is rank 0's call, at the same point on both
    ranks, so a rank whose clock crossed the budget first neither stops alone nor leaves the other waiting."""
    from pathlib import Path

    from finetune.best_of_n import best_responses
    from finetune.rewards import load_scorer
    from tests.ranks import TORCHRUN, run_ranks

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    script = Path(__file__).with_name("align_two_ranks.py")

    def launch(way: str) -> None:
        run_ranks([*TORCHRUN, str(script), models["policy"], models["reward"], str(prompts), str(tmp_path / way), way],
                  "sampling")

    launch("rows")
    ranks = [json.loads((tmp_path / f"rows.rank{r}.json").read_text()) for r in (0, 1)]
    # 8 prompts, 4 samples each, 8 sequences a batch: chunks of 2 prompts, dealt out in turn.
    assert [r["sampled_here"] for r in ranks] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert [r["stopped"] for r in ranks] == [None, None]  # rank 1's spent budget is not rank 0's
    config = small_config(models, "bon", tmp_path / "one", num_generations=4, temperature=1.0)
    model, tokenizer = load_policy(models["policy"])
    rows, stats = best_responses(config, model, tokenizer, [[{"role": "user", "content": p}] for p in PROMPTS],
                                 load_scorer(models["reward"], device="cpu"))
    for rank in ranks:
        assert rank["rows"] == rows
        assert rank["stats"] == pytest.approx(stats, abs=1e-5)

    launch("budget")
    manifest = json.loads((tmp_path / "budget" / "prefloop.json").read_text())
    assert manifest["stopped"] == "time budget while sampling, after 4 of 8 prompts; training stopped at step 1 of 4"
    assert manifest["metrics"]["bon_prompts"] == 4
    assert (tmp_path / "budget" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("method", ["grpo", "rloo", "dpo"])
def test_each_method_trains_under_two_ranks_and_saves_once(models, tmp_path, method):
    """`accelerate launch "$(which prefloop)" align`, as the README has it, here on two CPU ranks under torchrun:
    the ranks train together, the first saves (dpo also merges; grpo then evaluates alone while the other rank
    leaves), and no rank hangs or aborts on the way out. The manifest says how the run was launched."""
    import sys
    from pathlib import Path

    from tests.ranks import TORCHRUN, run_ranks

    data = tmp_path / "data.jsonl"
    rows = preference_rows() if method == "dpo" else [{"prompt": p} for p in PROMPTS]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / method
    command = [*TORCHRUN, str(Path(sys.executable).with_name("prefloop")), "align", "--method", method,
               "--policy", models["policy"], "--data" if method == "dpo" else "--prompts", str(data),
               "--out", str(out), "--max-steps", "3", "--learning-rate", "0.05", "--max-completion-length", "12",
               "--seed", "0"]
    if method == "dpo":
        command.append("--merge")
    else:
        command += ["--reward-model", models["reward"]]
    if method == "grpo":
        command += ["--eval-prompts", str(data)]
    run_ranks(command, "training")

    manifest = json.loads((out / "prefloop.json").read_text())
    assert (manifest["processes"], manifest["distributed"]) == (2, "MULTI_CPU")
    assert (manifest["evaluation"] is not None) == (method == "grpo")
    model, _ = load_policy(models["policy"], str(out), device="cpu")
    assert any(p.abs().max() > 0 for name, p in model.named_parameters() if "lora_B" in name)
    assert (out / "merged" / "config.json").exists() == (method == "dpo")


# ------------------------------------------------------------------------------------------ evaluation


def test_win_rate_and_interval_by_hand():
    # aligned wins, ties, loses: (1 + 0.5 + 0) / 3
    assert win_rate([3.0, 1.0, 2.0], [1.0, 1.0, 5.0]) == pytest.approx(0.5)
    assert win_rate([2.0, 2.0], [1.0, 0.0]) == 1.0
    low, high = win_rate_interval([1.0] * 10, [0.0] * 10)
    assert low == high == 1.0
    low, high = win_rate_interval([1.0, 0.0] * 20, [0.0, 1.0] * 20)
    assert low < 0.5 < high
    with pytest.raises(ValueError):
        win_rate([], [])


def test_completion_kl_matches_a_hand_computed_sum(models):
    """At each completion token, KL between the adapter's and the base's next-token distributions, summed."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_policy(models["policy"], device="cpu")  # fp32: the check is to 1e-4
    torch.manual_seed(0)  # init_lora_weights=False: B is random too, so the adapter changes the model
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                             init_lora_weights=False)).eval()
    prompt = PROBES[0]
    completion = tokenizer("Paris", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        aligned = torch.log_softmax(model(input_ids=ids).logits[0] / 0.5, dim=-1)
        with model.disable_adapter():
            base = torch.log_softmax(model(input_ids=ids).logits[0] / 0.5, dim=-1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(completion))
    expected = sum(float(sum(aligned[t].exp()[v] * (aligned[t][v] - base[t][v]) for v in range(aligned.shape[-1])))
                   for t in positions)
    # Batched with a longer row, so the right padding is exercised too.
    got = completion_kl(model, tokenizer, [prompt, PROBES[1]], [completion, completion * 3], temperature=0.5)
    assert expected > 0.01 and got[0] == pytest.approx(expected, abs=1e-4)
    assert got[1] > 0


def test_untrained_adapter_evaluates_as_a_tie_with_zero_kl(models, tmp_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune.training import lora_config

    adapter = tmp_path / "zero"
    base = AutoModelForCausalLM.from_pretrained(models["policy"])
    get_peft_model(base, lora_config(4, 8, 0.0, "all-linear")).save_pretrained(adapter)  # B = 0: the identity
    result = evaluate(EvalConfig(adapter=str(adapter), prompts=PROMPTS, policy=models["policy"],
                                 reward_model=models["reward"], judge=models["judge"], max_completion_length=10,
                                 show_progress=False))
    s = result.summary
    assert s["n_prompts"] == len(PROMPTS)
    assert s["win_rate_reward_model"] == s["win_rate_judge"] == 0.5
    assert abs(s["kl_to_base"]) < 1e-4
    assert s["mean_length_base"] == s["mean_length_aligned"]
    assert s["mean_reward_judge_base"] == pytest.approx(s["mean_reward_judge_aligned"])


def test_a_folder_that_is_not_an_adapter_is_named_as_what_it_is(models, tmp_path):
    """A reward model's folder as --adapter said "no prefloop.json naming its base policy" (it has one), and with
    --policy, that the policy has no chat template."""
    reward = tmp_path / "rm"
    reward.mkdir()
    (reward / "prefloop.json").write_text(json.dumps({"kind": "reward_model"}))
    plain = tmp_path / "plain"
    plain.mkdir()
    for folder, said in ((reward, "holds a reward_model (prefloop.json says so), not the adapter `prefloop align` "
                                  "writes"),
                         (plain, "not a PEFT adapter (no adapter_config.json)")):
        with pytest.raises(UserError) as e:
            evaluate(EvalConfig(adapter=str(folder), prompts=PROMPTS, policy=models["policy"],
                                reward_model=models["reward"], show_progress=False))
        assert str(e.value) == f"adapter {folder}: {said}"


def test_evaluation_of_a_trained_adapter_writes_report_plot_and_manifest(models, tmp_path):
    out = tmp_path / "dpo"
    align(small_config(models, "dpo", out))
    result = evaluate(EvalConfig(adapter=str(out), prompts=PROMPTS, reward_model=models["reward"],
                                 judge=models["judge"], max_completion_length=10, n_examples=2,
                                 show_progress=False))
    s = result.summary
    assert s["kl_to_base"] > 0.01  # trained with a large learning rate: the policy moved (an untrained one: 0)
    assert 0.0 <= s["win_rate_judge"] <= 1.0
    assert s["win_rate_judge_ci95"][0] <= s["win_rate_judge"] <= s["win_rate_judge_ci95"][1]
    report = json.loads(result.json_path.read_text())
    assert len(report["examples"]) == 2 and {"base", "aligned", "judge_base"} <= set(report["examples"][0])
    assert result.png_path.read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "prefloop.json").read_text())
    assert manifest["evaluation"]["kl_to_base"] == pytest.approx(s["kl_to_base"])


# ----------------------------------------------------------------------------------------- bad inputs


def test_reward_model_that_is_not_a_sequence_classifier(models, tmp_path):
    with pytest.raises(UserError, match="not a sequence classifier"):
        align(small_config(models, "grpo", tmp_path / "x", reward_model=models["policy"]))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(models["reward"])
    config.num_labels = 2  # a classifier with two classes: the check reads the config only
    config.save_pretrained(tmp_path / "two")
    two = str(tmp_path / "two")
    with pytest.raises(UserError, match="2 outputs"):
        align(small_config(models, "rloo", tmp_path / "y", reward_model=two))
    with pytest.raises(UserError, match="no such directory"):
        align(small_config(models, "bon", tmp_path / "z", reward_model=str(tmp_path / "missing")))
    with pytest.raises(UserError, match="needs a reward model"):
        small_config(models, "grpo", tmp_path / "w", reward_model=None)


def test_a_lora_reward_adapter_is_a_reward_model(models, tmp_path):
    """--reward-model and --judge take a LoRA reward adapter, scored on its base as `prefloop reward score` scores it;
    one that brings no score head is refused before training, not used with a head drawn at random."""
    adapter = tiny_lora_reward_adapter(tmp_path / "rm-lora", models["policy"])
    result = align(small_config(models, "grpo", tmp_path / "a", reward_model=adapter, max_steps=1))
    manifest = json.loads((tmp_path / "a" / "prefloop.json").read_text())
    assert manifest["reward_model"]["path"] == adapter and math.isfinite(result.metrics["first_reward"])
    # A judge is loaded only for the evaluation after training; what its files tell is checked before.
    headless = tiny_lora_reward_adapter(tmp_path / "headless", models["policy"], with_head=False)
    with pytest.raises(UserError, match="brings no score head"):
        align(small_config(models, "grpo", tmp_path / "b", judge=headless, eval_prompts=PROMPTS[:2], max_steps=1))
    assert not (tmp_path / "b").exists()


def test_an_output_folder_of_other_files_is_refused_before_training(models, tmp_path):
    """The check runs before the policy loads: a run of hours must not fail when it saves."""
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"holds other files \(no prefloop.json\)"):
        align(small_config(models, "grpo", tmp_path / "theirs"))
    assert [p.name for p in (tmp_path / "theirs").iterdir()] == ["notes.txt"]
    # A reward model's folder also holds a prefloop.json: named as --out (a typo, or the --reward-model path pasted), it
    # was replaced by the adapter. Refused, both ways round.
    from reward.train import RewardTrainingConfig, train_reward_model

    reward_dir = tmp_path / "rm"
    reward_dir.mkdir()
    (reward_dir / "prefloop.json").write_text(json.dumps({"kind": "reward_model"}))
    with pytest.raises(UserError, match=r"holds a reward_model \(prefloop.json says so\), not an earlier output"):
        align(small_config(models, "grpo", reward_dir))
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    (aligned / "prefloop.json").write_text(json.dumps({"kind": "prefloop.aligned_policy"}))
    with pytest.raises(UserError, match=r"holds a prefloop.aligned_policy \(prefloop.json says so\)"):
        train_reward_model(RewardTrainingConfig(data=preference_rows(), base_model=models["reward"],
                                                output_dir=str(aligned)))
    assert json.loads((reward_dir / "prefloop.json").read_text()) == {"kind": "reward_model"}
    # The prompts kept in an earlier run's folder would go with it as the new adapter replaces it: refused, kept.
    prompts = aligned / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    for field, flag in (("prompts", "--prompts"), ("eval_prompts", "--eval-prompts")):
        with pytest.raises(UserError, match=rf"^output_dir \(--out\) {aligned}: holds {field} \({flag}\) {prompts}, "
                           "which the new output would delete"):
            align(small_config(models, "grpo", aligned, **{field: str(prompts)}))
    assert prompts.is_file()


def test_empty_prompts(models, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no prompts"):
        align(small_config(models, "grpo", tmp_path / "a", prompts=str(empty)))
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"prompt": "  "}) + "\n")
    with pytest.raises(UserError, match=r"blank.jsonl:2: field 'prompt'"):
        read_prompts(str(blank))
    with pytest.raises(UserError, match="no prompts"):
        read_prompts([])
    with pytest.raises(UserError, match="field 'prompt': is missing"):
        read_prompts([{"text": "hi"}])
    with pytest.raises(UserError, match="'rejected': is missing"):
        read_preferences([{"prompt": "q", "chosen": "a"}])


def test_missing_and_mismatched_chat_template(models, tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(UserError, match="no chat template"):
        check_chat_template(tokenizer, "tiny")
    # A Llama-3 style template: its end-of-turn marker is no token of this tokenizer.
    llama3 = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
              "<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
              "\n\n{% endif %}")
    with pytest.raises(UserError, match="belongs to another model"):
        align(small_config(models, "dpo", tmp_path / "t", chat_template=llama3))
    broken = "{% for m in messages %}{{ m['content'] | no_such_filter }}{% endfor %}"
    with pytest.raises(UserError, match="chat template"):
        load_tokenizer(models["policy"], broken)
    # The tokenizer's own template passes, with the model's EOS as its end of turn.
    check_chat_template(tiny_tokenizer(), "tiny")


def test_prompts_in_every_form(tmp_path):
    import datasets

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert read_prompts(["Hi"]) == [[{"role": "user", "content": "Hi"}]]
    assert read_prompts([conversation]) == [conversation]  # how the collection database hands them over
    assert read_prompts(datasets.Dataset.from_list([{"prompt": conversation}])) == [conversation]
    path = tmp_path / "p.parquet"
    datasets.Dataset.from_list([{"prompt": "Hi"}, {"prompt": "Bye"}]).to_parquet(str(path))
    assert [p[0]["content"] for p in read_prompts(str(path))] == ["Hi", "Bye"]
    with pytest.raises(UserError, match="last message must be the user's"):
        read_prompts([conversation + [{"role": "assistant", "content": "Hello"}]])
    with pytest.raises(UserError, match="no such file"):
        read_prompts(str(tmp_path / "missing.jsonl"))


def test_sampling_repeats_with_the_same_seed(models):
    from finetune.sampling import sample

    model, tokenizer = load_policy(models["policy"])
    first = sample(model, tokenizer, PROBES, n=2, max_new_tokens=8, temperature=1.0, seed=7, batch_size=4)
    again = sample(model, tokenizer, PROBES, n=2, max_new_tokens=8, temperature=1.0, seed=7, batch_size=4)
    other = sample(model, tokenizer, PROBES, n=2, max_new_tokens=8, temperature=1.0, seed=8, batch_size=4)
    assert first.token_ids == again.token_ids
    assert first.token_ids != other.token_ids
    assert [len(t) for t in first.texts] == [2, 2, 2]


def test_lora_targets_are_matched_as_peft_matches_them(models):
    """GPT-2's attention is a Conv1D, which LoRA wraps; a dotted name matches the end of a module's path."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    from finetune.training import check_lora_targets

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    check_lora_targets(gpt2, ["c_attn", "c_proj"])
    llama = AutoModelForCausalLM.from_pretrained(models["policy"])
    check_lora_targets(llama, ["self_attn.q_proj", "v_proj"])
    for model, targets in ((gpt2, ["attn.c_attn", "q_proj"]), (llama, ["mlp.q_proj"])):
        with pytest.raises(UserError, match=r"^lora_target_modules \(--lora-target-modules\) (q_proj|mlp.q_proj): "):
            check_lora_targets(model, targets)


def test_fit_prompt_drops_oldest_turns(models):
    tokenizer = load_tokenizer(models["policy"])
    long_turn = "word " * 200
    conversation = [{"role": "user", "content": long_turn}, {"role": "assistant", "content": long_turn},
                    {"role": "user", "content": "And now?"}]
    assert fit_prompt(tokenizer, conversation, 64) == conversation[-1:]
    assert fit_prompt(tokenizer, conversation, 10_000) == conversation
    assert fit_prompt(tokenizer, [{"role": "user", "content": long_turn}], 64) is None
    # Only to fit: a whole conversation that fits keeps a leading assistant turn (a greeting the user answered).
    greeted = [{"role": "assistant", "content": "Hi! How can I help?"}, {"role": "user", "content": "And now?"}]
    assert fit_prompt(tokenizer, greeted, 10_000) == greeted
    # A template that wants the roles to alternate from a user turn (Llama-2, Mistral, Gemma) gets the user turn on.
    tokenizer.chat_template = ("{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must "
                               "alternate user/assistant') }}{% endif %}" + tokenizer.chat_template)
    assert fit_prompt(tokenizer, greeted, 10_000) == greeted[1:]


def test_cli_run_and_eval(models, tmp_path):
    from typer.testing import CliRunner

    from finetune.cli import app

    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in preference_rows()))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = tmp_path / "cli"
    runner = CliRunner()
    result = runner.invoke(app, ["--method", "dpo", "--policy", models["policy"], "--data", str(prefs),
                                 "--out", str(out), "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "prefloop.json").read_text())["config"]["max_steps"] == 2
    result = runner.invoke(app, ["eval", "--adapter", str(out), "--prompts", str(prompts), "--reward-model",
                                 models["reward"], "--max-completion-length", "8", "--max-prompts", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "evaluation.json").read_text())["summary"]["n_prompts"] == 4
    result = runner.invoke(app, ["--method", "nope", "--prompts", str(prompts), "--out", str(out)])
    assert isinstance(result.exception, UserError)
    result = runner.invoke(app, ["--method", "dpo", "--data", str(prefs)])
    assert result.exit_code == 2 and "'--out'" in result.output and "required" in result.output


def test_options_given_before_eval_are_refused_not_ignored(tmp_path):
    """The options before `eval` are the training's: `prefloop align --policy P eval ...` evaluated without them, as
    if they had not been given. An environment variable (PREFLOOP_DB for --db) is no option given. The usage line
    shows the subcommand as the option it is: without one, `prefloop align` trains."""
    from typer.testing import CliRunner

    from finetune.cli import app

    runner = CliRunner()
    adapter = str(tmp_path / "adapter")
    result = runner.invoke(app, ["--max-completion-length", "8", "--policy", "lm", "eval", "--adapter", adapter,
                                 "--prompts", "held_out.jsonl"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert ("--policy, --max-completion-length before `eval`: training options, which `align eval` does not read; "
            "give its own options after `eval`") in result.output
    from_env = runner.invoke(app, ["eval", "--adapter", adapter, "--prompts", "held_out.jsonl"],
                             env={"PREFLOOP_DB": f"sqlite:///{tmp_path / 'other.db'}"})
    assert isinstance(from_env.exception, UserError) and "no such directory" in str(from_env.exception)
    described = " ".join(runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).output.split())
    assert "[OPTIONS] [eval [OPTIONS]]" in described
    assert "SQLAlchemy URL of the collection database (default sqlite:///prefloop.db)." in described


def test_the_command_line_options_are_the_config_fields(tmp_path, monkeypatch):
    """Each option sets the AlignConfig or EvalConfig field of its name (one spelling each: --reward-model, not
    also --reward); --project is a ProjectPrompts, of prompts or, for dpo, of its judged pairs."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import finetune.align
    import finetune.evaluate
    from finetune.cli import app
    from finetune.prompts import ProjectPrompts

    seen = {}
    monkeypatch.setattr(finetune.align, "align", lambda config: seen.setdefault("align", []).append(config))
    monkeypatch.setattr(finetune.evaluate, "evaluate", lambda config: seen.setdefault("eval", []).append(config)
                        or SimpleNamespace(json_path="report.json", png_path="report.png"))
    runner = CliRunner()
    out = str(tmp_path / "adapter")
    for args in (["--method", "dpo", "--data", "prefs.jsonl", "--reward-model", "rm", "--lora-r", "8"],
                 ["--method", "dpo", "--project", "hh", "--db", "sqlite:///hh.db"],
                 ["--method", "grpo", "--project", "hh", "--db", "sqlite:///hh.db", "--reward-model", "rm"]):
        result = runner.invoke(app, [*args, "--out", out])
        assert result.exit_code == 0, result.output + repr(result.exception)
    pairs, project_pairs, project_prompts = seen["align"]
    assert (pairs.data, pairs.prompts, pairs.reward_model, pairs.lora_alpha) == ("prefs.jsonl", None, "rm", 16)
    assert (project_pairs.data, project_pairs.prompts) == (ProjectPrompts("hh", "sqlite:///hh.db"), None)
    assert (project_prompts.prompts, project_prompts.data) == (ProjectPrompts("hh", "sqlite:///hh.db"), None)

    result = runner.invoke(app, ["eval", "--adapter", out, "--prompts", "held_out.jsonl", "--reward-model", "rm",
                                 "--max-prompts", "10", "--max-completion-length", "32", "--max-prompt-length", "128",
                                 "--top-p", "0.9", "--batch-size", "4", "--n-examples", "5"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    (evaluation,) = seen["eval"]
    assert (evaluation.reward_model, evaluation.max_prompts, evaluation.max_completion_length,
            evaluation.max_prompt_length, evaluation.top_p, evaluation.batch_size, evaluation.n_examples) == (
        "rm", 10, 32, 128, 0.9, 4, 5)
    for old in (["--reward", "rm"], ["eval", "--reward", "rm"], ["eval", "--max-new-tokens", "8"],
                ["eval", "--examples", "2"]):
        refused = runner.invoke(app, old)
        assert refused.exit_code == 2 and f"No such option: {old[-2]}" in refused.output, old


def test_dpo_trains_on_data_and_the_other_methods_on_prompts(tmp_path):
    """DPO's preference pairs are `data`, as `reward train` names the same file; grpo, rloo and bon sample responses
    to `prompts`. Each given as the other is refused, in Python and on the command line."""
    from typer.testing import CliRunner

    from finetune.cli import app

    pairs, out = preference_rows(), tmp_path / "adapter"
    assert AlignConfig(method="dpo", data=pairs, output_dir=out).data == pairs
    with pytest.raises(UserError, match=re.escape("method dpo trains on preference pairs, not on prompts: give them "
                                                  "as data (--data), not as prompts (--prompts)")):
        AlignConfig(method="dpo", prompts=pairs, output_dir=out)
    with pytest.raises(UserError, match=re.escape("method dpo needs preference pairs: data (--data, or --project)")):
        AlignConfig(method="dpo", output_dir=out)
    for method in ("grpo", "rloo", "bon"):
        with pytest.raises(UserError, match=re.escape(f"method {method} samples its own responses to prompts: give "
                                                      "them as prompts (--prompts)")):
            AlignConfig(method=method, data=pairs, reward_model="rm", output_dir=out)
    with pytest.raises(UserError, match=re.escape("method grpo needs prompts: prompts (--prompts, or --project)")):
        AlignConfig(method="grpo", reward_model="rm", output_dir=out)

    runner = CliRunner()
    as_prompts = runner.invoke(app, ["--method", "dpo", "--prompts", "prefs.jsonl", "--out", str(out)])
    assert isinstance(as_prompts.exception, UserError) and "give them as data (--data)" in str(as_prompts.exception)
    missing = runner.invoke(app, ["--method", "dpo", "--out", str(out)], env={"COLUMNS": "300"})
    assert missing.exit_code == 2 and "Missing option '--data' or '--project'" in missing.output
    both = runner.invoke(app, ["--method", "dpo", "--data", "a.jsonl", "--prompts", "b.jsonl", "--out", str(out)],
                         env={"COLUMNS": "300"})
    assert both.exit_code == 2 and "--prompts and --data are mutually exclusive" in both.output
    assert not out.exists()


def test_lora_alpha_is_twice_the_rank_unless_given(tmp_path):
    """As reward models train: the same update scale at any rank (at the default rank 16, alpha 32 as before)."""
    def config(**lora) -> AlignConfig:
        return AlignConfig(method="dpo", data=preference_rows(), output_dir=tmp_path / "adapter", **lora)

    assert (config().lora_r, config().lora_alpha) == (16, 32)
    assert config(lora_r=4).lora_alpha == 8
    assert config(lora_r=4, lora_alpha=4).lora_alpha == 4
    with pytest.raises(UserError, match=re.escape("lora_alpha (--lora-alpha) must be at least 1, got 0")):
        config(lora_alpha=0)


# ------------------------------------------------------------------------------- prompts from a project


def project_rows() -> list[dict]:
    """Three bare prompts, one that ends with the assistant (nothing to answer), and three judged pairs."""
    return [{"prompt": p} for p in PROMPTS[:3]] + [
        {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"prompt": "Say hello", "response_a": "Hello!", "response_b": "Go away.", "choice": "A>B", "rater": "r1"},
        {"prompt": "Say bye", "response_a": "Bye.", "response_b": "Goodbye, take care!", "choice": "B>>A",
         "rater": "r1"},
        {"prompt": "Say what", "response_a": "What?", "response_b": "Pardon?", "choice": "tie", "rater": "r1"},
    ]


@pytest.fixture
def project_db(sqlite_url) -> str:
    from collect import db
    from collect.ingest import import_dataset
    from collect.projects import ProjectSettings, create_project

    with db.session_scope(sqlite_url) as s:
        import_dataset(s, create_project(s, "hh", ProjectSettings(overlap=1)), project_rows())
    return sqlite_url


def test_prompts_and_preferences_from_a_project(models, project_db, tmp_path):
    from finetune.align import training_data
    from finetune.prompts import ProjectPrompts

    source = ProjectPrompts("hh", project_db)
    answerable = PROMPTS[:3] + ["Say hello", "Say bye", "Say what"]
    assert read_prompts(source) == [[{"role": "user", "content": p}] for p in answerable]
    tokenizer = load_tokenizer(models["policy"])
    _, stats = training_data(small_config(models, "bon", tmp_path / "bon", prompts=source), tokenizer)
    assert stats == {"prompts": 6, "dropped_too_long": 0, "prompts_sampled": 6}  # max_steps 3 x 2 per step
    # dpo takes the judged pairs as `prefloop export` does: the tie is skipped, and counted.
    rows, stats = training_data(small_config(models, "dpo", tmp_path / "dpo", data=source), tokenizer)
    assert stats == {"pairs": 2, "dropped_too_long": 0, "skipped_ties": 1}
    chosen = {r["prompt"][0]["content"]: r["chosen"][0]["content"] for r in rows}
    assert chosen == {"Say hello": "Hello!", "Say bye": "Goodbye, take care!"}
    with pytest.raises(UserError, match="no project 'nope'"):
        read_prompts(ProjectPrompts("nope", project_db))
    with pytest.raises(UserError, match="no prefloop database"):
        read_prompts(ProjectPrompts("hh", f"sqlite:///{tmp_path / 'none.db'}"))


def test_cli_align_on_a_project(models, project_db, tmp_path):
    from typer.testing import CliRunner

    from finetune.cli import app

    out = tmp_path / "from-project"
    runner = CliRunner()
    result = runner.invoke(app, ["--project", "hh", "--db", project_db, "--method", "bon", "--policy",
                                 models["policy"], "--reward-model", models["reward"], "--out", str(out),
                                 "--max-steps", "1",
                                 "--num-generations", "2", "--max-completion-length", "4"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    manifest = json.loads((out / "prefloop.json").read_text())
    assert manifest["config"]["prompts"] == "project:hh"  # the database URL is not written
    assert manifest["data"]["prompts"] == 6 and manifest["data"]["prompts_sampled"] == 2
    both = runner.invoke(app, ["--project", "hh", "--prompts", "p.jsonl", "--out", str(out)])
    assert both.exit_code == 2 and "mutually exclusive" in both.output
    neither = runner.invoke(app, ["--out", str(out)])
    assert neither.exit_code == 2 and "'--prompts' or '--project'" in neither.output


def test_a_diverged_alignment_stops_where_the_loss_turns_nan_and_saves_nothing(models, tmp_path):
    with pytest.raises(UserError) as e:
        align(small_config(models, "dpo", tmp_path / "dpo", max_steps=20, learning_rate=1e6))
    assert str(e.value).startswith("training diverged: the trained weights hold NaN or infinite values after step ")
    assert "nothing was saved (a lower --learning-rate, now 1e+06, usually helps)" in str(e.value)
    assert not (tmp_path / "dpo").exists()  # TRL makes the folder when it starts: taken away again


def test_an_export_named_after_an_hh_project_is_read_as_trl_rows(tmp_path, data_dir):
    """`prefloop export hh_prefs.jsonl --project hh` was read as raw HH-RLHF for its name: "field 'chosen': expected
    a string, got list"."""
    from collect.formats import detect_format
    from finetune.prompts import read_preferences

    export = tmp_path / "hh_prefs.jsonl"
    export.write_text("".join(json.dumps(row) + "\n" for row in preference_rows(3)))
    pairs, ties = read_preferences(str(export))
    assert [p["chosen"][0]["content"] for p in pairs] == ["Hello! Happy to help."] * 3 and ties == 0
    # The same answer on both sides teaches DPO nothing (its loss stays at ln 2): skipped and counted with the ties.
    same = preference_rows(2)
    same[1]["rejected"] = same[1]["chosen"]
    pairs, ties = read_preferences(same)
    assert len(pairs) == 1 and ties == 1
    assert detect_format(export) == "trl"  # its rows, whatever its name
    assert detect_format(data_dir / "hh_harmless_base_test.jsonl.gz") == "hh-rlhf"


def test_a_both_bad_pair_is_no_preference_for_dpo_though_its_raters_leaned():
    """An export's side file keeps a both-bad pair's lean (`chosen_better`), which import reads as A>B, both bad; DPO
    still skips it as a tie, as it skips the pair when it reads the project (export leaves both-bad pairs out)."""
    leaned, preferred = preference_rows(2)
    pairs, ties = read_preferences([{**leaned, "kind": "both_bad", "chosen_better": True}, preferred])
    assert pairs == [preferred] and ties == 1
