"""Did the alignment work? Base versus aligned policy on held-out prompts.

Both policies answer every prompt with the same seeds (one model in memory: the base is the aligned
model with its adapter disabled). Reported:
- win rate of aligned over base under the training reward model and under an independent judge (a
  reward model trained on a disjoint split): a gain that the judge does not confirm is reward hacking;
  ties count one half; 95% bootstrap intervals;
- mean reward of each policy under each reward model;
- KL(aligned || base), estimated on the aligned model's own samples as the mean over responses of
  sum_t KL(p_aligned(. | y_<t) || p_base(. | y_<t)), the exact next-token KL at each position of the
  response, both at the sampling temperature (`finetune.sampling.completion_kl`: the same expectation as
  the mean log-ratio of the sampled responses, never negative, and with less variance);
- mean response length in tokens, and a few side-by-side examples.
Written as JSON and a PNG plot; the summary also lands in the adapter's prefloop.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from collect.errors import UserError, check_seed, check_settings, first_line
from collect.output_dirs import check_can_write_file
from finetune.policy import load_policy
from finetune.prompts import fit_prompts, read_prompts
from finetune.sampling import completion_kl, sample


@dataclass
class EvalConfig:
    """Evaluation settings. None means: read it from the adapter's prefloop.json."""

    # The adapter directory written by `align` (or any PEFT adapter of `policy`).
    adapter: str
    # Held-out prompts, in any form `align` accepts (file, dataset, list of conversations).
    prompts: Any
    # The base policy; by default the one the adapter was trained from.
    policy: str | None = None
    # The training reward model; by default the one recorded with the adapter (dpo adapters have none).
    reward_model: str | None = None
    # An independent reward model trained on a disjoint split; optional but the honest check.
    judge: str | None = None
    # Evaluate on the first this-many prompts (None: all).
    max_prompts: int | None = 64
    # Prompts are fitted to this many tokens like in training (oldest turns dropped); by default the adapter's
    # training max_prompt_length (else 256).
    max_prompt_length: int | None = None
    # Most tokens per response; by default the adapter's training max_completion_length (else 64).
    max_completion_length: int | None = None
    # Sampling temperature for both policies (0 = greedy; then KL is computed at temperature 1).
    temperature: float = 0.7
    # Nucleus sampling; keep 1.0 for a KL estimate of the full distributions.
    top_p: float = 1.0
    # Sampling seed, the same for both policies: the prompts are sampled `batch_size` at a time, and the chunk
    # that starts at prompt i is seeded with seed + i (finetune.sampling.sample).
    seed: int = 0
    # Sequences per generate / forward call.
    batch_size: int = 8
    # Side-by-side examples kept in the report.
    n_examples: int = 3
    # JSON report path (the PNG goes next to it); by default <adapter>/evaluation.json.
    out: str | None = None
    # Write the summary into the adapter's prefloop.json under "evaluation".
    update_manifest: bool = True
    # Rich status lines and a summary table.
    show_progress: bool = True


@dataclass
class EvalResult:
    summary: dict[str, Any]  # the numbers (win rates, means, KL, lengths, CIs, sizes)
    examples: list[dict[str, Any]] = field(default_factory=list)
    json_path: Path | None = None
    png_path: Path | None = None


def win_rate(aligned: Sequence[float], base: Sequence[float]) -> float:
    """Share of prompts where aligned scores above base; a tie counts one half."""
    if len(aligned) != len(base) or not aligned:
        raise ValueError("win_rate needs two equally long, non-empty lists of rewards")
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(aligned, base)) / len(aligned)


def win_rate_interval(aligned: Sequence[float], base: Sequence[float], n_bootstrap: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the win rate, resampling prompts: the expanded percentile interval reward
    evaluation reports (`reward.evaluate.bootstrap_interval`), so intervals read alike across the loop."""
    from reward.evaluate import bootstrap_interval

    outcomes = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(aligned, base)]
    return bootstrap_interval(outcomes, n_bootstrap, seed=seed)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def read_manifest(adapter: str) -> dict[str, Any]:
    """The prefloop.json `prefloop align` wrote into an adapter folder ({} for an adapter trained elsewhere); a
    UserError for a folder that is not an adapter (a reward model's, named by mistake)."""
    path = Path(adapter) / "prefloop.json"
    try:
        manifest = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as e:
        raise UserError(f"{path}: cannot read it ({first_line(e)})") from None
    kind = manifest.get("kind") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or kind not in (None, "prefloop.aligned_policy"):
        raise UserError(f"adapter {adapter}: holds a {kind or 'folder of another kind'} ({path.name} says so), not "
                        "the adapter `prefloop align` writes")
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"adapter {adapter}: not a PEFT adapter (no adapter_config.json)")
    return manifest


def evaluate(config: EvalConfig) -> EvalResult:
    """Compare the aligned policy with its base on held-out prompts; write JSON + PNG. See EvalConfig."""
    from finetune.rewards import load_scorer, score, warn_if_judge_is_reward_model

    console = Console(quiet=not config.show_progress, markup=False)
    if not Path(config.adapter).is_dir():
        raise UserError(f"adapter {config.adapter}: no such directory")
    check_settings(config, (
        ("max_prompts", config.max_prompts is None or config.max_prompts >= 1, "at least 1"),
        ("max_completion_length", config.max_completion_length is None or config.max_completion_length >= 1,
         "at least 1"),
        ("max_prompt_length", config.max_prompt_length is None or config.max_prompt_length >= 1, "at least 1"),
        ("temperature", 0 <= config.temperature < float("inf"), "0 (greedy) or more"),
        ("top_p", 0 < config.top_p <= 1, "in (0, 1]"),
        ("batch_size", config.batch_size >= 1, "at least 1"),
        ("n_examples", config.n_examples >= 0, "0 or more")))
    check_seed(config.seed)  # numpy's bootstrap refused a negative one only after minutes of sampling
    if config.out:  # checked before minutes of sampling and scoring
        if Path(config.out).suffix.lower() != ".json" and not Path(config.out).is_dir():
            raise UserError(f"out (--out) {config.out}: name a .json file (the plot is written beside it as .png)")
        check_can_write_file(Path(config.out), "out (--out)")
    manifest = read_manifest(config.adapter)
    # The recorded path is absolute where the policy was a local folder: `--policy m/lm` must reload from elsewhere.
    recorded = manifest.get("base_policy") or {}
    policy = config.policy or (recorded.get("path") if Path(recorded.get("path") or "").is_dir()
                               else recorded.get("name"))
    if not policy:
        raise UserError(f"adapter {config.adapter}: no prefloop.json naming its base policy; pass --policy")
    reward_model = config.reward_model or (manifest.get("reward_model") or {}).get("path")
    if not reward_model and not config.judge:
        raise UserError("evaluation needs a reward model to compare with: pass --reward-model and/or --judge")
    warn_if_judge_is_reward_model(reward_model, config.judge)
    trained = manifest.get("config") or {}
    max_completion_length = config.max_completion_length or trained.get("max_completion_length") or 64
    max_prompt_length = config.max_prompt_length or trained.get("max_prompt_length") or 256

    model, tokenizer = load_policy(policy, config.adapter)
    prompts = read_prompts(config.prompts, limit=config.max_prompts)
    prompts, _ = fit_prompts(tokenizer, prompts, max_prompt_length)
    settings = dict(n=1, max_new_tokens=max_completion_length, temperature=config.temperature, top_p=config.top_p,
                    seed=config.seed, batch_size=config.batch_size)
    with console.status(f"sampling the base policy on {len(prompts)} prompts"):
        with model.disable_adapter():
            base = sample(model, tokenizer, prompts, **settings)
    with console.status(f"sampling the aligned policy on {len(prompts)} prompts"):
        aligned = sample(model, tokenizer, prompts, **settings)
    aligned_ids = [ids[0] for ids in aligned.token_ids]
    kl_temperature = config.temperature if config.temperature > 0 else 1.0
    with console.status("KL to the base along the aligned responses"):
        kl = completion_kl(model, tokenizer, prompts, aligned_ids, temperature=kl_temperature,
                           batch_size=config.batch_size)
    device = model.device.type
    del model

    base_texts = [t[0] for t in base.texts]
    aligned_texts = [t[0] for t in aligned.texts]
    summary: dict[str, Any] = {
        "policy": policy, "adapter": str(config.adapter), "method": manifest.get("method"),
        "n_prompts": len(prompts), "max_completion_length": max_completion_length,
        "temperature": config.temperature, "seed": config.seed,
        "kl_to_base": _mean(kl),
        "mean_length_base": _mean([len(ids[0]) for ids in base.token_ids]),
        "mean_length_aligned": _mean([len(ids) for ids in aligned_ids]),
    }
    scores: dict[str, tuple[list[float], list[float]]] = {}
    for role, path in (("reward_model", reward_model), ("judge", config.judge)):
        summary[role] = path
        if not path:
            summary[f"win_rate_{role}"] = None
            continue
        with console.status(f"scoring with the {role.replace('_', ' ')}"):
            scorer = load_scorer(path, device=device, batch_size=config.batch_size,
                                 role=f"{role.replace('_', ' ')} (--{role.replace('_', '-')})")
            # In one call, so a decoder reward model runs each prompt once for both its responses (reward.score).
            both = score(scorer, [p + [{"role": "assistant", "content": t}]
                                  for texts in (base_texts, aligned_texts) for p, t in zip(prompts, texts)])
            r_base, r_aligned = both[:len(prompts)], both[len(prompts):]
            del scorer
        scores[role] = (r_aligned, r_base)
        summary[f"win_rate_{role}"] = win_rate(r_aligned, r_base)
        summary[f"win_rate_{role}_ci95"] = list(win_rate_interval(r_aligned, r_base, seed=config.seed))
        summary[f"mean_reward_{role}_base"] = _mean(r_base)
        summary[f"mean_reward_{role}_aligned"] = _mean(r_aligned)

    examples = []
    for i in range(min(config.n_examples, len(prompts))):
        example = {"prompt": prompts[i], "base": base_texts[i], "aligned": aligned_texts[i]}
        for role, (r_aligned, r_base) in scores.items():
            example[f"{role}_base"] = r_base[i]
            example[f"{role}_aligned"] = r_aligned[i]
        examples.append(example)

    json_path = Path(config.out) if config.out else Path(config.adapter) / "evaluation.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png_path = json_path.with_suffix(".png")
    prompts_described = (str(config.prompts) if isinstance(config.prompts, (str, Path))
                         else f"<{type(config.prompts).__name__}>")
    json_path.write_text(json.dumps({"summary": summary, "examples": examples,
                                     "config": asdict(config) | {"prompts": prompts_described}},
                                    indent=2, default=str) + "\n")
    plot(summary, scores, png_path)
    if config.update_manifest and manifest:
        manifest["evaluation"] = summary | {"report": str(json_path), "plot": str(png_path)}
        (Path(config.adapter) / "prefloop.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    _print(console, summary)
    return EvalResult(summary=summary, examples=examples, json_path=json_path, png_path=png_path)


def plot(summary: dict[str, Any], scores: dict[str, tuple[list[float], list[float]]], path: Path) -> None:
    """Win rates with their intervals, and per-prompt rewards of aligned against base."""
    # A Figure of its own, not pyplot's: pyplot would switch the caller's backend (a notebook's inline one) to Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5 * (1 + len(scores)), 4))
    axes = fig.subplots(1, 1 + len(scores))
    axes = list(axes) if len(scores) else [axes]
    roles = list(scores)
    rates = [summary[f"win_rate_{r}"] for r in roles]
    errors = [[rate - summary[f"win_rate_{r}_ci95"][0] for r, rate in zip(roles, rates)],
              [summary[f"win_rate_{r}_ci95"][1] - rate for r, rate in zip(roles, rates)]]
    axes[0].bar([r.replace("_", " ") for r in roles], rates, yerr=errors if roles else None, color="tab:blue")
    axes[0].axhline(0.5, color="grey", linestyle="--", linewidth=1)
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("win rate of aligned over base")
    axes[0].set_title(f"KL {summary['kl_to_base']:.3g} nats, n={summary['n_prompts']}")
    for ax, role in zip(axes[1:], roles):
        aligned, base = scores[role]
        ax.scatter(base, aligned, s=10)
        low, high = min(base + aligned), max(base + aligned)
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("reward of base response")
        ax.set_ylabel("reward of aligned response")
        ax.set_title(role.replace("_", " "))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _print(console: Console, summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="aligned vs base", show_header=False)
    for key, value in summary.items():
        if isinstance(value, float):
            table.add_row(key, f"{value:.4g}")
        elif isinstance(value, list):
            table.add_row(key, "[" + ", ".join(f"{v:.3g}" for v in value) + "]")
    console.print(table)
