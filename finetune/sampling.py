"""Sampling responses from a policy and scoring their tokens: shared by best-of-n and evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from finetune.prompts import Conversation


@dataclass
class Samples:
    """`n` responses per prompt, in prompt order: texts[i][k] is the k-th response to prompt `indices[i]`."""

    texts: list[list[str]]
    token_ids: list[list[list[int]]]  # the generated ids, EOS included when the model stopped
    indices: list[int]  # which of the prompts given: all sampled ones in one process, this rank's share in several
    finished: list[list[bool]]  # whether each response ended on a stop token, not cut off at max_new_tokens


def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Conversation],
    *,
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    should_stop: Callable[[int, int], bool] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Samples:
    """Sample `n` responses per prompt. `should_stop(sampled, total)`, asked before each batch but the first,
    ends sampling early: the Samples then cover the first `sampled` prompts.

    Prompts go to `generate` `batch_size // n` at a time (at least one), and each such chunk is seeded with
    `seed` + the index of its first prompt: the same call on two models (base and aligned) draws the same
    random numbers for the same prompt. A prompt's draws depend on its chunk, so changing `batch_size` or `n`
    changes the samples.

    `shard` (rank, number of ranks) splits the work between data-parallel processes: the chunks are dealt out in
    turn, each rank samples its own, and the Samples cover those (`indices`). A chunk's seed does not depend on
    the split, so the responses are the ones one process would draw. Every rank asks `should_stop` before each
    round of chunks, as many times as the others (a rank past the last chunk still asks), so that a
    `should_stop` that makes the ranks agree (`reward.progress.StopEarly.stop_sampling`) cannot leave one waiting.
    """
    rank, ranks = shard
    texts: list[list[str]] = []
    token_ids: list[list[list[int]]] = []
    indices: list[int] = []
    finished: list[list[bool]] = []
    stops = _stop_ids(model, tokenizer)
    device = model.device
    # One prompt (repeated n times) per generate call when n fills a batch; else several prompts at once.
    per_call = max(1, batch_size // n)
    starts = range(0, len(prompts), per_call)
    for first in range(0, len(starts), ranks):  # one round: a chunk per rank
        if first and should_stop is not None and should_stop(starts[first], len(prompts)):
            break
        if first + rank >= len(starts):
            continue
        start = starts[first + rank]
        chunk = prompts[start:start + per_call]
        rendered = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in chunk]
        batch = tokenizer([r for r in rendered for _ in range(n)], return_tensors="pt", padding=True,
                          padding_side="left", add_special_tokens=False).to(device)
        # Seeding per chunk keeps draws tied to prompt indices; per_call is the same for both models compared.
        torch.manual_seed(seed + start)
        with torch.inference_mode():
            out = model.generate(
                **batch, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None, top_k=None, max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=stops,
            )
        generated = out[:, batch["input_ids"].shape[1]:].tolist()
        for i in range(len(chunk)):
            ids_i, texts_i = [], []
            for row in generated[i * n:(i + 1) * n]:
                ids = _until_stop(row, stops)
                ids_i.append(ids)
                texts_i.append(tokenizer.decode([t for t in ids if t not in stops], skip_special_tokens=True).strip())
            token_ids.append(ids_i)
            texts.append(texts_i)
            indices.append(start + i)
            finished.append([bool(ids) and ids[-1] in stops for ids in ids_i])
    return Samples(texts=texts, token_ids=token_ids, indices=indices, finished=finished)


def _stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _until_stop(row: list[int], stops: list[int]) -> list[int]:
    """The generated ids up to and including the first stop token (the rest is padding)."""
    for i, token in enumerate(row):
        if token in stops:
            return row[:i + 1]
    return row


def completion_kl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Conversation],
    completions: Sequence[list[int]],
    *,
    temperature: float = 1.0,
    batch_size: int = 8,
) -> list[float]:
    """Per completion, KL(adapter || base) summed along it: at each completion token, the exact KL between the
    next-token distributions of `model` (a PEFT model) with and without its adapter, at `temperature`.

    Over completions sampled from the adapter this is an estimate of the KL between the two models' response
    distributions (the chain rule). It has the expectation of the plain estimate, the mean log-ratio of the
    sampled sequences, but every term is a KL, so it is never below zero, and each position contributes its
    whole distribution rather than one drawn token: a plain estimate on 32 prompts came out negative on a GPU.
    The temperature divides the logits as sampling does, so the numbers describe the distributions the
    responses were drawn from; with top_p < 1 or greedy decoding (then taken at temperature 1) they were drawn
    from narrower ones, and the sum is the KL of the full distributions along those responses.
    """
    out: list[float] = []
    device = model.device
    for start in range(0, len(prompts), batch_size):
        rows, spans = [], []
        for messages, completion in zip(prompts[start:start + batch_size], completions[start:start + batch_size]):
            prompt_ids = tokenizer.apply_chat_template(
                messages, tokenize=True, add_generation_prompt=True, return_dict=False)
            rows.append(list(prompt_ids) + list(completion))
            # Token t is predicted at position t-1: the completion's tokens are predicted at these positions.
            spans.append((len(prompt_ids) - 1, len(rows[-1]) - 1))
        width = max(len(r) for r in rows)
        # Right padding: positions stay those the model saw while generating from the unpadded prompt.
        input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=device)
        attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        aligned = _completion_log_probs(model, input_ids, attention, spans, temperature)
        with model.disable_adapter():
            base = _completion_log_probs(model, input_ids, attention, spans, temperature)
        per_token = (aligned.exp() * (aligned - base)).sum(-1)
        out.extend(float(kl.sum()) for kl in per_token.split([last - first for first, last in spans]))
    return out


def _completion_log_probs(model: PreTrainedModel, input_ids: torch.Tensor, attention: torch.Tensor,
                          spans: list[tuple[int, int]], temperature: float) -> torch.Tensor:
    """Next-token log-probabilities at the completions' positions only, one row per position, rows in order: the
    prompts' positions would be most of a full-vocabulary float32 tensor and are not needed."""
    with torch.inference_mode():
        logits = model(input_ids=input_ids, attention_mask=attention).logits
        kept = torch.cat([logits[i, first:last] for i, (first, last) in enumerate(spans)]).float()
    return torch.log_softmax(kept / (temperature if temperature > 0 else 1.0), dim=-1)
