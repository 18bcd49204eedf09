"""The workflow on a real single-node SLURM (with accounting) through profiles/slurm.

tests/slurm/cluster.sh starts munge, MariaDB, slurmdbd, slurmctld and slurmd;
.ci/run installs them first. Where SLURM cannot start, these tests skip and say why.
"""

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, snakemake
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SLURM_ARGS = ["--profile", "profiles/slurm", "--slurm-init-seconds-before-status-checks", "5", "--retries", "0"]
TARGETS = ["data/macondo/facts.csv", "data/macondo/v2_train.txt", "data/tokens/macondo_v1.npz"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [b for b in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "munged", "mariadbd") if not shutil.which(b)]
    if missing:
        pytest.skip(f"SLURM cannot start here: {', '.join(missing)} not installed (bash tests/slurm/cluster.sh install)")
    # Not under pytest's tmp_path: its parents are private to root, and munged and
    # MariaDB run as their own users.
    state = Path(tempfile.mkdtemp(prefix="knnlm-slurm-"))
    start = subprocess.run(["timeout", "-s", "KILL", "240", "bash", str(CLUSTER), "start", str(state)],
                           capture_output=True, text=True)
    if start.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)])
        logs = "\n".join(p.read_text()[-1500:] for p in sorted(state.glob("*/*.log")))
        message = f"SLURM could not start: {start.stderr[-2000:]}\n{logs}"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs SLURM (.ci/run): not starting is a failure there
        pytest.skip(message)
    yield state
    subprocess.run(["bash", str(CLUSTER), "stop", str(state)], check=True)
    shutil.rmtree(state, ignore_errors=True)


def run_on_slurm(config_path, results, targets):
    cmd = ["--configfile", str(config_path), "--config", f"results={results}", *SLURM_ARGS,
           *[f"{results}/{t}" for t in targets]]
    return snakemake(*cmd, check=False, timeout=900)


def test_slurm_outputs_match_a_local_run(slurm, tiny_runs, tmp_path):
    results = tmp_path / "results"
    t0 = time.time()
    proc = run_on_slurm(ROOT / ".tests/config.yaml", results, TARGETS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"SLURM run of {len(TARGETS)} targets took {time.time() - t0:.0f}s")
    for rel in TARGETS:
        assert (results / rel).read_bytes() == (tiny_runs[0] / rel).read_bytes(), rel
    # the jobs really went through SLURM, and accounting saw them complete
    sacct = subprocess.run(["sacct", "-n", "-X", "-o", "JobName%60,State"], capture_output=True, text=True, check=True)
    assert "COMPLETED" in sacct.stdout


def test_a_failing_job_is_reported_as_failed(slurm, tmp_path):
    """A job that fails on a node (too short a test split to tokenize into one block);
    the corpus and tokenizer before it are local rules (hub downloads) and succeed."""
    config = yaml.safe_load((ROOT / ".tests/config.yaml").read_text())
    for split, text in (("train", " The river was long . \n" * 200), ("valid", " a b \n"), ("test", " a b \n")):
        (tmp_path / f"{split}.txt").write_text(text)
    config["corpus"]["synthetic"] = None
    config["corpus"]["local_files"] = {s: str(tmp_path / f"{s}.txt") for s in ("train", "valid", "test")}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    proc = run_on_slurm(path, results, ["data/tokens/corpus_test.npz"])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error in rule corpus_tokens" in out
    assert (results / "data/corpus/test.txt").is_file()  # the local rule ran
    assert not (results / "data/tokens/corpus_test.npz").exists()


def _times(when: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(when).timestamp()


def test_a_datastores_shards_run_at_the_same_time(slurm, tmp_path):
    """The tiny DAG's two datastore shards, and then their two searches, are SLURM jobs of their
    own that run side by side: each pair's accounting start and end times overlap. Two steps,
    so that each pair has the test cluster's 2 CPUs to itself (the LM pass, ready when the
    datastore jobs are, would otherwise hold one of them)."""
    results = tmp_path / "results"
    point = "corpus_lm/tiny/step-20/mlp_input/2-shards"
    steps = {"datastore": [f"datastores/{point}/shard-{s}/shard.json" for s in (0, 1)],
             "knn_shard_search": [f"knn/{point}/shard-{s}" for s in (0, 1)]}
    for rule, targets in steps.items():
        t0 = time.time()
        proc = run_on_slurm(ROOT / ".tests/config.yaml", results, targets)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        print(f"SLURM run up to the shards' {rule} jobs took {time.time() - t0:.0f}s")
        sacct = subprocess.run(["sacct", "-n", "-X", "-P", "-S", "now-1hour", "-o", "Comment,State,Start,End"],
                               capture_output=True, text=True, check=True).stdout
        jobs = []
        for line in sacct.splitlines():
            comment, state, start, end = line.split("|")
            if comment.startswith(f"rule_{rule}_wildcards_") and state == "COMPLETED" and _times(end) >= t0 - 1:
                jobs.append((_times(start), _times(end), comment))
        assert len(jobs) == 2, (rule, sacct)
        (s0, e0, _), (s1, e1, _) = jobs
        assert s0 < e1 and s1 < e0, f"{rule}: the shards ran one after the other: {jobs}"
