r"""Reward-model training on a preference dataset, built on TRL's RewardTrainer.

    from reward.train import RewardTrainingConfig, train_reward_model
    result = train_reward_model(RewardTrainingConfig(data="prefs.parquet", base_model="minilm-l6",
                                                     output_dir="runs/rm"))

What prefloop does on top of a plain `trl.RewardTrainer` (each point is a default, see the config):
- it tokenizes the pairs itself and truncates over-long ones from the left (the end of a dialogue is
  where chosen and rejected differ) instead of letting TRL drop them; the run reports how many;
- precision follows the device: bf16 on a GPU that has it (fp16 on an older one) and on a CPU with bf16
  matrix units (Intel AMX, AVX512-BF16), fp32 on other CPUs, where bf16 is emulated and several times
  slower; gradient checkpointing (TRL's default) is off unless asked for, since it costs a third of the speed;
- batches are grouped by length, so little compute goes to padding;
- `margin` is used when the data has it, reward centering is on;
- a held-out split (grouped by prompt, so a prompt is never on both sides) or `eval_data` is evaluated
  during training, and the step saved is the latest one that no earlier step beats significantly on the
  same held-out pairs (`keeps_latest`): the highest held-out accuracy alone lets noise keep an early
  step that has barely learned anything on small held-out sets;
- LoRA (`lora=True`) trains the score head in full and saves a merged model, so every consumer loads
  the output with AutoModelForSequenceClassification.

Scale-out goes through `accelerate launch` with the config files shipped in reward/accelerate/
(`--num_processes N` overrides the GPU count in the file; --batch-size is per GPU):

    accelerate launch --config_file reward/accelerate/multi_gpu.yaml "$(which prefloop)" reward train \
        --data prefs.parquet --base smollm2-135m-instruct --out runs/rm
    accelerate launch --config_file reward/accelerate/deepspeed_zero2.yaml "$(which prefloop)" reward train \
        --data prefs.parquet --base smollm2-135m-instruct --out runs/rm --lora

DeepSpeed ZeRO-3 is not supported: the kept step's weights are held in memory, which needs whole
parameters on every rank (ZeRO-2 shards only optimizer states and gradients).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from collect.errors import UserError, check_seed, first_line, warn
from collect.offline_models import adapter_base, adapter_folder, no_transformers_bar, resolve_model
from collect.output_dirs import check_output_dir, replacing_dir
from reward.data import (TRAINING_PAIRS_FILE, Encoder, check_token_ids, data_label, fingerprint, load_preferences,
                         check_length_settings, pair_conversations, pair_digests, position_limit, prompt_of_rows,
                         rows_by_prompt, trained_pairs)
from reward.models import (checkpointing_argument, cpu_has_native_bf16, cpu_only, load_sequence_classifier,
                           load_tokenizer, transformer_layers)

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class RewardTrainingConfig:
    """Everything a reward-model run needs. Defaults are prefloop's recipe."""

    data: Any
    """Training pairs: a Parquet, JSONL or JSON file (optionally .gz), a `save_to_disk` folder, a `datasets.Dataset`
    (of a DatasetDict, the 'train' split), a list of dicts or a pandas DataFrame."""
    base_model: str = "minilm-l6"
    """Backbone: an alias from collect.offline_models, a Hugging Face id, or a local path."""
    output_dir: str = "runs/reward"
    """Where the model, tokenizer, prefloop.json and README.md are written (with `lora`, also the adapter alone in
    `adapter/`)."""
    eval_data: Any = None
    """Held-out pairs evaluated during training (of a DatasetDict, the 'test' split); when None, `eval_fraction` of
    `data` is held out."""
    eval_fraction: float = 0.1
    """Share of `data` held out (grouped by prompt) when `eval_data` is None; 0 trains on everything."""
    max_length: int | None = 256
    """Longest sequence in tokens; longer ones are truncated on `truncation_side`, never dropped. None: no limit
    (Python only; a sequence past the positions the model takes is refused)."""
    truncation_side: str = "left"
    """'left' keeps the end of the conversation, where chosen and rejected differ."""
    align_truncation: bool = True
    """With left truncation, cut an over-long pair's shared prompt by the same tokens on both sides (as many as
    its longer side must lose), so the two sides see the same window of the prompt and differ only in their
    responses; on a decoder they then still share their start and train as one packed row (`share_prompt`).
    Held-out pairs are always cut each side alone, as scoring cuts every conversation (it sees one at a time),
    so held-out metrics equal `prefloop reward eval`'s. False cuts training pairs that way too."""
    use_margin: bool = True
    """Use the `margin` column (the raters' strength) in the loss when the data has one."""
    center_rewards_coefficient: float | None = 0.01
    """Weight of the penalty that keeps rewards centred on zero (Eisenstein et al. 2023); None disables."""
    lora: bool = False
    """Train LoRA adapters (plus the score head in full) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int | None = None
    """LoRA scaling numerator (the update is scaled by alpha / r); None: 2 * lora_r, the same scale at any rank."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    backbone_layers: int | None = None
    """Keep only the bottom N transformer layers of the base model (the rest are not loaded): a shallower,
    faster reward model, sometimes a better one (on HH harmless, smollm2's middle layers probe better than its
    last, which next-token prediction shapes; bench/reward.py). None keeps them all."""
    trainable_layers: int | None = None
    """Train only the top N transformer layers (with LoRA: put adapters only there) and everything above them
    (pooler, final norm, head); the embeddings and the layers below stay frozen, so the backward pass stops at
    layer N from the top. 0 trains the head alone; None trains every layer."""
    learning_rate: float | None = None
    """Peak learning rate; None picks 5e-5 for full fine-tuning and 2e-4 for LoRA or `trainable_layers` (few
    weights move: at 5e-5 one MiniLM layer barely trains in 2 epochs, bench/results/reward.md)."""
    num_train_epochs: float = 2.0
    """Passes over the training pairs (ignored when `max_steps` > 0)."""
    max_steps: int = -1
    """Stop after this many optimizer steps when > 0."""
    batch_size: int = 16
    """Pairs per device per step (each pair is two sequences)."""
    eval_batch_size: int = 32
    """Pairs per device per evaluation step (the held-out pairs scored again after saving go in batches of as
    many sequences)."""
    gradient_accumulation_steps: int = 1
    """Steps whose gradients are summed before an optimizer update."""
    warmup_ratio: float = 0.1
    """Share of the steps spent warming the learning rate up from zero."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler_type: str = "linear"
    """Learning-rate schedule after warm-up: a Transformers scheduler name that needs no settings of its own
    (not cosine_with_min_lr or warmup_stable_decay)."""
    evals_per_epoch: int = 4
    """Held-out evaluations per epoch; the latest one that no earlier one beats significantly is kept (see
    `keeps_latest`)."""
    time_budget_s: float | None = None
    """Stop training after this many seconds of wall-clock time (then evaluate once more and choose the kept step)."""
    precision: str = "auto"
    """'auto' (bf16 on a GPU that has it, fp16 on an older GPU; on a CPU, bf16 where it has bf16 matrix units
    (Intel AMX, AVX512-BF16), else fp32), 'fp32', 'bf16' or 'fp16'. 'bf16' without a GPU trains in CPU bf16
    autocast; 'fp16' needs a GPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third slower."""
    disable_dropout: bool = True
    """Switch dropout off in the model (TRL's default): the pairwise loss is noisy enough."""
    cache_frozen_layers: bool = True
    """With `trainable_layers`, keep the frozen bottom blocks' output for each sequence in memory the first time
    it is computed (`FrozenLayerCache`), so later epochs and held-out evaluations run only the trained blocks.
    Skipped when dropout is on (the frozen output then changes between passes) or when the states would take
    more than half the free memory (fp32: tokens x hidden size x 4 bytes; HH's 1,800 pairs on MiniLM: about
    0.7 GiB)."""
    share_prompt: bool = True
    """On a decoder, train each pair as one sequence whose shared start (the prompt) runs once, the two endings
    each attending to it (reward.shared_prompt): the same rewards from fewer tokens, with LoRA smollm2 1.6x the
    pairs per second on HH harmless and summarize at 256 tokens and 1.8-2x at 1,024
    (bench/reward_shared_prompt.py). Encoders, sliding-window models and kernels without a 4D mask (FlashAttention)
    keep two sequences a pair; data-parallel runs (DDP or DeepSpeed ZeRO-2) pack too."""
    seed: int = 0
    """Seed for the held-out split, the head's initialisation and the data order."""
    progress: bool = True
    """Show a Rich progress bar and print a summary at the end."""
    callbacks: list[Any] = field(default_factory=list)
    """More `transformers.TrainerCallback`s (logging, early stopping), run after prefloop's own."""

    def peak_learning_rate(self) -> float:
        """`learning_rate`, or the default for this kind of run when it is None."""
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.lora or self.trainable_layers is not None else 5e-5


# `prefloop reward train`'s flag for each setting whose flag is not the field's name with dashes (reward/cli.py);
# a `--no-...` switch sets its field to False.
CLI_FLAGS = {"base_model": "--base", "output_dir": "--out", "num_train_epochs": "--epochs",
             "time_budget_s": "--time-budget", "center_rewards_coefficient": "--center-rewards",
             "use_margin": "--no-margin", "cache_frozen_layers": "--no-frozen-cache",
             "share_prompt": "--no-share-prompt", "align_truncation": "--no-align-truncation"}
# The settings the CLI has no flag for (a test checks both lists against reward/cli.py).
PYTHON_ONLY = frozenset({"eval_batch_size", "lora_dropout", "warmup_ratio", "weight_decay", "lr_scheduler_type",
                         "disable_dropout", "progress", "callbacks"})


DEFAULTS = RewardTrainingConfig(data=None)
"""The recipe's defaults: the CLI's options take theirs from here, so both train the same recipe."""


def setting(field_name: str) -> str:
    """A RewardTrainingConfig field as errors name it: the Python name and the CLI flag, for either kind of user.
    Python-only fields (eval_batch_size) are named alone."""
    if field_name in PYTHON_ONLY:
        return field_name
    return f"{field_name} ({CLI_FLAGS.get(field_name, '--' + field_name.replace('_', '-'))})"


@dataclass
class RewardTrainingResult:
    """What a run produced; the same numbers are in `<output_dir>/prefloop.json`."""

    output_dir: str
    """The model directory written (with `lora`, the merged model; its `adapter/` beside)."""
    metrics: dict[str, float]
    """`train_loss`, and with held-out pairs the last evaluation's `eval_*` figures: `eval_accuracy` is the saved
    model's as `prefloop reward eval` scores it, `eval_accuracy_in_training` as training's precision measured it."""
    n_train: int
    """Training pairs, after the held-out split (none dropped for length)."""
    n_eval: int
    """Held-out pairs (0 when nothing is held out)."""
    truncated_train: int
    """Training pairs cut to `max_length`."""
    truncated_eval: int
    """Held-out pairs cut to `max_length`."""
    best_step: int | None
    """The step whose weights were kept (`reward.train.keeps_latest`); None with no held-out pairs: the last."""
    train_seconds: float
    """Wall time of training, the held-out evaluations during it included."""
    pairs_per_second: float
    """Training pairs processed per second of `train_seconds`."""
    shared_prompt: bool = False
    """Whether each pair trained as one sequence with its prompt run once (`share_prompt`)."""
    tokens_per_pair: float = 0.0
    """Training tokens a pair cost, averaged (two sequences, or one packed sequence with `shared_prompt`)."""
    precision: str = "fp32"
    """What training computed in: fp32, or bf16 or fp16 autocast."""
    margin_in_loss: bool = False
    """Whether the data's `margin` column entered the loss (it has one, and `use_margin`)."""
    data_fingerprint: str = ""
    """`reward.data.fingerprint` of `data` as given, every pair, those held out too: what
    `fingerprint(load_preferences(data))` gives for the same file."""
    eval_accuracy_ci: list[float] | None = None
    """95% interval of the saved model's held-out accuracy (`reward.evaluate.accuracy_entry`: a bootstrap over
    prompts, or Wilson over a few prompts)."""
    stopped: str | None = None
    """Why training ended early, e.g. "interrupted (Ctrl-C) at step 40 of 204" or "time budget at step ..."; None
    when it ran its course."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Transformers' log history: a dict per logged step and per evaluation."""
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    """Every held-out evaluation during training: step, accuracy, loss and `correct`, one bool per held-out pair
    in the held-out rows' order (the kept step is `best_step`; prefloop.json has them without `correct`)."""
    held_out_prompts: list[int] = field(default_factory=list)
    """Each held-out pair's prompt as a number (`reward.data.prompt_of_rows`), in the order of `correct`: the
    groups the step choice takes together."""

    @property
    def n_eval_prompts(self) -> int:
        """The prompts the held-out pairs are on: what the step choice's test counts as evidence."""
        return len(set(self.held_out_prompts))


# ------------------------------------------------------------------------------------------ device


def _precision(choice: str) -> str:
    import torch

    if choice not in PRECISIONS:
        raise UserError(f"{setting('precision')} must be one of {', '.join(PRECISIONS)}, got {choice!r}")
    if choice == "fp16" and not torch.cuda.is_available():
        raise UserError(f"{setting('precision')} 'fp16' needs a GPU")
    if choice != "auto":
        chosen = choice
    elif torch.cuda.is_available():
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        chosen = "bf16" if cpu_has_native_bf16() else "fp32"
    # `accelerate launch` passes its mixed_precision (config file or flag) in this variable, and Transformers applies
    # it where neither bf16 nor fp16 is set: an fp32 run would train in bf16 and be recorded as fp32.
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if chosen == "fp32" and launched != "no":
        raise UserError(f"{setting('precision')} is fp32{' (auto, on this machine)' if choice == 'auto' else ''}, "
                        f"but accelerate launch asks for {launched} (mixed_precision in its config file, or "
                        f"--mixed_precision): set mixed_precision: 'no' there, or ask for {launched} here")
    return chosen


# ------------------------------------------------------------------------------------------ loading


def _load_model(model_path: str, pad_token_id: int, backbone_layers: int | None = None):
    import torch
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path, num_labels=1)
        if backbone_layers is not None:
            if not 1 <= backbone_layers <= config.num_hidden_layers:
                raise UserError(f"{setting('backbone_layers')} must be between 1 and {config.num_hidden_layers} (the "
                                f"base model's layers), got {backbone_layers}")
            config.num_hidden_layers = backbone_layers
            if getattr(config, "layer_types", None):  # per-layer attention kinds (Qwen3, Gemma) must match
                config.layer_types = config.layer_types[:backbone_layers]
        # A classifier checkpoint's own head (two labels, say) gives way to the new one-output head.
        model = load_sequence_classifier(model_path, backbone_layers, config=config, dtype=torch.float32,
                                         ignore_mismatched_sizes=True)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {model_path!r}: {first_line(e)}") from None
    # Sequence-classification models find the last real token through config.pad_token_id.
    model.config.pad_token_id = pad_token_id
    return model


def _head_name(model) -> str:
    for name in ("score", "classifier"):
        if hasattr(model, name):
            return name
    raise UserError(f"{type(model).__name__}: no 'score' or 'classifier' head for LoRA's modules_to_save")


def lora_targets(model: PreTrainedModel, trainable_layers: int | None) -> str | list[str]:
    """PEFT's target_modules: every linear layer, or those of the top `trainable_layers` blocks only (PEFT's
    own layers_to_transform does not combine with "all-linear", so they are named one by one)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    if trainable_layers is None:
        return "all-linear"
    layers = transformer_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    first = len(layers) - trainable_layers
    return [f"{prefix}.{i}.{name}" for i in range(first, len(layers))
            for name, module in layers[i].named_modules() if isinstance(module, (torch.nn.Linear, Conv1D))]


def freeze_lower_layers(model, trainable_layers: int) -> None:
    """Freeze every parameter the forward pass reaches before the top `trainable_layers` blocks: the embeddings,
    the lower blocks and what the blocks share. Which those are is read off one forward pass on a few tokens,
    by the order modules first run in, because registration order is not forward order everywhere: DeBERTa
    registers the relative-position table every block reads after the blocks. A parameter of a module that
    never runs as a module (that table is read as `.weight`) is frozen; those of the top blocks never are."""
    import torch

    layers = transformer_layers(model)
    top = list(layers)[len(layers) - trainable_layers:] if trainable_layers else []
    trained = {id(p) for block in top for p in block.parameters()}
    reached = False  # whether the forward pass has got to the trained part

    def reach(*_: Any) -> None:
        nonlocal reached
        reached = True

    def first_run(module, *_: Any) -> None:
        if reached and module not in ran:
            trained.update(id(p) for p in module.parameters(recurse=False))
        ran.add(module)

    ran: set = set()
    hooks = [top[0].register_forward_pre_hook(reach) if top else layers[-1].register_forward_hook(reach)]
    hooks += [module.register_forward_pre_hook(first_run) for module in model.modules()
              if next(module.parameters(recurse=False), None) is not None]
    vocab = model.get_input_embeddings().num_embeddings
    input_ids = torch.arange(1, 5).remainder(vocab).unsqueeze(0).to(next(model.parameters()).device)
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    for param in model.parameters():
        if id(param) not in trained:
            param.requires_grad_(False)


class FrozenLayerCache:
    """The output of the frozen bottom blocks for every sequence, computed the first time the sequence is seen
    and reused after that, so later epochs and held-out evaluations run only the trained top blocks.

    Frozen blocks (`trainable_layers`, with dropout off) give the same output for a sequence every time, and
    that output does not depend on the batch: padding is masked out of attention. The cache listens to the
    model's inputs (a pre-hook on the transformer body) and stands in for the frozen blocks' `forward`: when
    every sequence of a batch is cached, the lower blocks pass their input through and the top frozen one
    returns the cached states; otherwise the blocks run and the top one's output is stored. Nothing in the
    model's weights or saved files changes; `close()` takes the stand-ins away."""

    def __init__(self, model, frozen_blocks: int):
        import torch

        self.blocks = list(transformer_layers(model))[:frozen_blocks]
        self.states: dict[bytes, torch.Tensor] = {}
        self._keys: list[bytes] | None = None
        self._mask = None
        self._hit = False
        # What a block returns: a tensor, or a tuple whose first item is the states (DeBERTa's blocks add their
        # attention weights, None unless asked for); a block that is passed over returns the same shape of answer.
        self._extras: int | None = None
        # A block that hands the next one more than its states (T5's position bias) cannot be passed over.
        self.unusable: str | None = None
        body = getattr(model, model.base_model_prefix)
        self._hook = body.register_forward_pre_hook(self._see_inputs, with_kwargs=True)
        for i, block in enumerate(self.blocks):
            block.forward = self._stand_in(block.forward, top=i == len(self.blocks) - 1)

    def _see_inputs(self, module, args, kwargs):
        import torch

        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if input_ids is None:  # inputs_embeds: nothing to key the cache on
            self._keys, self._hit = None, False
            return
        if mask is None:
            mask = input_ids.new_ones(input_ids.shape, dtype=bool)
        elif mask.ndim == 4:  # packed pairs (reward.shared_prompt): the real tokens are those something attends to
            attended = mask[:, 0] if mask.dtype == torch.bool else mask[:, 0] == 0
            mask = attended.any(dim=1)
        else:
            mask = mask.bool()
        ids = input_ids.cpu().numpy()
        rows = mask.cpu().numpy()
        self._keys = [ids[i][rows[i]].tobytes() for i in range(len(ids))]
        # A packed pair is its tokens and where its rejected ending restarts; a plain sequence (right-padded)
        # counts from 0, the same key whether it came in a packed batch or a plain one.
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = torch.arange(input_ids.shape[1]).expand(input_ids.shape)
        places = positions.cpu().numpy()
        self._keys = [key + places[i][rows[i]].tobytes() for i, key in enumerate(self._keys)]
        self._mask = mask
        self._hit = self.unusable is None and all(key in self.states for key in self._keys)

    def _stand_in(self, forward, top: bool):
        import torch

        def cached_forward(hidden_states, *args, **kwargs):
            if not self._hit:
                output = forward(hidden_states, *args, **kwargs)
                states = output if isinstance(output, torch.Tensor) else output[0]
                self._extras = None if isinstance(output, torch.Tensor) else len(output) - 1
                if self._extras and self.unusable is None and any(x is not None for x in output[1:]):
                    self.unusable = f"its {type(self.blocks[0]).__name__} blocks pass more than their states on"
                    self.states.clear()
                    warn(f"not caching the frozen layers: {self.unusable}; every pass runs them")
                if top and self._keys is not None and self.unusable is None:
                    for key, row, real in zip(self._keys, states.detach(), self._mask):
                        self.states.setdefault(key, row[real].to("cpu", copy=True))
                return output
            if top:
                out = hidden_states.new_zeros(hidden_states.shape)
                for i, key in enumerate(self._keys):
                    out[i][self._mask[i]] = self.states[key].to(out.device, out.dtype)
            else:
                out = hidden_states
            return out if self._extras is None else (out,) + (None,) * self._extras

        return cached_forward

    def close(self) -> None:
        self._hook.remove()
        for block in self.blocks:
            del block.forward  # the instance attribute; the class's forward is back
        self.states.clear()


def split_by_prompt(dataset: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, held_out): whole prompts go to one side, about `fraction` of the rows held out. A prompt whose
    pairs would take the held-out share past twice `fraction` is passed over (one prompt with most of the pairs
    would otherwise go out whole), unless no prompt fits, when the smallest goes."""
    target = max(1, round(fraction * len(dataset)))
    groups = rows_by_prompt(dataset, seed)
    held: list[int] = []
    for rows in groups:
        if len(held) >= target:
            break
        if len(held) + len(rows) <= 2 * target:
            held.extend(rows)
    if not held:
        held = min(groups, key=len)
    held_set = set(held)
    train = [i for i in range(len(dataset)) if i not in held_set]
    if not train and len(groups) > 1:  # a share near 1 took every prompt
        raise UserError(f"{setting('eval_fraction')} {fraction} holds out all {len(dataset)} pairs, leaving none to "
                        "train on; hold out a smaller share")
    if not train:
        raise UserError(f"data: its {len(dataset)} pair(s) share {len(groups)} prompt(s), too few to hold whole "
                        f"prompts out; give held-out pairs ({setting('eval_data')}) or hold none out "
                        f"({setting('eval_fraction')} set to 0)")
    return dataset.select(train), dataset.select(sorted(held))


def keeps_latest(evaluations: list[dict[str, Any]], alpha: float = 0.05,
                 prompts: Sequence[Any] | None = None) -> bool:
    """Whether the latest held-out evaluation (last in `evaluations`) replaces the step kept so far. Each
    evaluation is {"step", "accuracy", "loss", "correct"}, `correct` holding one bool per held-out pair (chosen
    ranked above rejected), the pairs in the same order at every evaluation; `prompts` names each pair's prompt,
    in that order (None: every pair its own).

    The latest step wins unless an earlier one ranks significantly more of the same pairs right
    (`better_on_same_pairs`, an exact test that takes a prompt's pairs together), at alpha divided by the number
    of earlier evaluations (Bonferroni: the latest is compared with each of them). Later steps have trained on
    more and, as the learning rate decays, usually generalise best; an earlier step is kept only when the held-out
    pairs clearly say the model got worse since. Taking the highest held-out accuracy instead (or anything within
    one standard error of it) lets noise choose on small held-out sets: on summarize's 88 held-out pairs the first
    evaluation, still in warm-up, scored 0.604 by luck against 0.47-0.51 for every later one and was kept, with a
    test accuracy of 0.586 where the last step has 0.707 (bench/results/reward_steps.md). The cost is in runs long
    enough to overfit: they keep a late step unless its fall is significant, and at 5 epochs on 61-126 held-out
    pairs falls of 5-10 points were not (bench/results/reward_step_rules.md). Of seven other rules judged on validation
    splits, those that recovered most of such a fall lost on 2-epoch runs, and the rest recovered about a third of
    it on one candidate and changed nothing else: not enough, on two splits, to replace this one
    (bench/results/reward_step_rules.md); on two fresh summarize splits the peak-chasing rules lost 2.5-3.2 points
    on the 5-epoch runs (reward_step_rules_confirm_summarize.md). Only the kept step's weights are in memory, so
    the choice is made as evaluations arrive."""
    *earlier, latest = evaluations
    return not any(better_on_same_pairs(e["correct"], latest["correct"], alpha / len(earlier), prompts)
                   for e in earlier)


def better_on_same_pairs(first: list[bool], second: list[bool], alpha: float,
                         prompts: Sequence[Any] | None = None) -> bool:
    """Whether `first` ranks significantly more of the same pairs right than `second` (each one bool per pair).

    Pairs that share a prompt (`prompts`, one name per pair; None: every pair its own) share that prompt's text
    and often a response, so they are not independent evidence: a step that happens to suit one prompt gets all
    its pairs right together. The test therefore takes each prompt as one unit: its difference is how many more of
    its pairs `first` gets right than `second`. If neither step were better, swapping the two steps' outcomes on
    any prompt would be as likely as not, so each prompt's difference is as likely negative as positive; `first`
    is better when the observed total is larger than all but `alpha` of the totals those sign flips give (an exact
    one-sided permutation test, `reward.evaluate.sign_flip_p_value`). With one pair a prompt this is the exact
    McNemar test: of the pairs exactly one step gets right, `first` must get right more than a fair coin explains.
    Pairs both get right or both wrong say nothing about which is better."""
    from reward.evaluate import prompt_differences, sign_flip_p_value

    differences = prompt_differences(first, second, prompts)
    return sum(differences) > 0 and sign_flip_p_value(differences) < alpha


# ---------------------------------------------------------------------------------------- callbacks


def _callbacks(config: RewardTrainingConfig):
    """Callbacks: early stop (time budget, Ctrl-C), best-step snapshot, Rich progress. Built here so that
    transformers is imported only when training."""
    import torch
    from transformers import TrainerCallback

    from reward.progress import StopEarly, StopOnNonFiniteWeights, TrainingProgress

    class KeepBest(TrainerCallback):
        """Keep the trainable weights of the chosen evaluation step in memory (cheaper than checkpoints on disk).
        Which step is `keeps_latest`'s call, from the held-out pairs' outcomes that the trainer writes into
        `held_out_outcomes` at each evaluation, grouped by `held_out_prompts`."""

        def __init__(self):
            self.best_step: int | None = None
            self.snapshot: dict[str, torch.Tensor] | None = None
            self.evaluations: list[dict[str, Any]] = []
            self.held_out_outcomes: list[bool] = []
            self.held_out_prompts: list[int] | None = None

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            metrics = metrics or {}
            if not self.held_out_outcomes or model is None:
                return
            if self.evaluations and self.evaluations[-1]["step"] == state.global_step:
                return
            outcomes = list(self.held_out_outcomes)
            self.evaluations.append({"step": state.global_step, "accuracy": sum(outcomes) / len(outcomes),
                                     "loss": metrics.get("eval_loss", 0.0), "correct": outcomes})
            if keeps_latest(self.evaluations, prompts=self.held_out_prompts):
                self.best_step = state.global_step
                self.snapshot = {
                    n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad
                }

        def restore(self, model) -> None:
            if self.snapshot is None:
                return
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in self.snapshot:
                        param.copy_(self.snapshot[name].to(param.device))

    keep_best, stop_early, divergence = KeepBest(), StopEarly(config.time_budget_s), StopOnNonFiniteWeights()
    callbacks = [stop_early, keep_best, divergence]
    if config.progress:
        shown = {"loss": "loss", "accuracy": "accuracy", "eval_accuracy": "held-out acc"}
        callbacks.append(TrainingProgress("reward training", shown))
    return callbacks + list(config.callbacks), keep_best, stop_early, divergence


# ------------------------------------------------------------------------------------------- train


def train_reward_model(config: RewardTrainingConfig) -> RewardTrainingResult:
    """Train, keep the step `keeps_latest` chooses, save the model directory; return its metrics."""
    import torch
    from transformers import PrinterCallback, set_seed
    from trl import RewardConfig

    from reward.progress import close_progress
    from reward.shared_prompt import SharedPromptCollator, shares_prompt, tokens_per_pair, with_packed_lengths
    from reward.trainer import PrefloopRewardTrainer

    _check(config)
    precision = _precision(config.precision)
    model_path = resolve_model(config.base_model)
    adapter = adapter_folder(model_path)
    if adapter is not None:
        raise UserError(f"{setting('base_model')} {config.base_model!r}: is a PEFT adapter, not a whole model; train "
                        f"from a whole model, such as the one it was trained on ({adapter_base(adapter)})")
    tokenizer = load_tokenizer(model_path)
    encoder = Encoder(tokenizer, config.max_length, config.truncation_side)

    train_rows = load_preferences(config.data, "data", config.use_margin)
    data_fingerprint = fingerprint(train_rows)
    if config.eval_data is not None:
        eval_rows = load_preferences(config.eval_data, "eval_data", config.use_margin, split="test")
    elif config.eval_fraction > 0:
        train_rows, eval_rows = split_by_prompt(train_rows, config.eval_fraction, config.seed)
    else:
        eval_rows = None
    # A base that is itself a reward model (training on from it) has pairs of its own: held out, they would be
    # remembered, and a model trained from it has trained on them too.
    base_pairs = trained_pairs(model_path)
    if eval_rows is not None and base_pairs:
        remembered = sum(key in base_pairs for key in pair_digests(eval_rows))
        if remembered:
            warn(f"{setting('base_model')} {config.base_model!r} trained on {remembered} of the {len(eval_rows)} "
                 f"held-out pair(s) (its {TRAINING_PAIRS_FILE}): the held-out accuracy that picks the step will "
                 "measure memory, not generalisation; hold out pairs it never saw (--eval-data)")
    if config.eval_data is not None:
        trained_on = set(pair_digests(train_rows))
        leaked = sum(key in trained_on for key in pair_digests(eval_rows))
        if leaked:
            warn(f"{data_label('eval_data', config.eval_data)}: {leaked} of its {len(eval_rows)} pair(s) are "
                 f"also in {data_label('data', config.data)}: the held-out accuracy that picks the step will "
                 "measure memory, not generalisation")
    margin_in_loss = config.use_margin and "margin" in train_rows.column_names
    train_set, truncated_train = encoder.encode_pairs(train_rows, margin_in_loss, "data", config.align_truncation)
    identical = [i for i, (c, r) in enumerate(zip(train_set["chosen_ids"], train_set["rejected_ids"])) if c == r]
    if identical:
        # Named by its text: after the held-out split a pair's index is not its row in the file.
        first = pair_conversations(train_rows[identical[0]])[0][-1]["content"]
        warn(f"data: {len(identical)} of {len(train_set)} training pair(s) read the same on both sides "
             f"(chosen = rejected as the model sees them; first: the pair whose chosen response starts "
             f"{first[:40]!r}): they carry no preference to learn")
    eval_set, truncated_eval = (None, 0)
    if eval_rows is not None:
        # Held-out pairs are cut as scoring cuts them (each side alone): the held-out accuracy that picks the
        # step is then the one `prefloop reward eval` reports on the same pairs.
        # Their margins count only where the training loss counts margins, so that the two losses compare.
        eval_set, truncated_eval = encoder.encode_pairs(eval_rows, margin_in_loss, "eval_data", align=False)

    # The new score head (and LoRA's A matrices) are drawn from the global RNG: unseeded, the same data, base
    # and seed gave a different model on every run.
    set_seed(config.seed)
    model = _load_model(model_path, tokenizer.pad_token_id, config.backbone_layers)
    limit = position_limit(model)
    # Refused whatever the data: a model saved with a max_length beyond its positions cannot score longer input.
    if limit is not None and config.max_length is not None and config.max_length > limit:
        raise UserError(f"{setting('max_length')} is {config.max_length}, beyond the {limit} positions "
                        f"{config.base_model} takes; set it to {limit} or less")
    for dataset, name in ((train_set, "data"), (eval_set, "eval_data")):
        if dataset is not None:
            check_token_ids(itertools.chain(dataset["chosen_ids"], dataset["rejected_ids"]), model,
                            f"{name} for {model_path}")
    depth = model.config.num_hidden_layers
    if config.trainable_layers is not None and config.trainable_layers > depth:
        raise UserError(f"{setting('trainable_layers')} must be between 0 and {depth} (the layers of the model), "
                        f"got {config.trainable_layers}")
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            task_type="SEQ_CLS",
            r=config.lora_r,
            lora_alpha=config.lora_alpha if config.lora_alpha is not None else 2 * config.lora_r,
            lora_dropout=config.lora_dropout,
            target_modules=lora_targets(model, config.trainable_layers),
            modules_to_save=[_head_name(model)],
        )
    elif config.trainable_layers is not None:
        freeze_lower_layers(model, config.trainable_layers)

    learning_rate = config.peak_learning_rate()
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    pairs_per_step = config.batch_size * config.gradient_accumulation_steps * world
    steps_per_epoch = max(1, math.ceil(len(train_set) / pairs_per_step))
    # The interval whose evaluations an epoch come nearest the number asked (the more frequent on a tie): 102 steps
    # at 4 an epoch evaluate every 25 steps; 7 steps every 2, not every step as 7 // 4 would (7 where 4 were asked).
    floor = steps_per_epoch // config.evals_per_epoch
    eval_steps = min(sorted({max(1, floor), floor + 1}),
                     key=lambda every: abs(steps_per_epoch // every - config.evals_per_epoch))
    out = Path(config.output_dir)

    # Trainer wants an output_dir even with nothing to save; keep it out of the model directory.
    scratch = tempfile.TemporaryDirectory(prefix="prefloop-reward-")
    args = RewardConfig(
        output_dir=scratch.name,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps if config.max_steps > 0 else -1,  # Transformers runs a step on 0
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=config.weight_decay,
        lr_scheduler_type=config.lr_scheduler_type,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # Without a GPU, Transformers refuses bf16 unless told the run is on CPU; then it trains in CPU bf16
        # autocast. Without it, a machine with another accelerator (MPS) would be picked over the CPU.
        use_cpu=cpu_only(),
        # Every trainable weight gets a gradient each step (frozen ones are not DDP's to track): without this,
        # DDP walks the autograd graph for unused ones every step, and says so on each rank.
        ddp_find_unused_parameters=False,
        **checkpointing_argument(config.gradient_checkpointing),
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_dropout=config.disable_dropout,
        center_rewards_coefficient=config.center_rewards_coefficient,
        max_length=None,  # already truncated by the Encoder; TRL would drop, not truncate
        eval_strategy="steps" if eval_set is not None else "no",
        eval_steps=eval_steps,
        save_strategy="no",  # the kept step lives in memory (KeepBest); the final save is ours
        logging_steps=max(1, min(10, eval_steps)),
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,  # keeps `length` for the length-grouped sampler
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        seed=config.seed,
        data_seed=config.seed,
    )
    callbacks, keep_best, stop_early, divergence = _callbacks(config)
    if eval_rows is not None:
        keep_best.held_out_prompts = prompt_of_rows(eval_rows)
    shared_prompt = config.share_prompt and shares_prompt(model)
    if shared_prompt:
        train_set = with_packed_lengths(train_set)
    trainer = PrefloopRewardTrainer(
        model=model,
        args=args,
        data_collator=SharedPromptCollator(tokenizer.pad_token_id) if shared_prompt else None,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        held_out_outcomes=keep_best.held_out_outcomes,
    )
    # The Rich progress bar replaces Trainer's printing of every log dict.
    trainer.remove_callback(PrinterCallback)
    frozen_cache = _frozen_cache(model, config, train_set, eval_set)
    try:
        start = time.monotonic()
        train_output = trainer.train()
        train_seconds = time.monotonic() - start
        if divergence.diverged:
            raise UserError(f"training diverged: {divergence.diverged}; nothing was saved (a learning rate below "
                            f"{learning_rate:g} usually helps: {setting('learning_rate')})")
        keep_best.restore(trainer.model)

        metrics: dict[str, float] = {"train_loss": float(train_output.training_loss)}
        if eval_set is not None:
            final = trainer.evaluate()
            metrics.update({k: float(v) for k, v in final.items() if isinstance(v, (int, float))})
    finally:
        stop_early.release()
        close_progress(trainer)
        if frozen_cache is not None:  # a failed or interrupted run must not leave the stand-ins in the model
            frozen_cache.close()
    full_epochs, rest = divmod(trainer.state.global_step, steps_per_epoch)
    pairs_seen = full_epochs * len(train_set) + min(rest * pairs_per_step, len(train_set))
    result = RewardTrainingResult(
        output_dir=str(out),
        metrics=metrics,
        n_train=len(train_set),
        n_eval=len(eval_set) if eval_set is not None else 0,
        truncated_train=truncated_train,
        truncated_eval=truncated_eval,
        margin_in_loss=margin_in_loss,
        data_fingerprint=data_fingerprint,
        best_step=keep_best.best_step,
        train_seconds=train_seconds,
        pairs_per_second=pairs_seen / max(train_seconds, 1e-9),
        shared_prompt=shared_prompt,
        tokens_per_pair=tokens_per_pair(train_set, shared_prompt),
        precision=precision,
        stopped=stop_early.reason,
        history=[dict(h) for h in trainer.state.log_history],
        evaluations=keep_best.evaluations,
        held_out_prompts=keep_best.held_out_prompts or [],
    )
    if trainer.is_world_process_zero():
        _save(trainer, tokenizer, config, result, train_rows, eval_rows, model_path, precision, learning_rate)
        if config.progress:
            print_summary(result)
    # Under `accelerate launch` no rank returns before the first has written the model directory.
    trainer.accelerator.wait_for_everyone()
    # Trainer keeps references (optimizer, accelerator); free them before the caller trains again.
    del trainer
    scratch.cleanup()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _frozen_cache(model, config: RewardTrainingConfig, train_set, eval_set) -> FrozenLayerCache | None:
    """A FrozenLayerCache for this run when it has frozen blocks, dropout is off and the states fit."""
    if not config.cache_frozen_layers or config.trainable_layers is None:
        return None
    frozen_blocks = model.config.num_hidden_layers - config.trainable_layers
    if frozen_blocks < 1 or not hasattr(model, model.base_model_prefix):
        return None
    if not config.disable_dropout:  # disable_dropout is Python-only: no flag to name
        warn(f"not caching the {frozen_blocks} frozen layers: with dropout on their output differs at every "
             "pass (cache_frozen_layers=False silences this)")
        return None
    import psutil

    tokens = sum(len(ids) for data in (train_set, eval_set) if data is not None
                 for column in ("chosen_ids", "rejected_ids") for ids in data[column])
    needed = tokens * model.config.hidden_size * 4  # fp32 states
    free = psutil.virtual_memory().available
    if needed > free / 2:
        warn(f"not caching the {frozen_blocks} frozen layers: their output would take {needed / 2**30:.1f} "
             f"GiB, more than half the free {free / 2**30:.1f} GiB (cache_frozen_layers=False, "
             f"{CLI_FLAGS['cache_frozen_layers']}, silences this)")
        return None
    return FrozenLayerCache(model, frozen_blocks)


def _check(config: RewardTrainingConfig) -> None:
    from transformers.trainer_utils import SchedulerType

    for name in ("eval_fraction", "num_train_epochs", "learning_rate", "center_rewards_coefficient", "time_budget_s",
                 "warmup_ratio", "weight_decay", "lora_dropout"):
        value = getattr(config, name)
        # nan passes every comparison below unnoticed; inf epochs or learning rate fail deep in Transformers or torch
        if value is not None and not math.isfinite(value):
            raise UserError(f"{setting(name)} must be a finite number, got {value}")
    if not 0 <= config.eval_fraction < 1:
        raise UserError(f"{setting('eval_fraction')} must be in [0, 1), got {config.eval_fraction}")
    for name in ("batch_size", "eval_batch_size", "evals_per_epoch", "gradient_accumulation_steps"):
        if getattr(config, name) < 1:
            raise UserError(f"{setting(name)} must be at least 1, got {getattr(config, name)}")
    if config.num_train_epochs <= 0 and config.max_steps <= 0:
        raise UserError(f"set {setting('num_train_epochs')} > 0 or {setting('max_steps')} > 0")
    if config.trainable_layers is not None and config.trainable_layers < 0:
        raise UserError(f"{setting('trainable_layers')} must be between 0 and the model's layers, "
                        f"got {config.trainable_layers}")
    if config.lora and config.trainable_layers == 0:
        raise UserError(f"{setting('trainable_layers')} 0 with {setting('lora')} leaves nothing to adapt; without "
                        "LoRA it trains the head alone")
    if config.learning_rate is not None and config.learning_rate <= 0:
        raise UserError(f"{setting('learning_rate')} must be above 0, got {config.learning_rate}")
    if config.lora and config.lora_r < 1:
        raise UserError(f"{setting('lora_r')} must be at least 1, got {config.lora_r}")
    if config.lora and config.lora_alpha is not None and config.lora_alpha < 1:  # 0 scales every update to nothing
        raise UserError(f"{setting('lora_alpha')} must be at least 1, got {config.lora_alpha}")
    for name, low, high in (("warmup_ratio", 0, 1), ("lora_dropout", 0, 1)):
        if not low <= getattr(config, name) < high:
            raise UserError(f"{setting(name)} must be in [{low}, {high}), got {getattr(config, name)}")
    if config.weight_decay < 0:
        raise UserError(f"{setting('weight_decay')} must be 0 or more, got {config.weight_decay}")
    if config.lr_scheduler_type not in {kind.value for kind in SchedulerType}:
        raise UserError(f"{setting('lr_scheduler_type')} {config.lr_scheduler_type!r} is not one of Transformers' "
                        f"schedules ({', '.join(kind.value for kind in SchedulerType)})")
    _check_scheduler_builds(config.lr_scheduler_type)
    if config.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy") and config.eval_data is None \
            and config.eval_fraction == 0:
        raise UserError(f"{setting('lr_scheduler_type')} {config.lr_scheduler_type!r} steps on the held-out loss, "
                        f"and nothing is held out: give {setting('eval_data')} or a {setting('eval_fraction')} above "
                        "0, or pick another schedule")
    check_length_settings(config.max_length, config.truncation_side,
                          (setting("max_length"), setting("truncation_side")))
    check_seed(config.seed, setting("seed"))
    # Settings another one overrules, said rather than dropped (a default left alone says nothing).
    if config.eval_data is not None and config.eval_fraction not in (0, DEFAULTS.eval_fraction):
        warn(f"{setting('eval_fraction')} {config.eval_fraction:g} is not used: {setting('eval_data')} "
             "gives the held-out pairs")
    unused = [name for name in ("lora_r", "lora_alpha", "lora_dropout")
              if getattr(config, name) != getattr(DEFAULTS, name)]
    if unused and not config.lora:
        warn(f"{', '.join(setting(name) for name in unused)} not used: they set LoRA's adapter, and "
             f"{setting('lora')} is off")
    if not config.cache_frozen_layers and config.trainable_layers is None:
        warn(f"{setting('cache_frozen_layers')} is not used: without {setting('trainable_layers')} "
             "every layer trains and none is frozen")
    if config.center_rewards_coefficient is not None and config.center_rewards_coefficient < 0:
        raise UserError(f"{setting('center_rewards_coefficient')} must be 0 or more, "
                        f"got {config.center_rewards_coefficient}")
    if config.time_budget_s is not None and config.time_budget_s <= 0:
        raise UserError(f"{setting('time_budget_s')} must be above 0, got {config.time_budget_s}")
    check_output_dir(Path(config.output_dir), "prefloop.json", "reward_model",
                     {setting(name): getattr(config, name) for name in ("data", "eval_data", "base_model")})
    ds_stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    if ds_stage == "3":
        raise UserError("DeepSpeed ZeRO-3 is not supported for reward training; use deepspeed_zero2.yaml")


def _check_scheduler_builds(name: str) -> None:
    """UserError for a schedule that needs settings of its own (cosine_with_min_lr's floor, warmup_stable_decay's
    decay steps): the config has no field for them, and Transformers would fail only after the model loaded."""
    import torch
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10)
    except (TypeError, ValueError) as e:
        raise UserError(f"{setting('lr_scheduler_type')} {name!r} needs settings this config has no field for "
                        f"({first_line(e)}); pick another schedule") from None


# -------------------------------------------------------------------------------------------- save


def _save(trainer, tokenizer, config, result, train_rows, eval_rows, model_path, precision, learning_rate) -> None:
    """Write the model directory in a staging folder that then replaces `output_dir` whole (`replacing_dir`)."""
    with replacing_dir(Path(config.output_dir)) as staging, no_transformers_bar():
        _write_model_dir(staging, trainer, tokenizer, config, result, train_rows, eval_rows, model_path, precision,
                         learning_rate)
        if eval_rows is not None:
            _record_held_out_as_scored(staging, eval_rows, config.eval_batch_size, result)


def _record_held_out_as_scored(out: Path, eval_rows, batch_size: int, result: RewardTrainingResult) -> None:
    """Make the held-out accuracy of the saved model the one `prefloop reward eval` gives on those pairs: score
    them with the saved model as it does. Training evaluates under its mixed precision (bf16 autocast on a CPU
    with bf16 units; scoring runs fp32 there), where a near tie can round to an exact one, counted wrong. The
    training-time figure stays as `eval_accuracy_in_training`."""
    from reward.evaluate import accuracy_entry
    from reward.score import RewardScorer

    chosen, rejected = RewardScorer(out, batch_size=batch_size).score_pairs(eval_rows)
    result.metrics["eval_accuracy_in_training"] = result.metrics["eval_accuracy"]
    # With an interval, as `reward eval` gives it: on a few dozen held-out pairs the accuracy alone says little.
    entry = accuracy_entry((chosen.mean > rejected.mean).astype(float), 1000, 0, prompt_of_rows(eval_rows))
    result.metrics["eval_accuracy"] = entry["accuracy"]
    result.eval_accuracy_ci = entry["ci"]
    info = json.loads((out / "prefloop.json").read_text())
    info["metrics"] = result.metrics
    info["eval_accuracy_ci"] = entry["ci"]
    (out / "prefloop.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    (out / "README.md").write_text(model_card(info))


def _write_model_dir(out: Path, trainer, tokenizer, config, result, train_rows, eval_rows, model_path, precision,
                     learning_rate) -> None:
    import peft
    import torch
    import transformers
    import trl

    model = trainer.accelerator.unwrap_model(trainer.model)
    if config.lora:
        # The adapter alone, for those who want it; the merged model is what everything else loads.
        model.save_pretrained(out / "adapter")
        model = model.merge_and_unload()
    model = model.to(torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    # Saved cutting as training cut, so `truncation=True` in plain Transformers (a pipeline) sees what training saw.
    # save_pretrained writes the side from init_kwargs, not from the attribute.
    tokenizer.truncation_side = tokenizer.init_kwargs["truncation_side"] = config.truncation_side
    if config.max_length is not None:
        tokenizer.model_max_length = config.max_length
    tokenizer.save_pretrained(out)
    # So `reward eval` and `reward compare` can say when pairs they score are pairs the model trained on: its own,
    # and those of a base that was a reward model already.
    digests = set(pair_digests(train_rows)) | trained_pairs(model_path)
    (out / TRAINING_PAIRS_FILE).write_text("".join(f"{d}\n" for d in sorted(digests)))
    info = {
        "kind": "reward_model",
        "output_dir": str(config.output_dir),
        "base_model": config.base_model,
        "base_model_path": model_path,
        "max_length": config.max_length,
        "truncation_side": config.truncation_side,
        "align_truncation": config.align_truncation,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "margin_in_loss": result.margin_in_loss,
        "data_fingerprint": result.data_fingerprint,
        "eval_data_fingerprint": fingerprint(eval_rows) if eval_rows is not None else None,
        "metrics": result.metrics,
        "n_train": result.n_train,
        "n_eval": result.n_eval,
        "n_eval_prompts": result.n_eval_prompts,
        "truncated_train": result.truncated_train,
        "truncated_eval": result.truncated_eval,
        "best_step": result.best_step,
        # Without each pair's outcome: `RewardTrainingResult.evaluations` has them.
        "evaluations": [{k: v for k, v in e.items() if k != "correct"} for e in result.evaluations],
        "stopped": result.stopped,
        "train_seconds": round(result.train_seconds, 2),
        "pairs_per_second": round(result.pairs_per_second, 3),
        "shared_prompt": result.shared_prompt,
        "tokens_per_pair": round(result.tokens_per_pair, 1),
        # How the run was launched: the batch size is per process, so the effective one is this many times it.
        "processes": trainer.accelerator.num_processes,
        "distributed": trainer.accelerator.distributed_type.value,
        "precision": precision,
        "learning_rate": learning_rate,
        # fields(), not asdict(): asdict would deep-copy the datasets and callbacks only to drop them.
        "config": {f.name: getattr(config, f.name) for f in fields(config)
                   if f.name not in ("data", "eval_data", "callbacks")}
        | {"data": _describe(config.data, "train"), "eval_data": _describe(config.eval_data, "test")},
        "versions": {"transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__, "torch": torch.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / "prefloop.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    (out / "README.md").write_text(model_card(info))


def _describe(data: Any, split: str) -> str | None:
    """The data as prefloop.json records it: a path as given, data in memory by its kind and size (of a
    DatasetDict, the split training read, as `one_split` picks it)."""
    import datasets

    if data is None:
        return None
    if isinstance(data, (str, Path)):
        return str(data)
    if isinstance(data, datasets.DatasetDict):
        read = next(iter(data)) if len(data) == 1 else split
        return f"<DatasetDict, its {read!r} split: {len(data[read])} row(s)>"
    return f"<{type(data).__name__} with {len(data)} row(s)>"


def model_card(info: dict[str, Any]) -> str:
    """A short model card: what the model is, how it was trained, how well it does, how to use it."""
    metrics = info["metrics"]
    # TRL's eval_margin is the mean reward gap (chosen minus rejected), not the raters' margin column; its
    # eval_num_tokens counts training tokens, not the held-out pairs'.
    notes = {"eval_margin": " (mean reward of chosen minus rejected)",
             "eval_num_tokens": " (training tokens seen, as TRL counts them)"}
    rows = "\n".join(f"| {k}{notes.get(k, '')} | {v:.4f} |"
                     for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))
    centering = info["config"]["center_rewards_coefficient"]
    loss = (("with the raters' margin (the `margin` column) subtracted from the reward gap" if info["margin_in_loss"]
             else "without margins") + (f", reward centering {centering:g}" if centering else ""))
    lora = " with LoRA (score head trained in full, adapters merged)" if info["config"]["lora"] else ""
    ci = info.get("eval_accuracy_ci")
    held_out = (f"- held-out accuracy of this model: {metrics['eval_accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] (95%)\n"
                if ci else "")
    kept = info["config"]["backbone_layers"] or "all"
    aligned = (" (in training, an over-long pair lost the same prompt tokens on both sides)"
               if info.get("align_truncation") and info["truncation_side"] == "left" else "")
    trained = "all" if info["config"]["trainable_layers"] is None else f"the top {info['config']['trainable_layers']}"
    cut = (f"from the {info['truncation_side']} to {info['max_length']} tokens" if info["max_length"]
           else "nothing (no max length)")
    length = (f"{info['max_length']} tokens, truncation side: {info['truncation_side']}{aligned}" if info["max_length"]
              else "none (nothing truncated)")
    # A chat template writes the special tokens itself; the tokenizer adding its own (a second BOS) would change
    # the reward. Without one, prefloop lays a conversation out as "User: ..." / "Assistant: ..." turns.
    use = ('text = reward_model.tokenizer.apply_chat_template(conversation, tokenize=False)\n'
           'reward = reward_model(text, add_special_tokens=False)[0]["score"]' if info.get("chat_template") else
           'text = "User: Hi\\n\\nAssistant: Hello!"  # the layout without a chat template: reward.data.render\n'
           'reward = reward_model(text)[0]["score"]')
    evaluations = ", ".join(("**step {} {:.3f}**" if e["step"] == info["best_step"] else "step {} {:.3f}").format(
        e["step"], e["accuracy"]) for e in info["evaluations"])
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reward-model, trl, prefloop]
---

# Reward model

A reward model trained by prefloop with TRL's `RewardTrainer`{lora}: it reads a conversation and returns
one scalar; higher means more preferred by the raters.

- base model: `{info["base_model"]}`
- training pairs: {info["n_train"]} ({info["truncated_train"]} truncated), held-out pairs: {_held_out_pairs(info["n_eval"], info["n_eval_prompts"], info["truncated_eval"])}
- data: `{info["config"]["data"]}` ({info["data_fingerprint"]})
- max length: {length}
- loss: TRL's pairwise loss {loss}
- layers kept from the base model: {kept}; trained: {trained} (any below them frozen as in the base)
- kept step (the latest held-out evaluation unless an earlier one ranked significantly more of the same held-out pairs right): {info["best_step"] if info["best_step"] is not None else "the last (no held-out pairs)"}
{held_out}- held-out accuracy at each evaluation (in training, {info["precision"]}): {evaluations or "none (no held-out pairs)"}
- precision: {info["precision"]}, learning rate: {info["learning_rate"]}, processes: {info["processes"]} ({info["distributed"]})

| metric | value |
|---|---|
{rows}

## Use

```python
from reward.score import RewardScorer
scorer = RewardScorer("{info.get("output_dir", ".")}")
scorer.score([[{{"role": "user", "content": "Hi"}}, {{"role": "assistant", "content": "Hello!"}}]])
```

In plain Transformers, the reward is the one logit (`function_to_apply="none"`: by default the pipeline returns
its sigmoid); the saved tokenizer cuts {cut}, as training did:

```python
from transformers import pipeline
reward_model = pipeline("text-classification", model="{info.get("output_dir", ".")}",
                        function_to_apply="none", truncation=True)
{use}
```
"""


def _higher_step(evaluations: list[dict[str, Any]], kept: int | None) -> str:
    """"; step 105 scored 0.651, ..." where an evaluation scored higher than the kept step, else "": a run that
    trains past its peak (more epochs than the default) shows it, though `keeps_latest` kept the later step."""
    if not evaluations or kept is None:
        return ""
    kept_accuracy = next(e["accuracy"] for e in evaluations if e["step"] == kept)
    best = max(evaluations, key=lambda e: e["accuracy"])
    if best["accuracy"] <= kept_accuracy:
        return ""
    return f"; step {best['step']} scored {best['accuracy']:.3f}, not significantly better"


def _held_out_pairs(pairs: int, prompts: int, truncated: int) -> str:
    if not pairs:
        return "none"
    return f"{pairs} on {prompts} prompt{'s' * (prompts != 1)} ({truncated} truncated)"


def print_summary(result: RewardTrainingResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"reward model saved to {result.output_dir}", show_header=False)
    table.add_row("training pairs", f"{result.n_train} ({result.truncated_train} truncated, none dropped)")
    table.add_row("held-out pairs", _held_out_pairs(result.n_eval, result.n_eval_prompts, result.truncated_eval))
    if "eval_accuracy" in result.metrics:
        in_training = result.metrics.get("eval_accuracy_in_training", result.metrics["eval_accuracy"])
        rounded = (f", {in_training:.3f} in training's {result.precision}"
                   if in_training != result.metrics["eval_accuracy"] else "")
        interval = (f" [{result.eval_accuracy_ci[0]:.3f}, {result.eval_accuracy_ci[1]:.3f}]"
                    if result.eval_accuracy_ci else "")
        table.add_row("held-out accuracy", f"{result.metrics['eval_accuracy']:.3f}{interval} (kept step {result.best_step}"
                      f"{rounded}{_higher_step(result.evaluations, result.best_step)})")
    table.add_row("train loss", f"{result.metrics['train_loss']:.4f} ("
                  + ("the data's margin in the loss)" if result.margin_in_loss else "no margin in the loss)"))
    table.add_row("tokens per pair", f"{result.tokens_per_pair:.0f}"
                  + (" (one sequence a pair, its prompt run once)" if result.shared_prompt else ""))
    table.add_row("time", f"{result.train_seconds:.1f} s, {result.pairs_per_second:.1f} pairs/s"
                  + (f" (stopped early: {result.stopped})" if result.stopped else ""))
    Console(stderr=True, markup=False).print(table)
