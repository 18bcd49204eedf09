"""`make gpu-check` keeps working where no GPU is lent: the same code at toy size on the CPU."""

import csv
import subprocess
import sys

from tests.support import ROOT


def test_gpu_check_runs_at_toy_size_and_says_what_it_skipped(tmp_path):
    out = tmp_path / "gpu_check.csv"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--toy", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = list(csv.DictReader(open(out)))
    measured = {r["what"].split(",")[0]: float(r["measured"]) for r in rows}
    assert {"training", "datastore embedding (keys only", "FAISS exact search on the CPU"} <= set(measured)
    assert all(value > 0 for value in measured.values())
    # every term it checks is one costs.yaml has, with the ratio measured / predicted
    from knnlm_limits import costs

    terms = {**costs.table()["measured"], **costs.table()["measured_gpu"], **costs.table()["assumed"]}
    for r in rows:
        if r["cost_term"]:
            assert r["cost_term"] in terms
            assert float(r["measured_over_model"]) == float(r["measured"]) / float(r["cost_model"])
    import torch

    if not torch.cuda.is_available():
        assert "skipped: bf16 autocast" in proc.stdout and "skipped: FAISS on the GPU" in proc.stdout
