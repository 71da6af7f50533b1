"""Training a decoder reward model on each pair as one sequence, so the prompt runs once instead of twice.

Chosen and rejected share their start (the prompt, often most of the tokens) and differ only in the ending.
In a decoder, a token's state depends only on the tokens before it, so the shared start gives the same states
in both sequences. A pair is therefore packed as

    shared start | chosen ending | rejected ending

with positions restarting where the rejected ending begins and an attention mask under which each ending sees
the shared start and itself, never the other ending. The reward of each side is read at its last token that is
not padding, as sequence classification does (`reward_token`). The rewards equal those of two separate sequences
(to float rounding; the tests check it), from fewer tokens (bench/results/reward_shared_prompt.md). An
over-long pair still shares its start: training cuts both sides' prompt alike (reward.data `encode_pair`). A
pair whose sides share less than half the shorter one (cut each alone, or a response longer than the prompt)
keeps two plain rows in the same batch (`packs`). Scoring (reward.score, and so evaluation, GRPO's
reward function and best-of-n) packs every group of conversations that share a start the same way, one
ending after another (`prompt_groups`, `packed_batch`): a pair, several pairs on one prompt, a prompt's sampled
responses.

Encoders see in both directions, so the start's states depend on the ending: they keep two sequences
(`shares_prompt` is False for them). So do models with sliding-window layers (the packed mask would stand in
for their window). Data-parallel runs (`accelerate launch`, DDP or DeepSpeed ZeRO-2) pack: the packed batch goes
through the model's own forward, and so through the data-parallel wrapper that averages gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import extract_model_from_parallel
from trl.trainer.reward_trainer import DataCollatorForPreference

from reward.data import shared_start

if TYPE_CHECKING:
    from datasets import Dataset

# The attention kernels that take an explicit 4D mask; FlashAttention and friends take none.
MASK_KINDS = {"sdpa": "bool", "eager": "additive"}


def shares_prompt(model) -> bool:
    """Whether a pair can train as one packed sequence on `model`: causal attention over the whole sequence
    (no sliding window, which the packed mask would override) through a kernel that takes a 4D mask, with a
    `score` head read at the last token (decoder sequence classification)."""
    causal = [m.is_causal for m in model.modules() if hasattr(m, "is_causal") and "Attention" in type(m).__name__]
    return (bool(causal) and all(causal) and hasattr(model, "score")
            and not _sliding_window(model.config) and model.config._attn_implementation in MASK_KINDS)


def _sliding_window(config) -> bool:
    kinds = getattr(config, "layer_types", None)
    if kinds:
        return any(kind != "full_attention" for kind in kinds)
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True)


def reward_token(ids: list[int], pad_token_id: int) -> int:
    """Where sequence classification reads a sequence's reward: at its rightmost token that is not the pad token
    (Transformers' rule, so an end-of-sequence token that doubles as the pad token is skipped), 0 when none is."""
    return next((i for i in range(len(ids) - 1, -1, -1) if ids[i] != pad_token_id), 0)


def packs(chosen: list[int], rejected: list[int]) -> bool:
    """Whether a pair runs as one packed row: when the shared start is at least half the shorter side. A pair
    whose sides were truncated each by its own amount (so their starts no longer line up) shares nothing, and
    one row of twice the length would cost more attention than the two rows it stands for."""
    return 2 * shared_start(chosen, rejected) >= min(len(chosen), len(rejected))


def packed_tokens(chosen: list[int], rejected: list[int]) -> int:
    """Tokens the pair costs: one packed row, or its two sequences when it does not pack."""
    return row_tokens([chosen, rejected]) if packs(chosen, rejected) else len(chosen) + len(rejected)


def row_length(chosen: list[int], rejected: list[int]) -> int:
    """The width of the widest row the pair takes."""
    return row_tokens([chosen, rejected]) if packs(chosen, rejected) else max(len(chosen), len(rejected))


def tokens_per_pair(dataset, shared: bool) -> float:
    """The training tokens a pair of `dataset` (`chosen_ids`, `rejected_ids`) costs on average, packed or as two
    sequences."""
    pairs = list(zip(dataset["chosen_ids"], dataset["rejected_ids"]))
    return sum(packed_tokens(c, r) if shared else len(c) + len(r) for c, r in pairs) / max(len(pairs), 1)


def group_start(sequences: list[list[int]]) -> int:
    """Tokens all of `sequences` share at their start, leaving each at least its last token (`shared_start`)."""
    return min(shared_start(sequences[0], other) for other in sequences[1:])


def row_tokens(sequences: list[list[int]]) -> int:
    """The tokens of one packed row of `sequences` (`packed_batch`): the shared start once, then each ending."""
    if len(sequences) == 1:
        return len(sequences[0])
    return sum(map(len, sequences)) - (len(sequences) - 1) * group_start(sequences)


def packed_batch(rows: list[list[list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One batch of rows, each row a list of sequences: one sequence runs plain; several run packed as

        shared start | first ending | second ending | ...

    the first sequence whole, then each further one's ending (after their `group_start`) with its positions
    continuing from the shared start, seeing that start and itself, never another ending.

    Returns `input_ids`, `attention_mask` (the real tokens), `position_ids`, `pair_mask` (rows, 1, n, n: who
    attends to whom) and `reward_index`: for each sequence, in the order given, where its reward is read in the
    flattened rows (its last token that is not padding, `reward_token`)."""
    layouts = []  # (ids, positions, where each sequence's reward is read, the blocks: (first, end, start))
    for sequences in rows:
        first = sequences[0]
        start = group_start(sequences) if len(sequences) > 1 else len(first)
        ids, positions, reads = list(first), list(range(len(first))), [reward_token(first, pad_token_id)]
        blocks = [(0, len(first), None)]
        for other in sequences[1:]:
            at = reward_token(other, pad_token_id)
            # A reward read inside the shared start (an ending of pad tokens only) reads the first sequence's copy.
            reads.append(at if at < start else len(ids) + at - start)
            blocks.append((len(ids), len(ids) + len(other) - start, start))
            ids += other[start:]
            positions += range(start, len(other))
        layouts.append((ids, positions, reads, blocks))
    n = max(len(ids) for ids, *_ in layouts)
    input_ids = torch.full((len(rows), n), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), n), dtype=torch.long)
    position_ids = torch.zeros((len(rows), n), dtype=torch.long)
    pair_mask = torch.zeros((len(rows), 1, n, n), dtype=torch.bool)
    causal = torch.ones((n, n), dtype=torch.bool).tril()
    reward_index = []
    for i, (ids, positions, reads, blocks) in enumerate(layouts):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention_mask[i, :len(ids)] = 1
        position_ids[i, :len(ids)] = torch.tensor(positions)
        for first, end, start in blocks:
            if start is not None:  # a further ending: the shared start, then itself causally
                pair_mask[i, 0, first:end, :start] = True
            pair_mask[i, 0, first:end, first:end] = causal[:end - first, :end - first]
        # Padding attends to the first token only: a row with nothing to attend to gives NaN, and no real
        # token attends to padding.
        pair_mask[i, 0, len(ids):, 0] = True
        reward_index += [i * n + at for at in reads]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "pair_mask": pair_mask, "reward_index": torch.tensor(reward_index)}


def prompt_groups(sequences: list[list[int]]) -> list[list[int]]:
    """The indices of `sequences` in groups that each run as one packed row (`packed_batch`): sequences that share
    a start (a prompt with several responses: a pair, a GRPO group, best-of-n samples) go together while the
    shared start is at least half the shortest of them (`packs`) and the row stays within twice the longest
    (beyond that the row's attention costs more than the tokens it saves). Most other sequences are alone."""
    groups: list[list[int]] = []
    # Sorted by their tokens, sequences with a common start are neighbours.
    order = sorted(range(len(sequences)), key=lambda i: sequences[i])
    for k, i in enumerate(order):
        if groups:
            members = [sequences[j] for j in groups[-1]] + [sequences[i]]
            start = group_start(members)
            # A sequence that shares more with the next one starts a row with it: HH dialogues that open with the
            # same question share that question across pairs, and each pair much more within itself.
            ahead = shared_start(sequences[i], sequences[order[k + 1]]) if k + 1 < len(order) else 0
            fits = 2 * start >= min(map(len, members)) and row_tokens(members) <= 2 * max(map(len, members))
            if fits and start >= ahead:
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


class SharedPromptCollator:
    """Batches for `reward.trainer.PrefloopRewardTrainer`: a packed row per pair that packs, two plain rows per
    pair that does not (`packs`), laid out by `packed_batch`; TRL's own batch when no pair of the batch packs.
    Its `reward_index` is (pairs, 2): where the chosen and the rejected reward are read."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.plain = DataCollatorForPreference(pad_token_id=pad_token_id)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not any(packs(e["chosen_ids"], e["rejected_ids"]) for e in examples):
            # Nothing to share: TRL's own batch, so the model runs its causal kernel, which skips the masked-out
            # half of attention that an explicit mask makes it compute (0.92x on summarize at 256 tokens).
            return self.plain(examples)
        rows = []
        for e in examples:
            chosen, rejected = e["chosen_ids"], e["rejected_ids"]
            rows += [[chosen, rejected]] if packs(chosen, rejected) else [[chosen], [rejected]]
        out = packed_batch(rows, self.pad_token_id)
        out["reward_index"] = out["reward_index"].view(-1, 2)
        if "margin" in examples[0]:
            out["margin"] = torch.tensor([e["margin"] for e in examples], dtype=torch.float)
        return out


def packed_rewards(model, input_ids, pair_mask, position_ids, reward_index, **_) -> torch.Tensor:
    """The rewards of a `packed_batch`, shaped like its `reward_index`. `model` is the sequence-classification
    model, or a wrapper around one (PEFT, data-parallel): it is called through its own forward, so a
    data-parallel wrapper still averages the gradients across ranks. Sequence classification keeps only each
    row's last reward; the rewards at every token are read off its score head as it runs."""
    # DDP and DeepSpeed's engine hold the model as `.module`; unwrapping imports DeepSpeed where it is installed
    # (a second's import and a log line), so a bare model, as in scoring, skips it.
    inner = extract_model_from_parallel(model) if hasattr(model, "module") else model
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    mask = pair_mask
    if MASK_KINDS[inner.config._attn_implementation] == "additive":
        dtype = getattr(inner, inner.base_model_prefix).dtype
        mask = torch.zeros(pair_mask.shape, dtype=dtype, device=pair_mask.device).masked_fill(
            ~pair_mask, torch.finfo(dtype).min)
    every_token: list[torch.Tensor] = []
    hook = inner.score.register_forward_hook(lambda module, args, output: every_token.append(output))
    try:
        model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    finally:
        hook.remove()
    return every_token[0].flatten(0, 1)[reward_index].squeeze(-1)


def pair_rewards(model, reward_index, **batch) -> torch.Tensor:
    """The rewards of a batch from `SharedPromptCollator`, chosen then rejected (2 x pairs), as TRL's loss
    expects them."""
    rewards = packed_rewards(model, reward_index=reward_index, **batch)  # (pairs, 2)
    return torch.cat([rewards[:, 0], rewards[:, 1]])


def with_packed_lengths(dataset: Dataset) -> Dataset:
    """`dataset` with its `length` column (what batches are grouped by) set to the width of each pair's widest
    row (`row_length`)."""
    lengths = [row_length(c, r) for c, r in zip(dataset["chosen_ids"], dataset["rejected_ids"])]
    return dataset.remove_columns("length").add_column("length", lengths)

