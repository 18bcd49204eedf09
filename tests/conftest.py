import os
from pathlib import Path

import pytest

# Tests never reach a hub: fail fast instead of retrying for half a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_WIKITEXT = (ROOT.parent / "shared" / "data" / "wikitext-2").resolve()


def _shared_data_missing() -> bool:
    return not (SHARED_WIKITEXT / "valid.txt").is_file()


needs_wikitext = pytest.mark.skipif(
    _shared_data_missing() and not os.environ.get("CI"),
    reason=f"WikiText-2 files not found at {SHARED_WIKITEXT} (CI has them and runs these tests)",
)


@pytest.fixture(scope="session")
def wikitext_lines():
    if _shared_data_missing():
        pytest.fail(f"CI must have {SHARED_WIKITEXT}")
    return (SHARED_WIKITEXT / "valid.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def small_tokenizer(wikitext_lines):
    """A 4k BPE on real Wikipedia text, shared by tests that need a tokenizer."""
    from knnlm_limits.tokenizer import train_bpe

    return train_bpe(wikitext_lines, 4096)


def default_locales():
    from knnlm_limits.config import validate

    return validate({})["macondo"]["name_locales"]
