"""Tokenizer stage: one tokenizer for the whole workflow.

Either a byte-level BPE trained with `tokenizers` on the corpus training split,
or the pretrained tokenizer of a named model (``gpt2`` at paper scale). Either
way it is saved so that ``AutoTokenizer.from_pretrained(dir)`` loads it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


class TokenizerError(RuntimeError):
    pass


def train_bpe(lines, vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2's scheme) trained on `lines`."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator((line for line in lines if line.strip()), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def load_pretrained(name_or_path: str, config_key: str = "tokenizer.pretrained"):
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise TokenizerError(
            f"config key {config_key!r}: cannot load tokenizer {name_or_path!r} "
            f"(no hub access and no local copy?): {err}"
        ) from err
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build(settings: dict, train_file) -> PreTrainedTokenizerFast:
    if settings.get("pretrained"):
        return load_pretrained(settings["pretrained"])
    lines = Path(train_file).read_text(encoding="utf-8").splitlines()
    return train_bpe(lines, settings["vocab_size"])


def load(path):
    return AutoTokenizer.from_pretrained(str(path))


def encode_lines(tok, lines, add_eos_between: bool = False):
    """Token ids of a text given as lines, concatenated into one stream."""
    ids = tok(list(lines), add_special_tokens=False)["input_ids"]
    if add_eos_between:
        ids = [seq + [tok.eos_token_id] for seq in ids]
    flat = [t for seq in ids for t in seq]
    return np.asarray(flat, dtype=np.int32)
