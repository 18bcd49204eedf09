import os
import re
import subprocess
import sys
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


SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, check=True, timeout=1800):
    """Run the snakemake CLI in the repository (under a hard kill timeout)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = ["timeout", "-s", "KILL", str(timeout), *SNAKEMAKE, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def default_locales():
    from knnlm_limits.config import validate

    return validate({})["macondo"]["name_locales"]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    if not (ROOT.parent / "shared" / "data" / "wikitext-2" / "valid.txt").is_file():
        pytest.skip("needs ../shared/data/wikitext-2")
    out = []
    for name in ("a", "b"):
        results = tmp_path_factory.mktemp(name) / "results"
        snakemake("--cores", "2", "--configfile", ".tests/config.yaml", "--config", f"results={results}")
        out.append(results)
    return out
