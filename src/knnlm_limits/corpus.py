"""Corpus stage: WikiText from the Hugging Face hub, or local text files.

Local files are named per split in ``corpus.local_files``; a file may carry a
fraction-of-lines slice, ``test.txt[:0.5]``, so that one file can give two
splits (as WikiText-2's test file does for valid and test in CI).
"""

from __future__ import annotations

import re
from pathlib import Path

from . import io

SPLITS = ("train", "valid", "test")
HUB_SPLIT_NAMES = {"train": "train", "valid": "validation", "test": "test"}
LOCAL_KEY = "corpus.local_files"
_SLICE = re.compile(r"^(?P<path>.*?)(\[(?P<start>[0-9.]*):(?P<end>[0-9.]*)\])?$")


class CorpusError(RuntimeError):
    """The corpus cannot be had or is unusable; the message names the config key."""


def parse_local_spec(spec: str) -> tuple[Path, float, float]:
    """'file.txt[0.5:]' -> (Path('file.txt'), 0.5, 1.0)."""
    match = _SLICE.match(spec.strip())
    start = float(match["start"]) if match["start"] else 0.0
    end = float(match["end"]) if match["end"] else 1.0
    if not 0.0 <= start < end <= 1.0:
        raise CorpusError(f"{LOCAL_KEY}: slice in {spec!r} must satisfy 0 <= start < end <= 1")
    return Path(match["path"]), start, end


def read_local_split(split: str, spec: str, base_dir: Path | None = None) -> list[str]:
    path, start, end = parse_local_spec(spec)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise CorpusError(f"{LOCAL_KEY}.{split}: file {str(path)!r} does not exist")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return lines[int(round(start * len(lines))) : int(round(end * len(lines)))]


def load_hub_splits(hub_id: str, hub_config: str) -> dict[str, list[str]]:
    import datasets

    try:
        data = datasets.load_dataset(hub_id, hub_config)
    except Exception as err:  # the hub raises many types: offline, missing, gated
        raise CorpusError(
            f"cannot load corpus {hub_id!r} ({hub_config!r}) from the Hugging Face hub: {err}. "
            f"Offline, set {LOCAL_KEY} to local train/valid/test text files "
            f"(see config/wikitext2-local.yaml)."
        ) from err
    return {split: list(data[HUB_SPLIT_NAMES[split]]["text"]) for split in SPLITS}


def load_splits(settings: dict, base_dir: Path | None = None) -> dict[str, list[str]]:
    """The three splits as lists of lines, from local files if given, else the hub."""
    local = settings.get("local_files")
    if local:
        missing = [s for s in SPLITS if not local.get(s)]
        if missing:
            raise CorpusError(f"{LOCAL_KEY}: no file given for split(s) {missing}")
        splits = {s: read_local_split(s, local[s], base_dir) for s in SPLITS}
    elif settings.get("hub_id"):
        splits = load_hub_splits(settings["hub_id"], settings["hub_config"])
    else:
        raise CorpusError(f"no corpus: set corpus.hub_id or {LOCAL_KEY}")
    for split, lines in splits.items():
        if not any(line.strip() for line in lines):
            where = local[split] if local else f"{settings['hub_id']}:{HUB_SPLIT_NAMES[split]}"
            raise CorpusError(f"corpus split {split!r} ({where}) is empty")
    return splits


def write_splits(splits: dict[str, list[str]], out_paths: dict[str, str]) -> None:
    for split in SPLITS:
        text = "".join(line if line.endswith("\n") else line + "\n" for line in splits[split])
        io.write_text(out_paths[split], text)


def tokenize_split(tok, text_path, block_size: int, max_tokens: int | None = None):
    """A split's text as blocks of `block_size` tokens; too small a split is an error."""
    from .tokenizer import encode_lines
    from .tokens import blocks

    lines = Path(text_path).read_text(encoding="utf-8").splitlines(keepends=True)
    stream = encode_lines(tok, lines)
    if len(stream) < block_size:
        raise CorpusError(
            f"corpus split file {str(text_path)!r} has {len(stream)} tokens, fewer than one "
            f"training block (corpus.block_size = {block_size})"
        )
    return blocks(stream, block_size, max_tokens)
