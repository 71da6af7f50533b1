"""Candidate generation: new responses to a project's prompts, paired up for the raters.

    generate(session, project, ["base=smollm2-135m-instruct", "aligned=runs/demo/policy"])

Policies. Each entry of `policies` (`--policy` on the command line) is `[LABEL=]MODEL`: a short alias
(`smollm2-135m-instruct`), a Hugging Face id or local directory, or a PEFT adapter directory (its base model is
read from the adapter's `prefloop.json` or `adapter_config.json`). LABEL, by default the text as given, is what
raters' judgments and leaderboards call the model (`Response.model`). With an `OpenAIEndpoint`, MODEL is the
name the server knows and every request goes to that server instead.

Pairing. Two or more policies: for each prompt and sample index, every two of them make a pair (A is the
one listed first). One policy: `num_generations` responses per prompt (at least 2), every two of them a pair.
Identical responses (after trimming whitespace) make no pair, nor do empty ones.

What is recorded. Every response carries its generation parameters in `Response.generation`: backend,
model, adapter, sampling parameters, seed, sample index, finish reason, token counts, device, round.

Resuming. A run is a "round" (named by `round_name`, by default a hash of the models, what they hold and the
sampling parameters). Prompts are processed `batch_size` at a time; each batch's responses, pairs and a
`generate.batch` audit event naming its prompts are committed together, so a crash or Ctrl-C loses at
most the batch in flight, and running the same command again skips the prompts already done.
What a local model holds is part of the round (`model_contents`): a folder that now holds another model (an
adapter aligned again into the same --out) starts a new round instead of passing for done, and the result says
since which round it changed (`changed_since`). A round named by the caller keeps its name; its prompts done by
the earlier contents are generated again.
A prompt the HTTP server rejected for any model (400/413/422) is not marked done, so a rerun retries it;
a run whose first batch has every request rejected stops there (a systematic problem, such as a parameter
the server refuses, would otherwise finish "successfully" with no pairs); later batches go on regardless.
No database transaction stays open while a model generates: on SQLite that would lock out the rater app.
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from collect.auth import audit
from collect.cli_options import DB_OPTION, PROJECT_OPTION
from collect.errors import UserError, check_settings
from collect.formats import Record, content_hash, read_records, records_from_dataset
from collect.models import AuditEvent, Pair, Project, Prompt, Response, utcnow
from collect.offline_models import adapter_base, adapter_base_path
from collect.openai_backend import ChatClient, OpenAIEndpoint, RequestRejected

Conversation = list[dict[str, str]]


@dataclass
class GenerationSettings:
    """How responses are sampled. The same settings apply to every policy of a run."""

    max_completion_length: int = 256
    """Longest response, in tokens (Transformers' `max_new_tokens`; `max_tokens` for an HTTP endpoint)."""
    temperature: float = 0.7
    """Sampling temperature; 0 means greedy decoding (then `num_generations` > 1 gives identical responses)."""
    top_p: float = 0.95
    """Nucleus sampling: keep the smallest set of tokens whose probability adds up to this."""
    num_generations: int = 1
    """Responses drawn per policy and prompt. With a single policy it must be at least 2, to make pairs."""
    seed: int = 0
    """Base seed; each response's seed is derived from it, the prompt, the model label and the sample index."""
    batch_size: int = 8
    """Prompts per batch: one batched `generate` call per model locally, and the unit committed to the database."""
    max_prompt_length: int = 1024
    """Local models: prompts longer than this many tokens (chat template included) lose their oldest turns; a
    prompt whose last user turn alone is longer is skipped."""
    system_prompt: str | None = None
    """Prepended as a system message to prompts that have none."""
    chat_template: str | None = None
    """Local models: a Jinja chat template (the text, or a .jinja file) replacing the tokenizer's, for a model
    that has none or the wrong one. An HTTP server applies its own template, so it cannot be given there."""


@dataclass
class ModelSpec:
    label: str
    """Stored as `Response.model`: how raters' results and leaderboards name this model."""
    model: str
    """Alias, Hugging Face id, local directory, or (HTTP) the name the server knows."""
    adapter: str | None = None
    """A PEFT adapter directory applied on top of `model`."""


@dataclass
class Completion:
    """One response from a backend, or the reason there is none (`error`)."""

    text: str = ""
    generation: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    """`too_long` (the prompt does not fit the model) or the server's rejection message."""


@dataclass
class GenerateResult:
    round: str
    prompts: int
    """Prompts selected for this run (after `max_prompts`), including those done by an earlier run."""
    already_done: int
    """Prompts an earlier run of the same round had finished: skipped."""
    responses: int
    """Responses generated and stored by this run."""
    pairs: int
    """New pairs in the project."""
    identical: int
    """Pairs not made because both responses were the same text."""
    already_paired: int
    """Pairs not made because the project holds them already: the same two responses, from an earlier round (a
    re-aligned policy that answers as before) or an earlier sample of this one."""
    empty: int
    """Empty responses (not stored)."""
    too_long: int
    """Responses not generated because the prompt did not fit the model's `max_prompt_length`."""
    rejected: int
    """Requests the HTTP server refused (e.g. over its context length)."""
    not_answerable: int
    """Selected prompts whose last message is not a user turn: nothing to answer."""
    seconds: float
    retries: int = 0
    """HTTP retries after rate limits, server errors and timeouts."""
    changed_since: str | None = None
    """The round whose models, as named, held other contents (a folder saved again since): this run did not
    resume it. For a round named by the caller, that round itself, whose prompts were generated again."""
    changed_models: list[str] = field(default_factory=list)
    """Labels of the models whose contents differ from `changed_since`'s."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------- models


def parse_model(text: str) -> ModelSpec:
    """`[LABEL=]MODEL` as a ModelSpec; a PEFT adapter directory as MODEL brings its base model along."""
    label, sep, model = text.partition("=")
    # An "=" inside a path (`runs/lr=1e-4/adapter`) is not a label separator.
    if not sep or not label or "/" in label or not model:
        label, model = text, text
    label, model = label.strip(), model.strip()
    if not model:
        raise UserError("--policy: empty model name")
    adapter = None
    if (Path(model) / "adapter_config.json").is_file():
        adapter, model = model, adapter_base(Path(model))
    return ModelSpec(label=label, model=model, adapter=adapter)


def response_seed(base: int, conversation: Conversation, label: str, sample: int) -> int:
    """A seed per response that does not depend on batching or on which prompts a rerun skips."""
    key = json.dumps([base, conversation, label, sample], sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF


# The names the settings had when rounds were first keyed: a round begun before they were renamed resumes.
KEYED_AS = {"max_completion_length": "max_new_tokens", "num_generations": "samples",
            "max_prompt_length": "max_prompt_tokens"}


def run_key(specs: list[ModelSpec], settings: GenerationSettings, endpoint: OpenAIEndpoint | None) -> str:
    """The models as named, the sampling parameters and the endpoint: the same command gives the same key."""
    sampling = {KEYED_AS.get(k, k): v for k, v in asdict(settings).items()
                if k != "batch_size"}  # batching changes no result
    key = json.dumps([[asdict(s) for s in specs], sampling, endpoint.base_url if endpoint else None], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def default_round(key: str, contents: dict[str, Any] | None) -> str:
    """The same command on the same model contents gives the same round: rerunning resumes it. A path names a
    place, not a model: aligned again into the same folder, it holds another model, so another round."""
    if contents is None:  # an HTTP endpoint: what the server holds cannot be read from here
        return "gen-" + key
    text = json.dumps([key, contents], sort_keys=True)
    return "gen-" + hashlib.sha256(text.encode()).hexdigest()[:10]


HASHED_WHOLE = 64 * 2**20
"""Model files up to this size (configs, tokenizers, a LoRA adapter's weights) are hashed whole; a larger one (a
base model's weights) counts by size and modification time: reading gigabytes would cost more than a round's
check is worth, and saving new weights writes the file anew."""

MODEL_FILES = ("config.json", "generation_config.json", "adapter_config.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt",
               "merges.txt", "prefloop.json", "*.index.json", "*.model", "*.jinja", "*.tiktoken", "*.py",
               "*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
"""What Transformers and PEFT read of a model or adapter folder: configs, tokenizers, weights, remote code; not
what is written beside them later (`prefloop align eval`'s evaluation.json, or a report named by its --out)."""


def folder_digest(folder: Path) -> str:
    """A short hash of what a model or adapter folder holds (its top level: subfolders such as an adapter's
    `merged/` are not loaded with it)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not any(fnmatch.fnmatch(path.name, pattern) for pattern in MODEL_FILES):
            continue
        stat = path.stat()
        if path.name == "prefloop.json":
            what = hashlib.sha256(_manifest_bytes(path)).hexdigest()
        elif stat.st_size <= HASHED_WHOLE:
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = f"{stat.st_size} bytes, modified {stat.st_mtime_ns}"
        digest.update(f"{path.name}\0{what}\0".encode())
    return digest.hexdigest()[:12]


def _manifest_bytes(path: Path) -> bytes:
    """prefloop.json without its `evaluation`, which `prefloop align eval` adds later to the same model."""
    text = path.read_bytes()
    try:
        manifest = json.loads(text)
    except ValueError:
        return text
    if isinstance(manifest, dict):
        manifest.pop("evaluation", None)
    return json.dumps(manifest, sort_keys=True, default=str).encode()


def model_contents(spec: ModelSpec) -> dict[str, str | None]:
    """What a local model holds: a digest of the model's folder (an alias resolves to one) or a Hub id's commit,
    and a digest of the adapter's folder. None where it cannot be told, or there is no adapter."""
    from collect.offline_models import resolve_model

    path = Path(resolve_model(spec.model))
    if not path.is_dir():  # a Hub id, the Hub reachable: Transformers loads its current commit
        model = _hub_commit(spec.model)
    elif str(path) != spec.model and path.parent.name == "snapshots":
        # A Hub id offline, as its cached snapshot: named by its commit, as online, so a run started with a network
        # resumes without one.
        model = "hub:" + path.name
    else:
        model = folder_digest(path)
    return {"model": model, "adapter": folder_digest(Path(spec.adapter)) if spec.adapter else None}


def _hub_commit(repo_id: str) -> str | None:
    from huggingface_hub import HfApi

    try:
        return "hub:" + str(HfApi().model_info(repo_id, timeout=10).sha)
    except Exception:  # gated, private, renamed, or the network gone: loading the model says what is wrong
        return None


def _changed_labels(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """Models of both runs whose model or adapter digest differs. Where a run could not tell (an HTTP endpoint,
    a Hub commit not given, a batch written before digests were recorded), no change is assumed."""
    if not old or not new:
        return []
    changed = []
    for label in new:  # in the order the models were given
        pairs = [((old.get(label) or {}).get(part), new[label].get(part)) for part in ("model", "adapter")]
        if any(a is not None and b is not None and a != b for a, b in pairs):
            changed.append(label)
    return changed


def _with_system(conversation: Conversation, system_prompt: str | None) -> Conversation:
    if system_prompt and conversation[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *conversation]
    return conversation


class LocalBackend:
    """A Transformers causal LM (optionally with a PEFT adapter), generating a batch at a time."""

    def __init__(self, spec: ModelSpec, settings: GenerationSettings) -> None:
        import torch
        import transformers

        from collect.offline_models import resolve_model
        from finetune.policy import load_policy

        self.settings = settings
        # spec.model is the base as named when the adapter trained (what rounds are keyed on); loaded from where
        # it was recorded to be.
        base = adapter_base_path(Path(spec.adapter)) if spec.adapter else spec.model
        self.model, self.tokenizer = load_policy(base, spec.adapter, chat_template=settings.chat_template)
        if spec.adapter:
            # Folded into the weights, LoRA costs nothing per token; unmerged it more than doubles CPU time.
            self.model = self.model.merge_and_unload()
        parameter = next(self.model.parameters())
        self.device = parameter.device
        self.info = {
            "backend": "transformers",
            "model": spec.model,
            "path": resolve_model(base),
            "adapter": spec.adapter,
            "device": str(self.device),
            "dtype": str(parameter.dtype).removeprefix("torch."),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }

    def complete(self, conversations: list[Conversation], seeds: list[int]) -> list[Completion]:
        from finetune.prompts import fit_prompt, prompt_length
        from finetune.sampling import sample

        s = self.settings
        fitted = [fit_prompt(self.tokenizer, c, s.max_prompt_length) for c in conversations]
        rows = [i for i, f in enumerate(fitted) if f is not None]
        out = [Completion(error="too_long") for _ in conversations]
        if not rows:
            return out
        # Batched sampling draws from one random stream, so the seed is the batch's; reproducing a response
        # needs the batch's prompts too, recorded as `batch_prompt_ids`.
        batch_seed = sum(seeds[i] for i in rows) & 0x7FFFFFFF
        started = time.perf_counter()
        samples = sample(self.model, self.tokenizer, [fitted[i] for i in rows], n=1,
                         max_new_tokens=s.max_completion_length, temperature=s.temperature, top_p=s.top_p,
                         seed=batch_seed, batch_size=len(rows))
        # Recorded under the names the backend takes (Transformers' generate here, `max_tokens` over HTTP).
        shared = {**self.info, "max_new_tokens": s.max_completion_length, "do_sample": s.temperature > 0,
                  "temperature": s.temperature, "top_p": s.top_p if s.temperature > 0 else None,
                  "seed": batch_seed, "batch_size": len(rows),
                  "batch_seconds": round(time.perf_counter() - started, 3)}
        for row, i in enumerate(rows):
            ids = samples.token_ids[row][0]
            stopped = samples.finished[row][0]
            out[i] = Completion(text=samples.texts[row][0], generation={
                **shared, "finish_reason": "stop" if stopped else "length",
                "prompt_tokens": prompt_length(self.tokenizer, fitted[i]),
                "completion_tokens": len(ids) - stopped,
                "prompt_turns_dropped": len(conversations[i]) - len(fitted[i]),
            })
        return out

    def close(self) -> None:
        del self.model


class HTTPBackend:
    """One model on an OpenAI-compatible endpoint; `complete_one` is called from a thread pool."""

    def __init__(self, spec: ModelSpec, settings: GenerationSettings, client: ChatClient) -> None:
        if spec.adapter:
            raise UserError(f"--policy {spec.label}: an adapter directory cannot be sent to an HTTP endpoint; "
                            "serve it there (vLLM --lora-modules) and give its served name")
        self.spec, self.settings, self.client = spec, settings, client

    def params(self, seed: int) -> dict[str, Any]:
        s = self.settings
        return {"max_tokens": s.max_completion_length, "temperature": s.temperature, "top_p": s.top_p, "seed": seed}

    def complete_one(self, conversation: Conversation, seed: int) -> Completion:
        params = self.params(seed)
        started = time.perf_counter()
        try:
            data = self.client.chat(self.spec.model, conversation, params)
        except RequestRejected as e:
            return Completion(error=str(e))
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Completion(
            text=(choice["message"].get("content") or "").strip(),
            generation={
                "backend": "openai", "base_url": self.client.endpoint.base_url, "model": self.spec.model,
                "served_model": data.get("model"), "response_id": data.get("id"),
                "system_fingerprint": data.get("system_fingerprint"), **params,
                "finish_reason": choice.get("finish_reason"), "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )


# -------------------------------------------------------------------------------------------- prompts


def _prompt_rows(source: Any) -> list[dict[str, Any]]:
    """A list of prompts (strings, message lists, or rows with a `prompt`) as generic-schema rows."""
    rows = []
    for item in source:
        rows.append(dict(item) if isinstance(item, dict) else {"prompt": item})
    return rows


def select_prompts(
    session: Session, project: Project, source: str | Path | Sequence[Any] | None = None,
    max_prompts: int | None = None,
) -> list[tuple[int, Conversation]]:
    """(prompt id, conversation) to answer, in order: the project's prompts, or those of `source`.

    `source` is a file (any format `prefloop import` reads; only its prompts are used), a `datasets`
    dataset, or a list of prompts; its prompts are added to the project (existing ones are reused). `max_prompts`:
    the first N of them.
    """
    if max_prompts is not None and max_prompts < 1:
        raise UserError(f"max_prompts (--max-prompts) must be at least 1, got {max_prompts}")
    if source is None:
        query = select(Prompt.id, Prompt.conversation).where(Prompt.project_id == project.id).order_by(Prompt.id)
        if max_prompts:
            query = query.limit(max_prompts)
        return [(i, c) for i, c in session.execute(query)]
    from collect.ingest import import_records

    if isinstance(source, (str, Path)):
        records = read_records(source)
    else:
        records = records_from_dataset(_prompt_rows(source), "generic", "prompts")
    records = records[:max_prompts] if max_prompts else records
    # Only the prompts: a file that also holds pairs or judgments must not import them as a side effect.
    prompts_only = [Record(where=r.where, prompt=r.prompt, prompt_id=r.prompt_id, tags=r.tags, source=r.source)
                    for r in records]
    import_records(session, project, prompts_only)
    ids = dict(session.execute(select(Prompt.content_hash, Prompt.id).where(
        Prompt.project_id == project.id, Prompt.content_hash.in_({content_hash(r.prompt) for r in records}))).all())
    chosen: dict[int, Conversation] = {}
    for record in records:
        chosen.setdefault(ids[content_hash(record.prompt)], record.prompt)
    return list(chosen.items())


def _batches(session: Session, project_id: int) -> list[dict[str, Any]]:
    return list(session.scalars(select(AuditEvent.details).where(
        AuditEvent.project_id == project_id, AuditEvent.action == "generate.batch").order_by(AuditEvent.id)))


def resumed_round(batches: list[dict[str, Any]], key: str, contents: dict[str, Any] | None) -> str | None:
    """The latest round of a name it derived (a round the caller named is resumed by naming it) that the same
    command ran on these contents, to resume: found by the command's key rather than by a name hashed from the
    contents, so that a digest that could not be told this time (a Hub commit the network did not give) matches
    any, and a round named before contents were recorded ("gen-" + key) is resumed too."""
    rounds = [details["round"] for details in batches
              if (details.get("run_key") == key or details.get("round") == "gen-" + key)
              and str(details.get("round")).startswith("gen-")
              and not _changed_labels(details.get("contents"), contents)]
    return rounds[-1] if rounds else None


def _done_prompts(
    batches: list[dict[str, Any]], round_name: str, key: str, contents: dict[str, Any] | None, result: GenerateResult,
) -> set[int]:
    """Prompts this round finished with these model contents. Sets `result.changed_*` where the round (named by the
    caller) did prompts on other contents that it now does again, or, for a new round, an earlier one of the same
    command ran on other contents."""
    done: set[int] = set()
    stale: dict[int, list[str]] = {}  # prompts this round did on other contents: the models that changed
    earlier: tuple[str, list[str]] | None = None  # the latest round of this command on other contents
    for details in batches:
        if details.get("round") == round_name and details.get("run_key") not in (None, key):
            # Its prompts would count as done, and these models or settings would generate nothing.
            raise UserError(f"round {round_name!r} was generated with other models or settings (models "
                            f"{', '.join(details.get('models') or [])}); name a new round (--round), or give that "
                            "round's command again to resume it")
        # Batches written before contents were recorded have none: they count as done, as they did then.
        changed = _changed_labels(details.get("contents"), contents)
        if details.get("round") == round_name:
            if changed:
                stale.update({i: changed for i in details.get("prompt_ids", [])})
            else:
                done.update(details.get("prompt_ids", []))
        elif details.get("run_key") == key and changed:
            earlier = (details["round"], changed)
    again = [models for i, models in stale.items() if i not in done]
    if again:
        result.changed_since, result.changed_models = round_name, again[-1]
    elif earlier and not done:
        result.changed_since, result.changed_models = earlier
    return done


def _rejected_prompts(
    batch: list[tuple[int, Conversation]], outputs: dict[tuple[int, int], list[Completion]],
) -> set[int]:
    """Prompts of the batch for which the server rejected at least one request."""
    return {prompt_id for row, (prompt_id, _) in enumerate(batch)
            if any(_is_rejection(completions[row]) for completions in outputs.values())}


def _is_rejection(completion: Completion) -> bool:
    # "too_long" is decided here, before any request: the prompt will never fit, so it counts as done.
    return completion.error is not None and completion.error != "too_long"


def _check_not_all_rejected(outputs: dict[tuple[int, int], list[Completion]], client: ChatClient | None) -> None:
    """Stop when the server rejected every request of the first batch: nothing got through, so it is likely
    not the prompts but the request itself."""
    completions = [c for row in outputs.values() for c in row]
    if client is None or not completions or not all(_is_rejection(c) for c in completions):
        return
    messages = sorted({c.error for c in completions})
    raise UserError(f"{client.url}: the server rejected all {len(completions)} requests of a batch "
                    f"({'; '.join(messages[:2])}); nothing of that batch was stored")


# ----------------------------------------------------------------------------------------- generation


def generate(
    session: Session,
    project: Project,
    policies: list[str],
    *,
    prompts: str | Path | Sequence[Any] | None = None,
    settings: GenerationSettings | None = None,
    endpoint: OpenAIEndpoint | None = None,
    round_name: str | None = None,
    max_prompts: int | None = None,
    actor_id: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerateResult:
    """Generate responses to prompts with `policies`, pair them, and add the pairs to `project`.

    Commits `session` after every batch (see the module docstring); `progress(done, total)` is called
    after each. `prompts`: None for the project's own prompts, else a file, dataset or list (see
    `select_prompts`); `max_prompts`: the first N of them. `endpoint`: send every request to an
    OpenAI-compatible server instead of loading the models here.
    """
    started = time.perf_counter()
    settings = settings or GenerationSettings()
    specs = [parse_model(p) for p in policies]
    _check(specs, settings, endpoint)
    key = run_key(specs, settings, endpoint)
    # Where a model is rather than what it is would let a model saved again into the same folder pass for done.
    contents = None if endpoint else {s.label: model_contents(s) for s in specs}
    project_id = project.id  # read now: no ORM access may start a transaction while models generate
    batches = _batches(session, project_id)
    round_name = round_name or resumed_round(batches, key, contents) or default_round(key, contents)
    selected = select_prompts(session, project, prompts, max_prompts)
    result = GenerateResult(round=round_name, prompts=len(selected), already_done=0, responses=0, pairs=0,
                            identical=0, already_paired=0, empty=0, too_long=0, rejected=0,
                            not_answerable=0, seconds=0.0)
    done = _done_prompts(batches, round_name, key, contents, result)
    answerable = [(i, c) for i, c in selected if c and c[-1]["role"] == "user"]
    todo = [(i, _with_system(c, settings.system_prompt)) for i, c in answerable if i not in done]
    result.already_done = sum(i in done for i, _ in selected)
    result.not_answerable = len(selected) - len(answerable)
    session.commit()  # prompts added from a file are kept, and the write lock is released before loading models
    if not todo:
        result.seconds = round(time.perf_counter() - started, 2)
        return result

    client = ChatClient(endpoint) if endpoint else None
    pool = ThreadPoolExecutor(max_workers=endpoint.concurrency) if endpoint else None
    backends: list[Any] = []
    try:
        for spec in specs:
            backends.append(HTTPBackend(spec, settings, client) if client else LocalBackend(spec, settings))
        for start in range(0, len(todo), settings.batch_size):
            batch = todo[start:start + settings.batch_size]
            outputs = _run_batch(batch, specs, backends, settings, pool)
            if start == 0:
                _check_not_all_rejected(outputs, client)
            _store_batch(session, project_id, round_name, batch, specs, settings, outputs, result)
            # Only the prompts done here: a rejected one is left for the rerun to retry.
            rejected = _rejected_prompts(batch, outputs)
            audit(session, "generate.batch", actor_id, project_id, round=round_name,
                  prompt_ids=[i for i, _ in batch if i not in rejected], rejected_prompt_ids=sorted(rejected),
                  models=[s.label for s in specs], run_key=key, contents=contents)
            session.commit()
            if progress:
                progress(start + len(batch), len(todo))
    finally:
        if pool:
            # Ctrl-C: do not wait for queued requests; the batch in flight is simply not committed.
            pool.shutdown(wait=False, cancel_futures=True)
        if client:
            result.retries = client.retries
            client.close()
        for backend in backends:
            if isinstance(backend, LocalBackend):
                backend.close()
    result.seconds = round(time.perf_counter() - started, 2)
    audit(session, "generate", actor_id, project_id, **result.as_dict(),
          models=[asdict(s) for s in specs], contents=contents, settings=asdict(settings),
          endpoint=endpoint.base_url if endpoint else None)
    session.commit()
    return result


def _check(specs: list[ModelSpec], settings: GenerationSettings, endpoint: OpenAIEndpoint | None) -> None:
    if not specs:
        raise UserError("give at least one --policy")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise UserError(f"--policy: the labels {labels} repeat; name them apart with LABEL=MODEL")
    check_settings(settings, (
        ("num_generations", settings.num_generations >= 1, "at least 1"),
        ("batch_size", settings.batch_size >= 1, "at least 1"),
        ("max_completion_length", settings.max_completion_length >= 1, "at least 1"),
        ("max_prompt_length", settings.max_prompt_length >= 1, "at least 1"),
        ("temperature", settings.temperature >= 0, "0 (greedy) or more"),
        ("top_p", 0 < settings.top_p <= 1, "in (0, 1]")))
    if len(specs) == 1 and settings.num_generations < 2:
        raise UserError("one policy makes pairs only from several responses to each prompt: set num_generations "
                        "(--num-generations) to 2 or more, or give a second policy")
    if settings.chat_template is not None and endpoint is not None:
        raise UserError("--chat-template applies to local models only: an HTTP server renders prompts with its own "
                        "template (vLLM: --chat-template when starting the server)")


def _run_batch(
    batch: list[tuple[int, Conversation]], specs: list[ModelSpec], backends: list[Any],
    settings: GenerationSettings, pool: ThreadPoolExecutor | None,
) -> dict[tuple[int, int], list[Completion]]:
    """{(model index, sample index): a completion per prompt of the batch}."""
    conversations = [c for _, c in batch]
    outputs: dict[tuple[int, int], list[Completion]] = {}
    futures = {}
    for k, (spec, backend) in enumerate(zip(specs, backends)):
        for sample in range(settings.num_generations):
            seeds = [response_seed(settings.seed, c, spec.label, sample) for c in conversations]
            if pool is None:
                outputs[k, sample] = backend.complete(conversations, seeds)
            else:  # every request of the batch at once: the pool holds them to `concurrency` in flight
                futures[k, sample] = [pool.submit(backend.complete_one, c, s) for c, s in zip(conversations, seeds)]
    for key, row in futures.items():
        outputs[key] = [f.result() for f in row]
    return outputs


def _store_batch(
    session: Session, project_id: int, round_name: str, batch: list[tuple[int, Conversation]],
    specs: list[ModelSpec], settings: GenerationSettings, outputs: dict[tuple[int, int], list[Completion]],
    result: GenerateResult,
) -> None:
    prompt_ids = [i for i, _ in batch]
    num_generations = settings.num_generations
    # The stored prompt is the project's; a system prompt added for generation (`_with_system`) is recorded with
    # each response it conditioned, or nothing would say which responses followed it.
    added = {prompt_id: settings.system_prompt for prompt_id, conversation in batch
             if settings.system_prompt and conversation[0] == {"role": "system", "content": settings.system_prompt}}
    # Responses are unique per (prompt, model, text): an identical earlier response is reused, not duplicated.
    existing = {(p, m, h): i for p, m, h, i in session.execute(
        select(Response.prompt_id, Response.model, Response.content_hash, Response.id)
        .where(Response.prompt_id.in_(prompt_ids)))}
    pairs = {(a, b) for a, b in session.execute(
        select(Pair.response_a_id, Pair.response_b_id).where(Pair.prompt_id.in_(prompt_ids)))}
    now = utcnow().isoformat(timespec="seconds")
    for row, prompt_id in enumerate(prompt_ids):
        stored: dict[tuple[int, int], tuple[int, str]] = {}  # (model, sample) -> (response id, text)
        for (k, sample), completions in outputs.items():
            completion = completions[row]
            if completion.error == "too_long":
                result.too_long += 1
                continue
            if completion.error:
                result.rejected += 1
                continue
            if not completion.text:
                result.empty += 1
                continue
            key = (prompt_id, specs[k].label, content_hash(completion.text))
            if key not in existing:
                generation = {**completion.generation, "label": specs[k].label, "sample": sample,
                              "round": round_name, "generated_at": now}
                if prompt_id in added:
                    generation["system_prompt"] = added[prompt_id]
                if generation.get("backend") == "transformers":
                    generation["batch_prompt_ids"] = prompt_ids
                response = Response(prompt_id=prompt_id, model=specs[k].label, content=completion.text,
                                    content_hash=key[2], generation=generation)
                session.add(response)
                session.flush()
                existing[key] = response.id
                result.responses += 1
            stored[k, sample] = (existing[key], completion.text)
        for first, second in _pairings(len(specs), num_generations):
            if first not in stored or second not in stored:
                continue
            (a, text_a), (b, text_b) = stored[first], stored[second]
            if text_a.strip() == text_b.strip():
                result.identical += 1
                continue
            if (a, b) in pairs or (b, a) in pairs:
                result.already_paired += 1
                continue
            session.add(Pair(project_id=project_id, prompt_id=prompt_id, response_a_id=a, response_b_id=b,
                             source=f"generate:{round_name}"))
            pairs.add((a, b))
            result.pairs += 1
    session.flush()


def _pairings(n_models: int, n_samples: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Which (model, sample) outputs are paired: models against each other, else samples of one model."""
    if n_models == 1:
        return [((0, s), (0, t)) for s, t in itertools.combinations(range(n_samples), 2)]
    return [((j, s), (k, s)) for s in range(n_samples) for j, k in itertools.combinations(range(n_models), 2)]


# ------------------------------------------------------------------------------------------------ CLI


def generate_command(
    project: str = PROJECT_OPTION,
    policies: list[str] = typer.Option(..., "--policy", help="[LABEL=]MODEL: an alias, a Hugging Face id or path, "
                                       "or a PEFT adapter directory. Repeat for a second policy; one policy needs "
                                       "--num-generations 2+."),
    prompts: Optional[Path] = typer.Option(None, help="A file of prompts (added to the project); default: the "
                                           "project's own prompts."),
    max_prompts: Optional[int] = typer.Option(None, help="Only the first N prompts."),
    num_generations: int = typer.Option(1, help="Responses per policy and prompt."),
    max_completion_length: int = typer.Option(256, help="Longest response, in tokens."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(0.95, help="Nucleus sampling threshold."),
    seed: int = typer.Option(0, help="Base seed."),
    batch_size: int = typer.Option(8, help="Prompts per batch (and per database commit)."),
    max_prompt_length: int = typer.Option(1024, help="Local models: prompt tokens kept (oldest turns go)."),
    system_prompt: Optional[str] = typer.Option(None, help="A system message for prompts that have none."),
    chat_template: Optional[str] = typer.Option(None, help="Local models: a Jinja chat template (a .jinja file or "
                                                "the text) for a model whose tokenizer has none or the wrong one."),
    round_name: Optional[str] = typer.Option(None, "--round", help="Name of this round; rerunning a round resumes "
                                             "it (default: derived from the policies, what their folders hold, and "
                                             "the sampling settings)."),
    base_url: Optional[str] = typer.Option(None, help="An OpenAI-compatible endpoint, e.g. http://localhost:8000/v1; "
                                           "default: run the models here with Transformers."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the endpoint's API key."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for one HTTP answer."),
    max_retries: int = typer.Option(5, help="Retries after HTTP 429, 5xx and timeouts."),
    concurrency: int = typer.Option(4, help="HTTP requests in flight at once."),
    url: Optional[str] = DB_OPTION,
) -> None:
    """Generate new candidate responses with one or more policies and add them as pairs to a project."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from collect import db
    from collect.projects import get_project

    settings = GenerationSettings(
        max_completion_length=max_completion_length, temperature=temperature, top_p=top_p,
        num_generations=num_generations, seed=seed, batch_size=batch_size, max_prompt_length=max_prompt_length,
        system_prompt=system_prompt, chat_template=chat_template)
    endpoint = OpenAIEndpoint(base_url=base_url, api_key_env=api_key_env, timeout=timeout, max_retries=max_retries,
                              concurrency=concurrency) if base_url else None
    console = Console(markup=False)
    with db.existing_session(url) as session, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True) as bar:
        task = bar.add_task("generating", total=None)
        result = generate(session, get_project(session, project), policies, prompts=prompts, settings=settings,
                          endpoint=endpoint, round_name=round_name, max_prompts=max_prompts,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(
        f"round {result.round}{_changed_note(result)}: {result.prompts} prompts ({result.already_done} done before), "
        f"{result.responses} responses, {result.pairs} new pairs; skipped: {result.identical} identical, "
        f"{result.already_paired} already in the project, "
        f"{result.empty} empty, {result.too_long} too long, {result.rejected} rejected by the server, "
        f"{result.not_answerable} not ending in a user turn; {result.seconds:.0f} s"
        + (f", {result.retries} HTTP retries" if result.retries else ""))


def _changed_note(result: GenerateResult) -> str:
    """Why prompts an earlier run did are generated again: a model folder now holds another model."""
    if result.changed_since is None:
        return ""
    models = ", ".join(result.changed_models)
    if result.changed_since == result.round:
        return f" ({models} changed since this round's earlier batches: their prompts are generated again)"
    return f" (new: {models} changed since round {result.changed_since})"
