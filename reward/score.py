"""Scoring conversations with one reward model or an ensemble.

    scorer = RewardScorer("runs/rm")                      # load once
    scores = scorer.score([conversation, ...])           # a conversation is a list of {role, content}
    scores.mean                                          # one reward per conversation

With several model directories (seeds, LoRA heads) `scores.mean` is the ensemble mean and
`scores.spread` the standard deviation across members, per item: the disagreement that active pair
selection looks for. Each member encodes text as its training did (same chat template, max length and
truncation side, read from its prefloop.json; `max_length=` overrides the length, and a model trained
elsewhere is cut to its own limit); `scores.truncated` says which items were cut. A member may be a PEFT
adapter, merged into the base it names (`check_reward_adapter`, `load_adapter_reward_model`). On a
decoder, conversations that share their start (the two sides of a pair, several responses to one prompt)
run as one sequence, the start once.
"""

from __future__ import annotations

import copy
import json
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from collect.errors import UserError, first_line, warn
from collect.offline_models import adapter_base, adapter_folder, has_tokenizer, resolve_model
from collect.output_dirs import write_whole
from reward.data import (Conversation, Encoder, absolute_name, as_messages, check_preferences, check_token_ids,
                         data_name, load_rows, pair_conversations, position_limit, trained_pairs, warn_empty_responses,
                         warn_unread_template_columns)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


@dataclass
class RewardScores:
    """Rewards for a batch of conversations: `per_model` has one row per ensemble member."""

    per_model: np.ndarray  # shape (n_models, n_items)
    truncated: np.ndarray  # per item: whether any member cut it to its max length

    @property
    def mean(self) -> np.ndarray:
        return self.per_model.mean(axis=0)

    @property
    def spread(self) -> np.ndarray:
        """Standard deviation across members, population form (with two members, half their difference; zeros for
        a single model)."""
        return self.per_model.std(axis=0)

    def __len__(self) -> int:
        return self.per_model.shape[1]


def model_info(model_dir: str | Path) -> dict[str, Any]:
    """The prefloop.json of a reward-model directory, or {} for a model trained elsewhere."""
    path = Path(model_dir) / "prefloop.json"
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: cannot read it ({first_line(e)})") from None
    # Edited or damaged by hand, it gave a traceback where scoring reads it.
    if not isinstance(info, dict):
        raise UserError(f"{path}: expected a JSON object, as `prefloop reward train` writes it; got "
                        f"{json.dumps(info)[:40]}")
    limit, side = info.get("max_length"), info.get("truncation_side", "left")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"{path}: field 'max_length': expected a whole number of tokens, got {limit!r}")
    if side not in ("left", "right"):
        raise UserError(f"{path}: field 'truncation_side': expected 'left' or 'right', got {side!r}")
    return info


def distinct_sequences(sequences: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """(each distinct sequence once, in first-seen order; for each input, the index of its distinct copy). Scoring
    runs each once, so a repeat gets the very same reward: packed into another row it could differ in the last
    bit, and an exact tie, such as two identical responses, would no longer be one."""
    index: dict[tuple[int, ...], int] = {}
    first = [index.setdefault(tuple(s), len(index)) for s in sequences]
    return [list(s) for s in index], first


def check_reward_adapter(adapter: Path, name: str) -> str:
    """The base model of a PEFT adapter given as the reward model `name`, after what its files alone tell (no
    weights loaded, so alignment can check its --judge before hours of training): UserError for the `adapter/`
    that `reward train --lora` saves beside the merged model it belongs with, an adapter that cannot be merged
    (prompt learning), a base that does not load, and an adapter without the score head on a base without a
    one-output one. `load_adapter_reward_model` checks the rest as it loads."""
    from peft import PeftConfig
    from peft.utils import load_peft_weights
    from transformers import AutoConfig

    if _saved_by_reward_train(adapter.parent):
        raise UserError(f"reward model {name}: is the LoRA adapter that `prefloop reward train` saved beside the "
                        f"reward model in {adapter.parent}, which has it merged in: score that folder")
    named = adapter_base(adapter)
    try:
        base = resolve_model(named)
    except UserError as e:
        raise UserError(f"adapter {str(adapter)!r}: its base (base_model_name_or_path in adapter_config.json, "
                        f"{named!r}): {e}") from None
    try:
        peft_config = PeftConfig.from_pretrained(str(adapter))
        base_config = AutoConfig.from_pretrained(base)
        head = _head_names(base_config)
        saved = {key.removeprefix("base_model.model.") for key in load_peft_weights(str(adapter))}
    except (OSError, ValueError) as e:
        raise UserError(f"adapter {str(adapter)!r} on its base {base!r}: cannot read it ({first_line(e)})") from None
    if peft_config.is_prompt_learning:
        raise UserError(f"adapter {str(adapter)!r}: a {peft_config.peft_type.value} adapter adds virtual tokens, which "
                        "cannot be merged into its base; a reward model can be a LoRA, DoRA or IA3 adapter")
    base_has_head = base_config.num_labels == 1 and any(
        kind.endswith("ForSequenceClassification") for kind in base_config.architectures or [])
    if not base_has_head and not set(head) <= saved:
        raise UserError(_no_head(adapter, base))
    return base


def _saved_by_reward_train(folder: Path) -> bool:
    try:
        return model_info(folder).get("kind") == "reward_model"
    except (UserError, AttributeError):  # an unreadable prefloop.json, or not prefloop's: not a reward model's
        return False


def _head_names(config) -> list[str]:
    """The score head's weights (those outside the backbone) of a one-output classifier on this architecture, from
    a model built on the meta device: no memory, no weights read."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    config.num_labels = 1
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return [name for name, _ in model.named_parameters() if not name.startswith(model.base_model_prefix + ".")]


def _no_head(adapter: Path, base: str) -> str:
    return (f"adapter {str(adapter)!r}: brings no score head, and its base {base!r} has none that fits, so the head "
            "would be drawn at random; a LoRA reward adapter is trained with task_type SEQ_CLS or its head in "
            "modules_to_save")


def load_adapter_reward_model(adapter: Path, base: str, dtype: torch.dtype) -> PreTrainedModel:
    """A PEFT reward adapter merged into `base` (what `check_reward_adapter` returned), loaded for sequence
    classification with one output. The score head must come from the adapter (PEFT saves it when the adapter is
    trained with task_type SEQ_CLS or the head in modules_to_save) unless the base's checkpoint has a one-output
    head, and the adapter must cover every weight it adapts on the base; else UserError."""
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict, load_peft_weights
    from transformers import AutoConfig

    from reward.models import load_classifier_and_drawn_head

    name = str(adapter)
    try:
        config = AutoConfig.from_pretrained(base, num_labels=1)
        model, drawn = load_classifier_and_drawn_head(base, None, trained_head=True, config=config, dtype=dtype,
                                                      ignore_mismatched_sizes=True)
    except (OSError, ValueError) as e:
        raise UserError(f"adapter {name!r} on its base {base!r}: cannot load the base ({first_line(e)})") from None
    saved = load_peft_weights(name)
    in_full = {key.removeprefix("base_model.model."): value for key, value in saved.items()}
    if any(key not in in_full for key in drawn):
        raise UserError(_no_head(adapter, base))
    parameters = dict(model.named_parameters())
    for key, value in in_full.items():
        if key in parameters and value.shape != parameters[key].shape:
            raise UserError(f"adapter {name!r}: its {key} has shape {list(value.shape)}, where a one-output reward "
                            f"model on {base!r} takes {list(parameters[key].shape)}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found missing adapter keys")  # said below, in one line
        try:
            model = PeftModel.from_pretrained(model, name)
        except (RuntimeError, ValueError) as e:
            mismatch = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), first_line(e))
            raise UserError(f"adapter {name!r}: does not fit its base {base!r}, so it was trained on another model "
                            f"({mismatch})") from None
    missing = sorted(set(get_peft_model_state_dict(model)) - set(saved))
    if missing:
        raise UserError(f"adapter {name!r}: {len(missing)} of the weights it adapts on its base {base!r} are not in it "
                        f"(first: {missing[0]}), so it was trained on another model, or on fewer of its layers")
    return model.merge_and_unload()


class _Member:
    def __init__(self, model_dir: str, device: str, dtype, max_length: int | None, share_prompt: bool):
        import torch

        from reward.shared_prompt import shares_prompt
        from reward.models import load_sequence_classifier, load_tokenizer

        path = resolve_model(model_dir)  # a local folder, a cached snapshot, or a Hub id Transformers downloads
        adapter = adapter_folder(path)
        if adapter is not None:
            base = check_reward_adapter(adapter, model_dir)
            path = str(adapter)
        self.path = Path(path)
        info = model_info(path)
        self.info = info
        # An adapter's tokenizer is its base's unless it was saved with the adapter.
        self.tokenizer = load_tokenizer(path if adapter is None or has_tokenizer(adapter) else base)
        try:
            if adapter is not None:
                self.model = load_adapter_reward_model(adapter, base, dtype)
            else:
                self.model = load_sequence_classifier(path, dtype=dtype, trained_head=True)
        except UserError:
            raise
        except Exception as e:  # a damaged file raises whatever its reader raises (safetensors: SafetensorError)
            raise UserError(f"reward model {model_dir}: cannot load it ({type(e).__name__}: {first_line(e)})") from None
        if self.model.config.num_labels != 1:
            raise UserError(f"reward model {model_dir}: has {self.model.config.num_labels} labels, a reward model has 1")
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval()
        limit = info.get("max_length") if max_length is None else max_length
        self.max_length_from = ("max_length given" if max_length is not None else
                                "prefloop.json" if limit is not None else
                                "trained with no limit" if "max_length" in info else "the model's own limit")
        if limit is None:
            positions = getattr(self.model.config, "max_position_embeddings", None) or 512
            limit = min(self.tokenizer.model_max_length, positions)
        # A model saved by an earlier prefloop with a max_length beyond its positions (training now refuses that),
        # or a longer max_length given, scores with the longest input it takes.
        longest = position_limit(self.model)
        if longest is not None and limit > longest:
            if max_length is not None:  # training refuses such a max_length; scoring cuts each member to its own
                warn(f"max_length (--max-length) {max_length}: reward model {model_dir} takes at most {longest} "
                     f"positions; its conversations are cut to {longest} tokens")
            limit, self.max_length_from = longest, "its position limit"
        self.encoder = Encoder(self.tokenizer, limit, info.get("truncation_side", "left"))
        self.device = device
        self.name = model_dir
        self.torch = torch
        self.shares_prompt = share_prompt and shares_prompt(self.model)

    def score_ids(self, sequences: list[list[int]], batch_size: int) -> np.ndarray:
        """Rewards of token sequences. On a decoder, sequences that share a start (a prompt and its responses)
        run as one packed row, the start once (`prompt_groups`), as pairs train (reward.shared_prompt); the rest,
        and every sequence on other models, run plain."""
        from reward.shared_prompt import packed_batch, packed_rewards, prompt_groups

        torch = self.torch
        sequences, first = distinct_sequences(sequences)
        check_token_ids(sequences, self.model, f"reward model {self.name}")
        out = np.empty(len(sequences), dtype=np.float64)
        groups = prompt_groups(sequences) if self.shares_prompt else [[i] for i in range(len(sequences))]
        # Alone, in plain batches of their own: the model's causal kernel, no explicit mask to compute under.
        # Longest first, batched by length: little padding, and an out-of-memory shows up at once.
        alone = sorted((g[0] for g in groups if len(g) == 1), key=lambda i: -len(sequences[i]))
        packed = sorted((g for g in groups if len(g) > 1), key=lambda g: -sum(len(sequences[i]) for i in g))
        pad = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(alone), batch_size):
                idx = alone[start:start + batch_size]
                width = max(len(sequences[i]) for i in idx)
                # Right padding, as TRL's DataCollatorForPreference pads during training.
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
                    mask[row, : len(sequences[i])] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                out[idx] = logits[:, 0].float().cpu().numpy()
            per_batch = max(1, batch_size // 2)  # a packed row holds at most two sequences' width of tokens
            for start in range(0, len(packed), per_batch):
                rows = packed[start:start + per_batch]
                batch = packed_batch([[sequences[i] for i in g] for g in rows], pad)
                rewards = packed_rewards(self.model, **{k: v.to(self.device) for k, v in batch.items()})
                out[[i for g in rows for i in g]] = rewards.float().cpu().numpy()
        broken = int((~np.isfinite(out)).sum())
        if broken:  # a NaN compares false both ways: it would pass for a wrong pick, a null reward, a NaN ECE
            raise UserError(f"reward model {self.name}: {broken} of {len(out)} sequences scored NaN or infinite "
                            "(its weights hold NaN, or the run that trained it diverged)")
        return out[first]


class RewardScorer:
    """Load one reward model (or several, as an ensemble) once; score batches of conversations."""

    def __init__(
        self,
        models: str | Path | Sequence[str | Path],
        *,
        device: str | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        share_prompt: bool = True,
    ):
        """`batch_size` sequences a batch (packed rows, several sequences sharing their prompt, go half as many
        a batch); `max_length` overrides the one each model trained with; `share_prompt=False` scores every
        conversation alone even on a decoder (the same rewards, to float rounding, from more tokens)."""
        import torch

        paths = [models] if isinstance(models, (str, Path)) else list(models)
        if not paths:
            raise UserError("RewardScorer needs at least one model directory")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise UserError(f"batch_size must be a whole number, at least 1; got {batch_size!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral)):
            raise UserError(f"max_length must be a whole number of tokens; got {max_length!r}")
        named = [absolute_name(p) for p in paths]
        twice = next((p for i, p in enumerate(paths) if named[i] in named[:i]), None)
        if twice is not None:  # a copy scores alike: the ensemble would show no disagreement
            raise UserError(f"reward model {twice}: named twice; an ensemble's members are different models")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            parsed = torch.device(self.device)
        except RuntimeError:
            raise UserError(f"device {device!r}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
        kind = parsed.type
        if kind == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: torch finds {torch.cuda.device_count()} CUDA GPU(s) here")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise UserError(f"device {device!r}: torch finds no Apple GPU (MPS) here")
        # bf16 halves memory and time on a GPU; on CPU fp32 is both faster and exact.
        dtype = torch.bfloat16 if self.device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
        self.batch_size = batch_size
        self.model_dirs = [str(p) for p in paths]
        self.members = [_Member(str(p), self.device, dtype, max_length, share_prompt) for p in paths]
        kinds = sorted({f"{m.model.config.model_type} ({len(m.tokenizer)} tokens)" for m in self.members})
        if len(kinds) > 1:
            warn(f"the ensemble mixes kinds of model ({', '.join(kinds)}): their rewards are on scales of "
                 "their own, so the spread measures the gap between scales as much as disagreement")

    def training_pairs(self) -> set[str]:
        """The digests (`reward.data.pair_digests`) of the pairs any member trained on, from each one's
        training_pairs.txt (empty for a model trained elsewhere or by an earlier prefloop)."""
        return set().union(*(trained_pairs(member.path) for member in self.members))

    def score(self, conversations: Sequence[Conversation], *, places: Sequence[str] | None = None) -> RewardScores:
        """Rewards for whole conversations (prompt turns followed by the response being judged). UserError,
        naming the conversation and field, for one that is not a non-empty list of {role, content} messages with
        string content (a lone string is read as one user message), or that the model's chat template refuses;
        a warning counts conversations with no assistant turn. `places` name each conversation in those messages
        (`reward.data.load_rows`'s "prefs.jsonl:12"; default "conversation 0", "conversation 1", ...)."""
        if isinstance(conversations, (str, dict)):
            raise UserError(f"conversations: expected a list of conversations, got a {type(conversations).__name__} "
                            "(to score one conversation, pass [conversation])")
        conversations = list(conversations)
        places = _places(places, [f"conversation {i}" for i in range(len(conversations))])
        conversations = [as_messages(c, where, "messages", "user") for where, c in zip(places, conversations)]
        alone = [where for where, c in zip(places, conversations) if not any(m["role"] == "assistant" for m in c)]
        if alone:
            warn(f"{len(alone)} of {len(conversations)} conversation(s) have no assistant turn (first: "
                 f"{alone[0]}): their reward is for the prompt alone")
        rows, truncated = [], np.zeros(len(conversations), dtype=bool)
        for member in self.members:
            ids, cut = _encode(member, conversations, places)
            rows.append(member.score_ids(ids, self.batch_size))
            truncated |= cut
        return RewardScores(np.vstack(rows) if rows else np.empty((0, 0)), truncated)

    def score_pairs(self, dataset: Any, *, places: Sequence[str] | None = None) -> tuple[RewardScores, RewardScores]:
        """(chosen, rejected) rewards for every row of a preference dataset: a Dataset, a list of dicts, a pandas
        DataFrame or a file (`reward.data.load_rows`; `reward.data.load_preferences` checks one, naming a bad row's
        file and line). `places` name each row in errors, as in `score`."""
        dataset, named = load_rows(dataset, "data", split=None)
        places = _places(places, named)
        pairs = [pair_conversations(row, where) for where, row in zip(places, dataset)]
        trained_elsewhere = [member.name for member in self.members if not member.info]
        if trained_elsewhere and len(dataset) and isinstance(dataset[0]["chosen"], str):
            warn(f"{', '.join(trained_elsewhere)}: no prefloop.json (trained elsewhere): plain-text pairs are "
                 "read as a user turn and an assistant turn through the chat template (or a 'User:' / "
                 "'Assistant:' layout), as prefloop trains on them; a model TRL trained on plain text read "
                 "prompt + response + EOS, so its rewards here are for other text than it saw")
        chosen_rows, rejected_rows, truncated = [], [], np.zeros(2 * len(pairs), dtype=bool)
        sides = [list(c) for c, _ in pairs] + [list(r) for _, r in pairs]
        side_places = [f"{where} (chosen)" for where in places] + [f"{where} (rejected)" for where in places]
        for member in self.members:
            ids, cut = _encode(member, sides, side_places)
            rewards = member.score_ids(ids, self.batch_size)
            chosen_rows.append(rewards[:len(pairs)])
            rejected_rows.append(rewards[len(pairs):])
            truncated |= cut
        return (RewardScores(np.vstack(chosen_rows), truncated[:len(pairs)]),
                RewardScores(np.vstack(rejected_rows), truncated[len(pairs):]))

    def length_limits(self) -> list[dict[str, Any]]:
        """Each member's max length and truncation side, and where the length came from: the model's prefloop.json,
        `max_length` given here, the model's own limit (where nothing records the length it trained with, or where
        it trained with none: "trained with no limit"), or its position limit (where the length asked for is
        longer)."""
        return [{"max_length": m.encoder.max_length, "truncation_side": m.encoder.truncation_side,
                 "from": m.max_length_from} for m in self.members]


def _places(places: Sequence[str] | None, default: list[str]) -> list[str]:
    """How errors name each conversation or row: `places` as given, one each, else `default`."""
    if places is None:
        return default
    if len(places) != len(default):  # zipped with the rows, a short list would drop rows from the scores unsaid
        raise UserError(f"places: {len(places)} given for {len(default)} rows; give one each")
    return list(places)


def _encode(member: _Member, conversations: list[Conversation],
            places: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """Each conversation's token ids as `member` reads them, and whether it was cut; a conversation the chat template
    refuses is named by its place."""
    ids, cut = [], np.zeros(len(conversations), dtype=bool)
    for i, (where, conversation) in enumerate(zip(places, conversations)):
        try:
            encoded, cut[i] = member.encoder.encode(conversation)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        ids.append(encoded)
    return ids, cut


def conversations_from_rows(dataset, places: list[str]) -> list[Conversation]:
    """Conversations to score from a dataset of single responses: a `messages` column, or `prompt` +
    `completion` (TRL's prompt-completion format); `places` name each row in errors (`reward.data.load_rows`)."""
    columns = set(dataset.column_names)
    conversations: list[Conversation] = []
    for here, row in zip(places, dataset):
        if "messages" in columns:
            conversations.append(as_messages(row["messages"], here, "messages", "user"))
        else:
            prompt = as_messages(row.get("prompt") or [], here, "prompt", "user")
            conversations.append(prompt + as_messages(row["completion"], here, "completion", "assistant"))
    return conversations


def score_file(models: str | Path | Sequence[str | Path], data: Any, out: str | Path, batch_size: int = 16,
               max_length: int | None = None) -> Path:
    """Score every conversation of a dataset file and write it back with reward columns to `out` (JSONL or
    Parquet), which it returns.

    A preference dataset gets `reward_chosen` and `reward_rejected`; others get `reward`; each with `..._truncated`
    (whether the conversation was cut to a member's max length, with a warning that counts them). Ensembles
    also get the spread (`..._spread`, the population standard deviation) and each member's reward in the order
    of `models` (`..._members`). `max_length` overrides the length each model trained with (RewardScorer)."""
    shown = data_name(data)  # as errors name it, not a list's contents
    out = Path(out)
    if out.suffix not in (".jsonl", ".parquet"):
        raise UserError(f"{out}: the scored file is written as .jsonl or .parquet; name it so")
    if out.is_dir():
        raise UserError(f"{out}: is a directory; name the scored file (.jsonl or .parquet)")
    rows, places = load_rows(data, "data", split=None)
    if len(rows) == 0:
        raise UserError(f"{shown}: the dataset is empty")
    columns = set(rows.column_names)
    # Pairs first: HuggingFaceH4/ultrafeedback_binarized keeps a `messages` column (the chosen side) beside them.
    single = ("messages" in columns or "completion" in columns) and not {"chosen", "rejected"} <= columns
    if not single and not {"chosen", "rejected"} <= columns:
        raise UserError(
            f"{shown}: nothing to score: expected a 'messages' column, 'prompt' + 'completion', or "
            f"'chosen' + 'rejected' (with a 'prompt', or whole conversations); it has {', '.join(sorted(columns))}"
        )
    # Bad rows fail before the models load.
    if single:
        warn_unread_template_columns(rows, shown)
        conversations = conversations_from_rows(rows, places)
    else:
        check_preferences(rows, places, shown, use_margin=False, scoring=True)  # scoring reads no margin
    scorer = RewardScorer(models, batch_size=batch_size, max_length=max_length)
    if single:
        warn_empty_responses(shown, [place for place, c in zip(places, conversations)
                                         if c[-1]["role"] == "assistant" and not c[-1]["content"].strip()])
        scores = {"reward": scorer.score(conversations, places=places)}
    else:
        chosen, rejected = scorer.score_pairs(rows, places=places)
        scores = {"reward_chosen": chosen, "reward_rejected": rejected}
    values: dict[str, list] = {}
    for name, score in scores.items():
        values[name] = [float(v) for v in score.mean]
        values[f"{name}_truncated"] = score.truncated.tolist()
        if len(scorer.members) > 1:
            values[f"{name}_spread"] = [float(v) for v in score.spread]
            # Each member's own reward, in --model order: members are averaged as they are, not rescaled, so this
            # shows whether a spread is disagreement or two models on different scales.
            values[f"{name}_members"] = score.per_model.T.tolist()
    cut = int(np.logical_or.reduce([score.truncated for score in scores.values()]).sum())
    if cut:
        limits = "; ".join(sorted({f"{limit['max_length']} tokens from the {limit['truncation_side']}"
                                   for limit in scorer.length_limits()}))
        warn(f"{shown}: {cut} of {len(rows)} row(s) had a conversation cut to {limits}; the "
             "*_truncated columns say which")
    # Each column an earlier scoring of the same kind wrote goes, not only those written now: an ensemble's spread
    # beside one model's new reward would read as that model's. Other columns are the data's own.
    earlier = [f"{name}{suffix}" for name in scores for suffix in ("", "_truncated", "_spread", "_members")]
    scored = rows.remove_columns([c for c in earlier if c in rows.column_names])
    for name, column in values.items():
        scored = scored.add_column(name, column)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A failure part way leaves any earlier file whole.
    if out.suffix == ".parquet":
        write_whole(out, scored.to_parquet)
    else:
        # 15 decimal places (pandas' most; its default of 10 would round small rewards): more than the 7
        # significant digits a float32 reward carries, down to rewards of 1e-8.
        write_whole(out, lambda name: scored.to_json(name, lines=True, force_ascii=False, double_precision=15))
    return out
