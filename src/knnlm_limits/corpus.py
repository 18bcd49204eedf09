"""Corpus stage: WikiText from the Hugging Face hub, local text files, or synthetic text.

Local files are named per split in ``corpus.local_files``; a file may carry a
fraction-of-lines slice, ``test.txt[:0.5]``, so that one file can give two
splits (as WikiText-2's test file does for valid and test in CI).

``corpus.synthetic`` makes a seeded, WikiText-shaped synthetic text instead
(headings, paragraphs of template sentences about people named from Faker's
name lists): the tests and the paper-scale rehearsal run on it with no data
and no network. It is a stand-in for plumbing, not for language.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from . import io

SPLITS = ("train", "valid", "test")
HUB_SPLIT_NAMES = {"train": "train", "valid": "validation", "test": "test"}
LOCAL_KEY = "corpus.local_files"
_SLICE = re.compile(r"^(?P<path>.*?)\[(?P<slice>[^\[\]]*)\]$")
_FRACTION = r"(0|1|0?\.[0-9]+|1\.0*)?"


class CorpusError(RuntimeError):
    """The corpus cannot be had or is unusable; the message names the config key."""


def parse_local_spec(spec: str, key: str = LOCAL_KEY) -> tuple[Path, float, float]:
    """'file.txt[0.5:]' -> (Path('file.txt'), 0.5, 1.0); a malformed slice names `key`."""
    spec = spec.strip()
    match = _SLICE.match(spec)
    if match is None:
        if "[" in spec or "]" in spec:
            raise CorpusError(f"{key}: {spec!r} has a malformed slice; write file.txt[start:end] with fractions, e.g. test.txt[:0.5]")
        return Path(spec), 0.0, 1.0
    bounds = re.fullmatch(f"{_FRACTION}:{_FRACTION}", match["slice"].strip())
    if bounds is None:
        raise CorpusError(f"{key}: slice [{match['slice']}] in {spec!r} is not start:end with fractions of lines, e.g. [:0.5] or [0.5:]")
    start = float(bounds[1]) if bounds[1] else 0.0
    end = float(bounds[2]) if bounds[2] else 1.0
    if not 0.0 <= start < end <= 1.0:
        raise CorpusError(f"{key}: slice in {spec!r} must satisfy 0 <= start < end <= 1")
    return Path(match["path"]), start, end


def read_local_split(split: str, spec: str, base_dir: Path | None = None) -> list[str]:
    path, start, end = parse_local_spec(spec, f"{LOCAL_KEY}.{split}")
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


# Synthetic text: a few template sentences over small word lists and Faker names.
_SENTENCES = (
    "{first} {last} was born in {place} in {year} .",
    "In {year} , {first} {last} moved to {place} and worked as a {job} .",
    "The {adj} {noun} of {place} was built by {first} {last} .",
    "{first} and {first2} wrote a {adj} book about the {noun} of {place} .",
    "{first} {last} , a {job} from {place} , married {first2} {last2} in {year} .",
    "According to {first} , the {noun} was {adj} and the {noun2} was {adj2} .",
    "The {noun} is {number} metres long and {number2} metres wide .",
    "Many people in {place} remember {first} {last} as a {adj} {job} .",
)
_WORDS = {
    "place": "Avalon Brigham Carver Dunmore Elston Fairport Glenwood Harlow Ivydale Jasper Kingsley Linden Marlow "
             "Northam Oakridge Penrith Quarry Redfield Stanton Thornbury".split(),
    "job": "farmer teacher sailor painter miller baker doctor writer soldier singer clerk builder".split(),
    "adj": "old new large small famous quiet bright dark ancient modern narrow long".split(),
    "noun": "church bridge river castle school station market harbour tower garden library road".split(),
}


def synthetic_lines(n_lines: int, seed: int) -> list[str]:
    """`n_lines` WikiText-shaped lines (with newlines): headings, paragraphs, blank lines."""
    from .macondo import name_pools

    rng = np.random.default_rng(seed)
    firsts, lasts = name_pools(["en_US", "en_GB", "de_DE", "fr_FR"])
    firsts = [firsts[i] for i in np.random.default_rng(0).choice(len(firsts), 800, replace=False)]
    lasts = [lasts[i] for i in np.random.default_rng(1).choice(len(lasts), 400, replace=False)]

    def pick(words):
        return words[rng.integers(len(words))]

    def sentence():
        fields = {f"{k}{i}": pick(v) for k, v in _WORDS.items() for i in ("", "2")}
        fields |= {"first": pick(firsts), "first2": pick(firsts), "last": pick(lasts), "last2": pick(lasts),
                   "year": str(rng.integers(1700, 2000)), "number": str(rng.integers(2, 900)),
                   "number2": str(rng.integers(2, 900))}
        return pick(_SENTENCES).format(**fields)

    lines = []
    while len(lines) < n_lines:
        kind = rng.random()
        if kind < 0.1:
            lines.append(f" = {pick(_WORDS['place'])} {pick(_WORDS['noun']).title()} = \n")
        elif kind < 0.3:
            lines.append(" \n")
        else:
            lines.append(" " + " ".join(sentence() for _ in range(rng.integers(2, 7))) + " \n")
    return lines


def synthetic_splits(settings: dict) -> dict[str, list[str]]:
    lines = {"train": settings["train_lines"], "valid": settings["eval_lines"], "test": settings["eval_lines"]}
    return {split: synthetic_lines(n, [settings["seed"], i]) for i, (split, n) in enumerate(lines.items())}


def load_splits(settings: dict, base_dir: Path | None = None) -> dict[str, list[str]]:
    """The three splits as lists of lines: local files if given, else synthetic text, else the hub."""
    local = settings.get("local_files")
    if local:
        missing = [s for s in SPLITS if not local.get(s)]
        if missing:
            raise CorpusError(f"{LOCAL_KEY}: no file given for split(s) {missing}")
        splits = {s: read_local_split(s, local[s], base_dir) for s in SPLITS}
    elif settings.get("synthetic"):
        splits = synthetic_splits(settings["synthetic"])
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


def read_lines(text_path) -> list[str]:
    """A split's text as lines with their newlines: what the tokenizer trains on and encodes."""
    from .tokenizer import iter_lines

    return list(iter_lines(text_path))


def tokenize_split(tok, text_path, block_size: int, max_tokens: int | None = None) -> np.ndarray:
    """A split's text as one token stream (capped at max_tokens); too small a split is an error.

    The file is read and encoded a chunk of lines at a time (see `tokenizer.encode_lines`),
    so memory is the int32 stream, not the text and every line's Python list of ids.
    """
    from .tokenizer import encode_lines, iter_lines

    stream = encode_lines(tok, iter_lines(text_path), max_tokens=max_tokens)
    if len(stream) < block_size:
        raise CorpusError(
            f"corpus split file {str(text_path)!r} has {len(stream)} tokens, fewer than one "
            f"block (corpus.block_size = {block_size})"
        )
    return stream
