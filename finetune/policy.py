"""Loading a policy (a causal LM, optionally with a LoRA adapter) and checking its chat template."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from collect.errors import UserError, first_line
from collect.offline_models import has_tokenizer, no_transformers_bar
from finetune.training import pick_device

_PROBE = [
    {"role": "system", "content": "probe system text"},
    {"role": "user", "content": "probe user text"},
    {"role": "assistant", "content": "probe assistant text"},
    {"role": "user", "content": "probe second user text"},
]


def resolve(name_or_path: str) -> str:
    """A short alias (`smollm2-135m-instruct`) as a local directory; anything else unchanged."""
    from collect.offline_models import resolve_model

    return resolve_model(name_or_path)


def read_chat_template(chat_template: str) -> str:
    """A Jinja template given inline or as the path of a .jinja file."""
    path = Path(chat_template)
    if "{%" not in chat_template and "{{" not in chat_template:
        if not path.is_file():
            raise UserError(f"chat template {chat_template}: no such file (give a .jinja file or the template text)")
        return path.read_text(encoding="utf-8")
    return chat_template


def load_tokenizer(policy: str, chat_template: str | None = None, stops_from: str | None = None
                   ) -> PreTrainedTokenizerBase:
    """The policy's tokenizer, padded on the left for generation, with its chat template checked against the
    tokens the model stops on: those of `stops_from`'s generation config (default: the policy's own), which an
    adapter folder, holding the tokenizer but no generation config, names for its base."""
    path = resolve(policy)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"policy {policy}: cannot load a tokenizer from {path} ({e})") from None
    if chat_template is not None:
        tokenizer.chat_template = read_chat_template(chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    check_chat_template(tokenizer, policy, stop_token_ids(resolve(stops_from) if stops_from else path))
    return tokenizer


def stop_token_ids(path: str) -> list[int]:
    """The ids the model's generation config stops on (none when it has no generation config)."""
    try:
        eos = GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):
        return []
    return [eos] if isinstance(eos, int) else list(eos or [])


def check_chat_template(tokenizer: PreTrainedTokenizerBase, name: str, stop_ids: list[int] | None = None) -> None:
    """Raise UserError when the template is missing, does not render, or does not fit this tokenizer.

    A template copied from another model family (a Llama-3 template on a ChatML tokenizer, say) renders
    without complaint, but its end-of-turn marker is not a token the model stops on: generation would run
    on to the length limit. So the text after an assistant turn must start with an EOS token (`stop_ids`:
    the model's `generation_config.eos_token_id`, plus the tokenizer's EOS).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"policy {name}: the tokenizer has no chat template; pass one with --chat-template FILE.jinja"
        )
    rendered = None
    for probe in (_PROBE, _PROBE[1:]):  # some templates reject a system turn
        try:
            rendered = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
            break
        except Exception as e:  # jinja raises TemplateError and friends for templates that do not fit
            error = e
    if rendered is None:
        raise UserError(f"policy {name}: the chat template fails on a plain user/assistant conversation ({error})")
    for message in _PROBE[1:]:
        if message["content"] not in rendered:
            raise UserError(f"policy {name}: the chat template drops the {message['role']} turn")
    stops = {i for i in (stop_ids or []) if i is not None} | {tokenizer.eos_token_id}
    after = rendered.split(_PROBE[2]["content"], 1)[1].lstrip(" \n")
    first = tokenizer(after, add_special_tokens=False)["input_ids"][:1]
    if not first or first[0] not in stops:
        shown = after[:20].replace("\n", "\\n")
        stop_tokens = ", ".join(sorted(str(tokenizer.convert_ids_to_tokens(i)) for i in stops))
        raise UserError(
            f"policy {name}: the chat template ends an assistant turn with {shown!r}, not with a token the model "
            f"stops on ({stop_tokens}): the template belongs to another model; pass the right one with "
            "--chat-template"
        )


def load_policy(
    policy: str,
    adapter: str | None = None,
    *,
    device: str | None = None,
    chat_template: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM ready for generation (eval mode, on the best device) with its tokenizer.

    With `adapter`, the model is a `peft.PeftModel`; `with model.disable_adapter():` gives the base model
    back without loading it twice. The adapter's own tokenizer (saved with its chat template) wins when present.
    """
    path = resolve(policy)
    check_causal_lm(path, policy)
    device = device or pick_device()
    # "cuda:1" under `accelerate launch`: each rank's own GPU.
    dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    with no_transformers_bar():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer_source = adapter if adapter and has_tokenizer(Path(adapter)) else policy
    tokenizer = load_tokenizer(tokenizer_source, chat_template, stops_from=path)
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise UserError(f"adapter {adapter}: no adapter_config.json there (expected a PEFT adapter directory)")
        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (RuntimeError, ValueError) as e:  # a size mismatch: the adapter was trained on another base
            raise UserError(f"adapter {adapter}: does not fit policy {policy} ({first_line(e)}); pass the policy it "
                            "was trained from") from None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return model, tokenizer


def check_causal_lm(path: str, name: str) -> None:
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise UserError(f"policy {name}: not a model directory or known model id ({e})") from None
    architectures = config.architectures or []
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))
                                 for a in architectures):
        raise UserError(f"policy {name}: {', '.join(architectures)} is not a causal language model")
