"""Tokenizer stage: one tokenizer for the whole workflow.

Either a byte-level BPE trained with `tokenizers` on the corpus training split
(the lines with their newlines, exactly as the corpus is then encoded), or the
pretrained tokenizer of a named model (``gpt2`` at paper scale). Either way it
is saved so that ``AutoTokenizer.from_pretrained(dir)`` loads it.

Every model that reads the workflow's token files must share this tokenizer:
``vocabulary`` reads a saved tokenizer's token -> id map from its files, so the
check costs no transformers import and can run while the workflow is planned.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOS = "<|endoftext|>"
# Characters of text encoded at a time: one chunk's Python lists of ids (~40 bytes a
# token) are all that exists beside the int32 stream.
CHUNK_CHARS = 2**18


class TokenizerError(RuntimeError):
    pass


def train_bpe(lines, vocab_size: int):
    """Byte-level BPE (GPT-2's scheme) trained on `lines`, as a PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )


def load_pretrained(name_or_path: str, config_key: str = "tokenizer.pretrained"):
    from transformers import AutoTokenizer

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


def iter_lines(text_path):
    """A text file's lines with their newlines, read lazily: what the tokenizer trains on and encodes.

    The lines are those of ``read_text().splitlines(keepends=True)``: universal newlines
    while reading, then each line split again at the other breaks splitlines knows
    (form feed, U+2028, ...), which only ever fall inside a line of the file.
    """
    with open(text_path, encoding="utf-8") as fh:
        for line in fh:
            yield from line.splitlines(keepends=True)


def build(settings: dict, train_file):
    if settings.get("pretrained"):
        return load_pretrained(settings["pretrained"], "tokenizer.pretrained")
    return train_bpe(list(iter_lines(train_file)), settings["vocab_size"])


# Tokenizer classes that are a tokenizer.json and nothing more (train_bpe saves one).
# They load without AutoTokenizer, whose config machinery imports torch: 2 s
# instead of 6 s for each tokenizing job. A folder with a model's config.json is
# left to AutoTokenizer, which may pick the model type's own class from it.
PLAIN_FAST_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load(path):
    """The tokenizer saved in folder `path`."""
    config = Path(path) / "tokenizer_config.json"
    declared = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") if config.is_file() else None
    if declared in PLAIN_FAST_CLASSES and not (Path(path) / "config.json").is_file():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def vocabulary(path) -> dict[str, int] | None:
    """The token -> id map of a tokenizer saved in folder `path` (None if it holds none).

    Read from tokenizer.json (a fast tokenizer) or vocab.json + added_tokens.json.
    """
    path = Path(path)
    if (path / "tokenizer.json").is_file():
        spec = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = dict(spec["model"].get("vocab") or {})
        if isinstance(spec["model"].get("vocab"), list):  # unigram: [[piece, score], ...]
            vocab = {piece: i for i, (piece, _) in enumerate(spec["model"]["vocab"])}
        vocab.update({t["content"]: t["id"] for t in spec.get("added_tokens", [])})
        return vocab
    if (path / "vocab.json").is_file():
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        added = path / "added_tokens.json"
        if added.is_file():
            vocab.update(json.loads(added.read_text(encoding="utf-8")))
        return vocab
    return None


def check_same_vocabulary(workflow_dir, model_dir, model_key: str) -> None:
    """A model must read token ids as the workflow's tokenizer writes them."""
    ours, theirs = vocabulary(workflow_dir), vocabulary(model_dir)
    if theirs is None:
        raise TokenizerError(f"config key {model_key!r}: the model in {str(model_dir)!r} comes with no tokenizer to compare")
    if ours != theirs:
        differ = sum(1 for tok, i in ours.items() if theirs.get(tok) != i) + len(set(theirs) - set(ours))
        raise TokenizerError(
            f"config key {model_key!r}: the model's tokenizer ({len(theirs)} tokens) is not the workflow's "
            f"(tokenizer.pretrained / tokenizer.vocab_size: {len(ours)} tokens; {differ} token ids differ). "
            f"Every model reads the workflow's token files: set tokenizer.pretrained to the same model, "
            f"or use a model trained with the workflow's tokenizer."
        )


def _chunks(lines, chunk_chars: int):
    """Lists of consecutive lines, each closed by the line that brings it to `chunk_chars` characters."""
    chunk, size = [], 0
    for line in lines:
        chunk.append(line)
        size += len(line)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def encode_lines(tok, lines, add_eos_between: bool = False, max_tokens: int | None = None,
                 chunk_chars: int | None = None) -> np.ndarray:
    """Token ids of a text given as lines (any iterable), concatenated into one int32 stream.

    Each line is encoded alone, as the tokenizer was trained. Lines are taken a chunk
    at a time and each chunk kept as an int32 array, so the stream costs 4 bytes a token
    (8 while the chunks are joined); reading stops once `max_tokens` ids are had.
    """
    parts, total = [], 0
    for chunk in _chunks(lines, chunk_chars or CHUNK_CHARS):
        ids = tok(chunk, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        if add_eos_between:
            ids = [seq + [tok.eos_token_id] for seq in ids]
        parts.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=sum(map(len, ids))))
        total += len(parts[-1])
        if max_tokens is not None and total >= max_tokens:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return stream[:max_tokens]
