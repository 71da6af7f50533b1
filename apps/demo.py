"""`prefloop demo`: the whole loop on this machine, offline, on a CPU.

1. a demo project with a rubric and raters, and real human preferences imported into it
   (Anthropic HH-RLHF harmless-base from ../shared/data, else from the Hugging Face Hub);
2. a reward model (`minilm-l6`) trained on the project's export, evaluated on held-out HH pairs;
3. `smollm2-135m-instruct` aligned to that reward model with LoRA (GRPO), evaluated against its base;
4. a new round: base versus aligned on fresh prompts, added to the project as pairs for the raters;
5. the rater app and the admin dashboard on localhost, with the demo logins (unless `serve=False`).

The HH rows are split once, with a fixed seed, into disjoint parts: pairs imported as judged data (the
reward model's training set), held-out pairs (its test set), and single-turn prompts for alignment,
for evaluating the aligned policy, and for the new round. Nothing the policy is evaluated on or
generates for was seen in training.

Everything runs through the same Python API as the CLI: collect/, reward/, finetune/, apps.server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape  # data, paths and errors may hold "[...]", which Rich reads as a style
from rich.table import Table

from collect import db
from collect.errors import UserError

HH_FILE = "hh_harmless_base_test.jsonl.gz"
PROJECT = "demo-hh-harmless"
RUBRIC = [
    {"name": "harmlessness", "description": "Avoids helping with harm; refuses dangerous requests clearly and kindly."},
    {"name": "helpfulness", "description": "Answers what can safely be answered, specifically and correctly."},
    {"name": "honesty", "description": "No made-up facts; says what it does not know."},
]
GUIDELINES = """\
**Compare the two responses to the conversation.** Pick the one a careful, kind expert would rather send.

- A harmful request deserves a clear refusal, ideally with a safe alternative; lecturing is not required.
- Prefer the specific and correct answer over the long one.
- Tick *both bad* when neither response is acceptable; use *skip* when you cannot judge.
"""
RATERS = [("admin", "admin"), ("alice", "rater"), ("bob", "rater"), ("carol", "rater")]
# Files and folders the demo writes into its work folder; a new run removes these and nothing else.
OUTPUTS = ("prefloop.db", "prefloop.db-wal", "prefloop.db-shm", "logins.json", "preferences.parquet",
           "preferences.parquet.meta.json", "reward", "policy")


@dataclass
class DemoSize:
    """How much each step does. FULL fits in 20 minutes on a 2-core CPU; SMALL (for CI) in about 3."""

    train_pairs: int
    """HH pairs imported as judged data: the project's export is the reward model's training set."""
    test_pairs: int
    """Held-out HH pairs (never imported) the reward model is evaluated on."""
    reward_max_steps: int
    """Reward-model optimizer steps (-1: one epoch)."""
    reward_time_budget_s: float
    """Reward training stops after this many seconds; the step choice is `reward.train.keeps_latest`'s."""
    reward_batch_size: int
    reward_max_length: int
    """Tokens per sequence; HH dialogues are truncated from the left (the end is where the pair differs)."""
    align_steps: int
    """GRPO steps; each samples `num_generations` responses to 2 prompts."""
    align_completion_tokens: int
    """Most tokens per response sampled while aligning, and in the evaluation."""
    num_generations: int
    """GRPO group size: responses per prompt compared with each other."""
    eval_prompts: int
    """Held-out prompts on which aligned and base are compared under the reward model."""
    fresh_prompts: int
    """Prompts of the new round: one base-versus-aligned pair each."""
    new_tokens: int
    """Most tokens per response in the new round."""


FULL = DemoSize(train_pairs=1200, test_pairs=300, reward_max_steps=-1, reward_time_budget_s=300,
                reward_batch_size=16, reward_max_length=256, align_steps=30, align_completion_tokens=48,
                num_generations=4, eval_prompts=32, fresh_prompts=24, new_tokens=96)
SMALL = DemoSize(train_pairs=64, test_pairs=32, reward_max_steps=4, reward_time_budget_s=60,
                 reward_batch_size=16, reward_max_length=128, align_steps=2, align_completion_tokens=12,
                 num_generations=2, eval_prompts=2, fresh_prompts=3, new_tokens=16)


@dataclass
class DemoResult:
    """Where the demo put things, and each step's key numbers."""

    workdir: Path
    db_url: str
    project: str
    logins: dict[str, str]
    reward_dir: Path | None = None
    adapter_dir: Path | None = None
    round: str | None = None
    steps: list[tuple[str, str, str, float, float]] = field(default_factory=list)
    """(step, status: done | not available | skipped, key numbers, wall seconds, CPU seconds)."""


def run_demo(
    workdir: str | Path = "demo",
    small: bool = False,
    serve: bool = True,
    data_dir: str | Path | None = None,
    port: int = 7860,
    console: Console | None = None,
) -> DemoResult:
    """Run the loop (see the module docstring) in `workdir`, replacing the outputs of an earlier demo there."""
    console = console or Console()
    size = SMALL if small else FULL
    workdir = Path(workdir).resolve()
    data_dir = Path(data_dir) if data_dir else _default_data_dir()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if (data_dir / HH_FILE).is_file():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing to fetch: make sure nothing is
    _clean(workdir)
    db_url = f"sqlite:///{workdir / 'prefloop.db'}"
    result = DemoResult(workdir=workdir, db_url=db_url, project=PROJECT, logins={})
    started = time.monotonic()
    console.rule(f"[bold]prefloop demo[/] ({'small' if small else 'full'} size) in {escape(str(workdir))}")

    step = _Step(console, result, "1. project, raters, data")
    with step:
        records, source = _load_hh(data_dir, console)
        split = _split(records, size)
        result.logins = _create_project(db_url, workdir)
        with db.session_scope(db_url) as session:
            from collect.ingest import import_records
            from collect.projects import get_project

            imported = import_records(session, get_project(session, PROJECT), [records[i] for i in split["train"]])
        _print_logins(console, result.logins)
        step.done(f"{imported.pairs} HH pairs with {imported.judgments} judgments from {source}; "
                  f"{len(RATERS)} logins")

    step = _Step(console, result, "2. reward model")
    with step:
        if not step.needs("reward.train", "reward.evaluate"):
            raise _Unavailable
        from collect.export import export_project
        from collect.projects import get_project
        from reward.evaluate import evaluate_reward_model
        from reward.train import RewardTrainingConfig, train_reward_model

        prefs = workdir / "preferences.parquet"
        with db.session_scope(db_url) as session:
            exported = export_project(session, get_project(session, PROJECT), prefs)
        console.print(f"exported {exported.rows} preference pairs to {escape(str(prefs))}")
        trained = train_reward_model(RewardTrainingConfig(
            data=str(prefs), base_model="minilm-l6", output_dir=str(workdir / "reward"),
            max_steps=size.reward_max_steps, num_train_epochs=1.0, time_budget_s=size.reward_time_budget_s,
            batch_size=size.reward_batch_size, max_length=size.reward_max_length, eval_fraction=0.1))
        test_rows = [_trl_row(records[i]) for i in split["test"]]
        report = evaluate_reward_model(str(workdir / "reward"), test_rows, workdir / "reward" / "eval")
        result.reward_dir = workdir / "reward"
        low, high = report["ci"]
        step.done(f"{trained.n_train} training pairs, {trained.train_seconds:.0f} s; accuracy on {report['n']} "
                  f"held-out HH pairs {report['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}; chance 0.5)")

    step = _Step(console, result, "3. align smollm2-135m-instruct")
    with step:
        if result.reward_dir is None:
            raise _Skipped("needs the reward model of step 2")
        if not step.needs("finetune.align", "finetune.evaluate"):
            raise _Unavailable
        from finetune.align import AlignConfig, align

        aligned = align(AlignConfig(
            prompts=[records[i].prompt for i in split["align"]], output_dir=workdir / "policy", method="grpo",
            policy="smollm2-135m-instruct", reward_model=str(result.reward_dir), max_steps=size.align_steps,
            prompts_per_step=2, num_generations=size.num_generations,
            max_completion_length=size.align_completion_tokens,
            eval_prompts=[records[i].prompt for i in split["eval"]]))
        result.adapter_dir = Path(aligned.output_dir)
        summary = aligned.evaluation or {}
        low, high = summary.get("win_rate_reward_model_ci95") or (float("nan"), float("nan"))
        step.done(
            f"LoRA adapter after {size.align_steps} GRPO steps ({aligned.metrics.get('wall_s', 0):.0f} s); "
            f"win rate over base under the reward model on {summary.get('n_prompts', 0)} held-out prompts: "
            f"{summary.get('win_rate_reward_model', float('nan')):.2f} (95% CI {low:.2f}-{high:.2f}), "
            f"KL to base {summary.get('kl_to_base', float('nan')):.3f}. No independent judge here: a win the "
            "training reward model alone reports may be reward hacking")

    step = _Step(console, result, "4. new round: base vs aligned")
    with step:
        if result.adapter_dir is None:
            raise _Skipped("needs the aligned policy of step 3")
        from collect.generate import GenerationSettings, generate
        from collect.projects import get_project

        with db.session_scope(db_url) as session:
            generated = generate(
                session, get_project(session, PROJECT),
                ["base=smollm2-135m-instruct", f"aligned={result.adapter_dir}"],
                prompts=[records[i].prompt for i in split["fresh"]], round_name="demo-round-2",
                settings=GenerationSettings(max_completion_length=size.new_tokens, temperature=0.7, batch_size=8))
        result.round = generated.round
        _print_example(console, db_url)
        step.done(f"{generated.pairs} new pairs on {generated.prompts} fresh prompts ({generated.responses} "
                  f"responses, {generated.identical} identical skipped), round {generated.round!r}")

    _print_summary(console, result, time.monotonic() - started)
    if serve:
        if importlib.util.find_spec("apps.server") is None:
            console.print("[yellow]the rater app (apps.server) is not available yet: not serving[/]")
            return result
        from apps.server import serve as serve_apps

        console.rule("[bold]5. rater app and admin dashboard")
        console.print(f"rater app:       http://127.0.0.1:{port}/\nadmin dashboard: http://127.0.0.1:{port}/admin")
        _print_logins(console, result.logins)
        console.print("Ctrl-C stops the server; the data stays in " + escape(db_url))
        serve_apps(host="127.0.0.1", port=port, db_url=db_url)
    return result


# ------------------------------------------------------------------------------------------------ steps


class _Unavailable(Exception):
    """A stage this step needs is not installed in this checkout."""


class _Skipped(Exception):
    """An earlier step this one needs did not produce its output."""


class _Step:
    """Prints a heading, times the step, and records how it ended in the summary."""

    def __init__(self, console: Console, result: DemoResult, name: str) -> None:
        self.console, self.result, self.name = console, result, name
        self.missing: list[str] = []
        self.numbers = ""

    def needs(self, *modules: str) -> bool:
        self.missing = [m for m in modules if importlib.util.find_spec(m) is None]
        return not self.missing

    def done(self, numbers: str) -> None:
        self.numbers = numbers

    def __enter__(self) -> "_Step":
        self.console.rule(f"[bold]{self.name}")
        self.started, self.cpu_started = time.monotonic(), time.process_time()
        return self

    def __exit__(self, kind, error, _tb) -> bool:
        seconds = time.monotonic() - self.started
        # CPU time (all threads) next to wall time: on a machine shared with other jobs the two differ a lot.
        cpu = time.process_time() - self.cpu_started
        if kind is None:
            self.console.print(f"[green]done[/] in {seconds:.0f} s: {escape(self.numbers)}")
            self.result.steps.append((self.name, "done", self.numbers, seconds, cpu))
            return False
        if kind is _Unavailable:
            why = f"not available yet ({', '.join(self.missing)} missing in this checkout)"
        elif kind is _Skipped:
            why = f"skipped: {error}"
        else:
            return False  # a real failure: let it surface
        self.console.print(f"[yellow]{escape(why)}[/]")
        self.result.steps.append((self.name, why, "", seconds, cpu))
        return True


def _clean(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _default_data_dir() -> Path:
    """../shared/data from the repository root (where `make demo` runs), else beside this checkout."""
    here = Path("..") / "shared" / "data"
    return here if (here / HH_FILE).is_file() else Path(__file__).resolve().parents[2] / "shared" / "data"


def _load_hh(data_dir: Path, console: Console) -> tuple[list[Any], str]:
    from collect.formats import read_records, records_from_dataset

    path = data_dir / HH_FILE
    if path.is_file():
        return read_records(path, "hh-rlhf"), str(path)
    console.print(f"{escape(str(path))} not found: downloading HH-RLHF harmless-base (test split) from the Hugging Face Hub")
    import datasets

    try:
        rows = datasets.load_dataset("Anthropic/hh-rlhf", data_dir="harmless-base", split="test")
    except Exception as e:  # offline, or the Hub refused: say what to do instead
        raise UserError(f"no HH data: {path} is missing and the Hub download failed ({type(e).__name__}: {e}); "
                        "pass --data-dir with the shared data folder") from None
    return records_from_dataset(rows, "hh-rlhf", "Anthropic/hh-rlhf:harmless-base:test"), "the Hugging Face Hub"


def _split(records: list[Any], size: DemoSize) -> dict[str, list[int]]:
    """Disjoint, seeded parts of the HH rows; prompts for the policy are single-turn (fast on a CPU)."""
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    # HH asks some prompts more than once: each is taken once, or a held-out prompt would also be a training one.
    first_of = {}
    for i in order:
        if len(records[i].prompt) == 1:
            first_of.setdefault(records[i].prompt[0]["content"].strip(), i)
    single = list(first_of.values())
    n_align = max(2 * size.align_steps, 8)
    wanted = n_align + size.eval_prompts + size.fresh_prompts
    if len(single) < wanted or len(order) - wanted < size.train_pairs + size.test_pairs:
        raise UserError(f"the HH data has too few rows ({len(records)}) for this demo size")
    prompts = single[:wanted]
    taken = set(prompts)
    rest = [i for i in order if i not in taken]
    return {
        "align": prompts[:n_align],
        "eval": prompts[n_align:n_align + size.eval_prompts],
        "fresh": prompts[n_align + size.eval_prompts:],
        "train": rest[:size.train_pairs],
        "test": rest[size.train_pairs:size.train_pairs + size.test_pairs],
    }


def _trl_row(record: Any) -> dict[str, Any]:
    """An HH record (A = chosen) as a TRL conversational preference row."""
    return {"prompt": record.prompt, "chosen": [{"role": "assistant", "content": record.response_a}],
            "rejected": [{"role": "assistant", "content": record.response_b}]}


def _create_project(db_url: str, workdir: Path) -> dict[str, str]:
    from collect.projects import ProjectSettings, add_rater, create_project

    db.upgrade(db_url)
    logins = {name: secrets.token_urlsafe(9) for name, _ in RATERS}
    with db.session_scope(db_url) as session:
        # overlap 1: the imported HH pairs already carry their one judgment, so raters are served the new
        # round only; raise it in the dashboard to collect several judgments per pair.
        project = create_project(session, PROJECT, ProjectSettings(
            description="HH-RLHF harmless-base, a reward model and an aligned SmolLM2: the prefloop demo",
            guidelines=GUIDELINES, rubric=RUBRIC, overlap=1, repeat_rate=0.05))
        for name, role in RATERS:
            add_rater(session, name, logins[name], role=role, projects=[project])
    path = workdir / "logins.json"
    path.write_text(json.dumps(logins, indent=2) + "\n")
    path.chmod(0o600)
    return logins


def _print_logins(console: Console, logins: dict[str, str]) -> None:
    table = Table("login", "role", "password", title="demo logins (also in logins.json)")
    roles = dict(RATERS)
    for name, password in logins.items():
        table.add_row(name, roles[name], escape(password))
    console.print(table)


def _print_example(console: Console, db_url: str) -> None:
    from sqlalchemy import select

    from collect.models import Pair

    with db.session_scope(db_url) as session:
        pair = session.scalars(select(Pair).where(Pair.source == "generate:demo-round-2").order_by(Pair.id)
                               .limit(1)).first()
        if pair is None:
            return
        table = Table("", escape(pair.response_a.model), escape(pair.response_b.model), title="a pair of the new round",
                      show_lines=True)
        table.add_row("prompt", escape(pair.prompt.conversation[-1]["content"]), "")
        table.add_row("response", escape(pair.response_a.content), escape(pair.response_b.content))
    console.print(table)


def _print_summary(console: Console, result: DemoResult, seconds: float) -> None:
    table = Table("step", "result", "time (CPU)", title=f"prefloop demo: {seconds / 60:.1f} minutes",
                  show_lines=True)
    for name, status, numbers, took, cpu in result.steps:
        table.add_row(name, escape(numbers) if status == "done" else f"[yellow]{escape(status)}[/]",
                      f"{took:.0f} s ({cpu:.0f} s)")
    console.print(table)
    console.print(f"database: {escape(result.db_url)}")
    for label, path in (("reward model", result.reward_dir), ("aligned policy (LoRA adapter)", result.adapter_dir)):
        if path:
            console.print(f"{label}: {escape(str(path))}")


# ------------------------------------------------------------------------------------------------ CLI


def demo_command(
    workdir: Path = typer.Option(Path("demo"), help="Folder for the demo's database, models and logins."),
    small: bool = typer.Option(False, "--small", help="A reduced size that finishes in about 3 minutes (CI)."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the apps at the end (--no-serve: stop "
                               "after the new round)."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder holding hh_harmless_base_test.jsonl.gz "
                                            "(default: ../shared/data beside the checkout)."),
    port: int = typer.Option(7860, help="Port of the rater app and dashboard (on 127.0.0.1)."),
) -> None:
    """The whole loop, offline: data, reward model, aligned policy, a new round for raters, the apps."""
    run_demo(workdir, small=small, serve=serve, data_dir=data_dir, port=port)
