"""Training progress for every trainer in prefloop (reward models and alignment): a Rich bar on a terminal or in
a notebook, whole lines in a log; and `StopEarly`, which turns Ctrl-C and a time budget into a clean stop.
Imported only when training, since it imports Transformers."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Column
from rich.text import Text
from transformers import TrainerCallback


class LogLines:
    """Training progress as whole lines, for output that goes to a log (nohup, CI, a cluster job, `accelerate
    launch`) rather than a terminal or a notebook: there Rich would draw its bar once, at the end, cut to 80
    columns."""

    def __init__(self, console: Console, total_steps: int):
        self.console = console
        self.total = total_steps
        self.every = max(1, math.ceil(total_steps / 10))
        self.printed = 0  # the last step a line was printed for

    @classmethod
    def for_run(cls, total_steps: int) -> LogLines | None:
        """LogLines when standard output is a log; None where a live bar works."""
        console = Console()
        return None if console.is_terminal or console.is_jupyter else cls(console, total_steps)

    def due(self, step: int) -> bool:
        """True once per tenth of the run (at the first call at or past it) and at the last step, never twice for
        one step."""
        next_tenth = (self.printed // self.every + 1) * self.every
        if step == self.printed or (step < next_tenth and step != self.total):
            return False
        self.printed = step
        return True

    def print(self, label: str, step: int, stats: str) -> None:
        self.console.print(f"{label}  step {step}/{self.total}  {stats}", soft_wrap=True, highlight=False, markup=False)


class Stats:
    """The latest numbers ("loss 0.412", "held-out acc 0.611") laid out in the width Rich gives them, a line broken
    only between two of them: Rich's own wrapping breaks at any space, a no-break space included, so a name could
    end one line and its number start the next."""

    def __init__(self, entries: list[str], gap: str = "  "):
        self.entries = entries
        self.gap = gap

    def __rich_console__(self, console, options):
        lines: list[str] = []
        for entry in self.entries:
            if lines and cell_len(lines[-1] + self.gap + entry) <= options.max_width:
                lines[-1] += self.gap + entry
            else:
                lines.append(entry)
        yield Text("\n".join(lines), no_wrap=True, overflow="fold")

    def __rich_measure__(self, console, options) -> Measurement:
        widths = [cell_len(entry) for entry in self.entries] or [0]
        return Measurement(max(widths), sum(widths) + cell_len(self.gap) * (len(widths) - 1))


class StatsColumn(ProgressColumn):
    """A progress column showing a task's `stats` field (a list of entries) as `Stats`."""

    def render(self, task) -> Stats:
        return Stats(task.fields["stats"])


def progress_bar(widest_entry: int, console: Console | None = None) -> Progress:
    """The bar a training run draws; its task has a `stats` field, the latest numbers as a list of entries, the
    widest `widest_entry` cells (the numbers' column never gets less, so no entry is cut)."""
    return Progress(
        # No markup: a model's name may hold square brackets.
        TextColumn("{task.description}", style="bold", markup=False),
        # The bar and the numbers share what the label, step count and times leave, so a narrow terminal
        # (80 columns) wraps the numbers onto a second line instead of cutting the step count and times.
        BarColumn(bar_width=None, table_column=Column(ratio=1)), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(),
        # A column with a ratio gets at least its width, and nothing else it measures.
        StatsColumn(table_column=Column(ratio=2, width=widest_entry)),
        expand=True, console=console,
    )


class TrainingProgress(TrainerCallback):
    """A Rich bar with the latest logged numbers beside it; in a log (`LogLines`), a line per evaluation when the
    run evaluates, else a line every tenth of the run. Keeps every logged dict in `history` for the run's summary.

    `shown` maps a logged key to the name it is shown under, in display order."""

    def __init__(self, label: str, shown: dict[str, str], show: bool = True):
        self.label = label
        self.shown = shown
        self.show = show
        self.latest: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.progress: Progress | None = None
        self.task = None
        self.log_lines: LogLines | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not self.show or not state.is_world_process_zero:
            return
        self.log_lines = LogLines.for_run(state.max_steps)
        if self.log_lines is not None:
            return
        # A name, a space and a number as `on_log` formats it: "0.611", "-0.123" or "12.345".
        self.progress = progress_bar(widest_entry=max(cell_len(name) for name in self.shown.values()) + 7)
        self.progress.start()
        self.task = self.progress.add_task(self.label, total=state.max_steps, stats=[])

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        self.history.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
        # Merged over logs: a held-out evaluation's numbers come in a log of their own, between training logs.
        self.latest.update({name: logs[key] for key, name in self.shown.items() if key in logs})
        if not self.latest:
            return
        stats = [f"{name} {self.latest[name]:.3f}" for name in self.shown.values() if name in self.latest]
        if self.progress is not None:
            self.progress.update(self.task, stats=stats)
            return
        if self.log_lines is None:
            return
        evaluates = args.eval_strategy != "no"
        due = any(key.startswith("eval_") for key in logs) if evaluates else self.log_lines.due(state.global_step)
        if due:
            self.log_lines.print(self.label, state.global_step, "  ".join(stats))

    def on_train_end(self, args, state, control, **kwargs):
        self.close()
        self.log_lines = None  # a reward run's closing evaluation of the kept step is in its summary, not a step


    def close(self) -> None:
        """Stop the live bar; again is a no-op."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def close_progress(trainer) -> None:
    """Stop the trainer's live progress bars. Transformers calls `on_train_end` only when training returns: a
    run that raised left the bar's thread running, stdout redirected through Rich and the cursor hidden, for a
    caller that catches the error and goes on."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TrainingProgress):
            callback.close()


class StopOnNonFiniteWeights(TrainerCallback):
    """Stop training at the first log after which a trained weight is NaN or infinite; `diverged` then says where,
    for the caller to raise. Without it a diverged run (too high a learning rate) trained on to its end and saved a
    NaN model, its loss shown as a finite number by Transformers' `logging_nan_inf_filter`. The weights, not the
    logged loss: under fp16 a step whose loss overflows is skipped by the gradient scaler, the weights stay finite,
    and the run is fine (while one NaN loss would leave every later logged loss NaN)."""

    def __init__(self):
        self.diverged: str | None = None

    def on_log(self, args, state, control, model=None, **kwargs):
        import torch

        if self.diverged is not None or model is None:
            return
        trained = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad():
            # A NaN or an infinity anywhere makes the sum of sums non-finite: 2 ms on minilm-l6's 22.7M weights,
            # where isfinite over every weight took 60 ms at each log.
            broken = bool(trained) and not torch.isfinite(torch.stack([p.sum() for p in trained]).sum())
        if broken:
            self.diverged = f"the trained weights hold NaN or infinite values after step {state.global_step}"
            control.should_training_stop = True


class StopEarly(TrainerCallback):
    """Stop when the time budget is spent, or at the first Ctrl-C (a second one aborts at once); the run then saves
    what it has trained as if it had finished. A run that evaluates gets one last evaluation, so the final state can
    be the kept one. `reason` says what stopped it. Reward training and every alignment method use it; best-of-n
    also asks it between sampling batches (`stop_sampling`), so its budget and Ctrl-C cover sampling too."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.started_at: float | None = None
        self.interrupted = False
        self.reason: str | None = None
        self.doing = "step"  # what a first Ctrl-C lets finish: a training step, or a best-of-n sampling batch
        self._previous_handler = None

    def _on_interrupt(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        print(f"\nstopping after this {self.doing} and saving the model so far (Ctrl-C again to abort)", flush=True)

    def begin(self, doing: str = "step") -> None:
        """Start the clock and take Ctrl-C over. Training begins it, unless best-of-n's sampling did already
        (`doing="sampling batch"`): the budget then counts from the start of sampling."""
        self.doing = doing
        if self.started_at is not None:
            return
        self.started_at = time.monotonic()
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous_handler = signal.signal(signal.SIGINT, self._on_interrupt)

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin()

    def on_train_end(self, args, state, control, **kwargs):
        self.release()

    def release(self) -> None:
        """Put the caller's Ctrl-C handler back; also called when training raises (no on_train_end then)."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _why(self, world_size: int) -> str | None:
        """Why the run should stop now ("time budget", "interrupted (Ctrl-C)"), or None to go on."""
        spent = time.monotonic() - self.started_at if self.started_at is not None else 0.0
        out_of_time = self.seconds is not None and spent > self.seconds
        stop = [out_of_time, self.interrupted]
        if world_size > 1:
            # Under `accelerate launch`, ranks whose clocks cross the budget on different steps would stop
            # apart and wait on each other forever: the first rank decides for all.
            from accelerate.utils import broadcast_object_list

            stop = broadcast_object_list([stop], from_process=0)[0]
        return "time budget" if stop[0] else "interrupted (Ctrl-C)" if stop[1] else None

    def stop_sampling(self, sampled: int, prompts: int) -> bool:
        """Whether best-of-n should stop sampling, after `sampled` of its `prompts`, and train on those. Under
        `accelerate launch` every rank asks at the same point (`finetune.sampling.sample`) and the first decides."""
        why = self._why(int(os.environ.get("WORLD_SIZE", "1")))
        if why is not None:
            self.reason = f"{why} while sampling, after {sampled} of {prompts} prompts"
        return why is not None

    def on_step_end(self, args, state, control, **kwargs):
        why = self._why(args.world_size)
        if why is not None and state.global_step >= state.max_steps:
            why = None  # the budget ran out (or Ctrl-C came) on the last step: the run finished, nothing was cut
        if why is not None:
            control.should_training_stop = True
            at = f"step {state.global_step} of {state.max_steps}"
            # After a stop while sampling, the budget is still spent (or the Ctrl-C still pressed): one step.
            self.reason = f"{why} at {at}" if self.reason is None else f"{self.reason}; training stopped at {at}"
        if (why is not None or state.global_step >= state.max_steps) and args.eval_strategy != "no":
            control.should_evaluate = True
        return control
