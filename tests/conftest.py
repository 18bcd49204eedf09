"""Fixtures shared by the tests. Helpers live in tests/support.py."""

import os

import pytest

from tests.support import SHARED_WIKITEXT, snakemake, synthetic_tokenizer

# Tests never reach a hub: fail fast instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def small_tokenizer():
    """A 4k BPE on the workflow's synthetic corpus, shared by tests that need a tokenizer."""
    return synthetic_tokenizer()


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """The tiny whole DAG (.tests/config.yaml, synthetic corpus), run twice from scratch."""
    out = []
    for name in ("a", "b"):
        results = tmp_path_factory.mktemp(name) / "results"
        snakemake("--cores", "2", "--configfile", ".tests/config.yaml", "--config", f"results={results}")
        out.append(results)
    return out


@pytest.fixture(scope="session")
def wikitext_lines():
    if not (SHARED_WIKITEXT / "valid.txt").is_file():
        pytest.skip(f"real-text check: WikiText-2 files not found at {SHARED_WIKITEXT}")
    return (SHARED_WIKITEXT / "valid.txt").read_text(encoding="utf-8").splitlines(keepends=True)
