"""A whole workflow killed with SIGKILL resumes as the README says: `snakemake --unlock`, then
the same command, with no flag to discover (profiles/default sets rerun-incomplete)."""

import os
import signal
import subprocess
import time

import pytest

from tests.support import ROOT, SNAKEMAKE, snakemake

POINT = "corpus_lm/tiny/step-20/mlp_input"


def kill_instants(results):
    """When to kill each attempt: early (one job done, the next ones running), while the
    corpus LM and Macondo runs train (five more done), and inside the search, between the
    two splits it writes one after the other (a job cut short with an output on disk:
    without rerun-incomplete, Snakemake refuses to go on)."""
    return [lambda log: _finished(log) >= 1, lambda log: _finished(log) >= 5,
            lambda log: (results / "knn" / POINT / "valid.npz").exists()]


def _finished(log) -> int:
    return log.read_text().count("Finished jobid")
# CSVs that hold measured times, not results: they differ between any two runs.
TIMED = ("query_costs.csv",)


def _run_until_killed(args: list[str], log, when, timeout: float = 600) -> bool:
    """Start snakemake in its own process group and SIGKILL the whole group as soon as
    when(log) holds. True if it was killed, False if the run ended first."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(log, "w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if when(log):
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and every job it started
            proc.wait()
            return True
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no kill instant in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return False


def _csvs(results) -> dict[str, bytes]:
    return {p.relative_to(results).as_posix(): p.read_bytes() for p in sorted(results.rglob("*.csv"))
            if p.name not in TIMED}


@pytest.mark.workflow
def test_a_killed_run_resumes_with_unlock_and_the_same_command(tiny_runs, tmp_path):
    results = tmp_path / "results"
    command = ["--cores", "2", "--configfile", ".tests/config.yaml", "--config", f"results={results}"]
    instants = kill_instants(results)
    kills = 0
    for i, when in enumerate(instants):
        kills += _run_until_killed(command, tmp_path / f"attempt-{i}.log", when)
        # the README's recovery: release the lock the killed driver held, then the same command
        snakemake("--unlock", *command[2:])
    assert kills == len(instants), "the run ended before it could be killed"
    snakemake(*command)
    unkilled = _csvs(tiny_runs[0])
    assert _csvs(results).keys() == unkilled.keys()
    for rel, data in _csvs(results).items():
        assert data == unkilled[rel], rel
    proc = snakemake("-n", *command[2:])
    assert "Nothing to be done" in proc.stdout + proc.stderr
