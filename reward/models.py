"""Loading the models that reward training and scoring share, and the device settings every TRL config here and in
finetune/ takes.

    from reward.models import load_tokenizer, load_sequence_classifier
    model = load_sequence_classifier("runs/rm", trained_head=True)  # a trained reward model, its head checked
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collect.errors import UserError, first_line, warn
from collect.offline_models import has_tokenizer, no_transformers_bar

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def checkpointing_argument(enabled: bool) -> dict[str, bool]:
    """The TrainingArguments keyword that turns activation (gradient) checkpointing on or off, for
    `RewardConfig(**checkpointing_argument(False))` and the other TRL configs. Transformers renamed
    gradient_checkpointing to activation_checkpointing: newer releases warn on the old name, older ones
    (5.17, on the GPU machine this was found on) refuse the new one. TRL's configs default checkpointing
    to on, so the value is always passed."""
    from transformers import TrainingArguments

    known = {f.name for f in fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing": enabled}


def cpu_only() -> bool:
    """`use_cpu` for the TRL configs: True without CUDA. Then DeepSpeed, if installed, is told so too: Accelerate
    imports it to look for its engine in every run, and it warns "Setting accelerator to CPU" each time."""
    import torch

    if torch.cuda.is_available():
        return False
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return True


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX or AVX512-BF16). There, bf16 autocast
    trains a MiniLM reward model 1.6x faster than fp32 (Xeon with AMX, bench/reward.py), 2.3x on an AMD EPYC
    with AVX512-BF16 (a training step of 32 sequences of 256 tokens: 1.7 s against 3.9 s; smollm2-135m 2.3x);
    on other CPUs bf16 is emulated and several times slower than fp32."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def load_tokenizer(model_path: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a local model or adapter directory or a Hugging Face id; UserError when it is not there."""
    from transformers import AutoTokenizer

    folder = Path(model_path)
    if folder.is_dir() and not any((folder / name).exists() for name in ("config.json", "adapter_config.json")):
        raise UserError(f"cannot load model {model_path!r}: not a model directory (it has no config.json)")
    # Without its files Transformers builds a tokenizer from the config alone (a BERT of 5 words: every word
    # [UNK]), and the model scores nonsense without a word of complaint.
    if folder.is_dir() and not has_tokenizer(folder):
        raise UserError(f"cannot load model {model_path!r}: no tokenizer in it (no tokenizer.json, "
                        "tokenizer_config.json, vocab, sentencepiece or tekken file); "
                        "copy the tokenizer's files from the model it was trained from")
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {model_path!r}: {first_line(e)}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"model {model_path!r}: its tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_sequence_classifier(model_path: str, backbone_layers: int | None = None, *, trained_head: bool = False,
                             **kwargs: Any) -> PreTrainedModel:
    """`AutoModelForSequenceClassification.from_pretrained(model_path, **kwargs)` without Transformers' load-report
    table for what loading a checkpoint for reward scoring expects (a new score head, a causal LM's unused lm_head,
    the upper layers `backbone_layers` leaves out), and with a one-line warning for anything else
    (`unexpected_weights`). `trained_head`: the head must come from the checkpoint (scoring), else UserError: a
    head drawn at random would score every run differently. `model_path` is a folder or a Hub id as Transformers
    takes it (`collect.offline_models.resolve_model` turns an alias into one); a folder that is not a model is a
    UserError."""
    try:
        model, drawn = load_classifier_and_drawn_head(model_path, backbone_layers, trained_head=trained_head,
                                                      **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model {model_path!r}: {first_line(e)}") from None
    if trained_head and drawn:
        raise UserError(f"model {model_path!r}: its score head ({', '.join(drawn[:2])}) is not in the checkpoint, so "
                        "it would be drawn at random: a base model or another kind of classifier, not a trained "
                        "reward model (train one with `prefloop reward train`)")
    return model


def load_classifier_and_drawn_head(model_path: str, backbone_layers: int | None, trained_head: bool,
                                   **kwargs: Any) -> tuple[PreTrainedModel, list[str]]:
    """`load_sequence_classifier`'s model and the names of the head weights it drew at random (not in the
    checkpoint, or there in another shape). `trained_head`: report a missing head (scoring) rather than let TRL's
    context drop it from the loading report (training, where the head is new)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        # TRL's context drops a missing head from the loading report; scoring needs to see one.
        with no_transformers_bar(), contextlib.nullcontext() if trained_head else suppress_seqcls_warning():
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                model_path, output_loading_info=True, **kwargs)
    finally:
        transformers_logging.set_verbosity(verbosity)
    drawn = [k for k in loading.get("missing_keys", ()) if not k.startswith(model.base_model_prefix + ".")]
    drawn += [mismatch[0] for mismatch in loading.get("mismatched_keys", ())]
    surprises = unexpected_weights(loading, model.base_model_prefix, backbone_layers)
    if surprises:
        warn(f"model {model_path!r}: {surprises}")
    return model, sorted(drawn)


def unexpected_weights(loading: dict[str, Any], backbone: str, backbone_layers: int | None) -> str:
    """What `from_pretrained(..., output_loading_info=True)` reported beyond what loading a checkpoint for
    reward scoring explains (a new head, or one of another shape replaced: whatever lies outside the `backbone`
    prefix, such as "bert" or "model"; an unused lm_head; layers from `backbone_layers` up), as one sentence;
    "" when nothing."""
    import re

    def expected_unused(key: str) -> bool:
        layer = re.search(r"\.layers?\.(\d+)\.", key)
        return key.startswith("lm_head.") or (backbone_layers is not None and layer is not None
                                               and int(layer.group(1)) >= backbone_layers)

    problems = []
    for kind, keys in (("newly initialised, missing from the checkpoint",
                        [k for k in loading.get("missing_keys", ()) if k.startswith(backbone + ".")]),
                       ("in the checkpoint but unused", [k for k in loading.get("unexpected_keys", ())
                                                          if not expected_unused(k)]),
                       ("of another shape in the checkpoint, newly initialised",
                        [k for k, *_ in loading.get("mismatched_keys", ()) if k.startswith(backbone + ".")])):
        if keys:
            shown = ", ".join(sorted(keys)[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} weight(s) {kind} ({shown})")
    return "; ".join(problems)


def transformer_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The model's stack of transformer blocks (BERT's encoder.layer, Llama's layers, GPT-2's h)."""
    import torch

    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"{type(model).__name__}: cannot find its {count} transformer layers")
