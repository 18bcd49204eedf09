"""`make gpu-check` keeps working where no GPU is lent: the same code at toy size on the CPU."""

import csv
import os
import subprocess
import sys

import pytest

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
        _cpu_rows_against_their_definitions(rows, proc.stdout, terms)


def _cpu_rows_against_their_definitions(rows, stdout, terms):
    """The toy CPU run's rows recomputed here: the parameter count of the toy GPT-2 (built from
    transformers' own classes), the FLOP/s as 6 x params x tokens/s, each prediction from its
    costs.yaml term and the sizes the rows name (FAISS's thread count, which may differ from
    torch's, is the whole number the IVF row's prediction implies), and the measurements where their physics puts
    them: a forward pass (embedding) faster than a training step, whose FLOP/s sit within
    [1e-3, 10] of the rate costs.yaml fitted on this kind of machine (0.07 of it here, toy sizes
    being overhead-bound): a time for a rate, or a count per step for one per token, is 1e3 off."""
    import re

    from transformers import GPT2Config, GPT2LMHeadModel

    threads = int(re.search(r"CPU \((\d+) threads\)", stdout)[1])
    by = {r["what"].split(",")[0]: r for r in rows}
    layers, width, batch, block = map(int, re.search(r"training, (\d+)x(\d+), batch (\d+)x(\d+)",
                                                     by["training"]["what"]).groups())
    vocab = 512  # the toy size's vocabulary (gpu_check.TOY)
    params = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=2,
                                                               vocab_size=vocab, n_positions=block)).parameters())
    tokens_per_s = float(by["training"]["measured"])
    flops = by["training: effective FLOP/s (6 x params x tokens/s)"]
    assert float(flops["measured"]) == pytest.approx(6 * params * tokens_per_s, rel=1e-9)
    cpu_rate = terms["cpu_flops_per_thread"] * threads
    assert float(flops["cost_model"]) == pytest.approx(cpu_rate, rel=1e-9)
    assert 1e-3 < float(flops["measured"]) / cpu_rate < 10
    embedding = by["datastore embedding (keys only"]
    assert float(embedding["cost_model"]) == pytest.approx(cpu_rate / (2 * params), rel=1e-9)
    assert float(embedding["measured"]) > 1.5 * tokens_per_s  # a forward is a third of a training step's FLOPs
    keys = int(re.search(r"(\d+) keys", by["FAISS exact search on the CPU"]["what"])[1])
    ivf = next(r for r in rows if "PQ" in r["what"])
    nlist, code, nprobe = map(int, re.search(r"IVF(\d+),PQ(\d+) search on the CPU, nprobe (\d+)", ivf["what"]).groups())
    scanned = keys * nprobe / nlist  # codes an IVF search reads per query
    faiss_threads = float(ivf["cost_model"]) * terms["pq_seconds_per_code_byte"] * scanned * code
    assert faiss_threads == pytest.approx(round(faiss_threads), rel=1e-9) and 1 <= round(faiss_threads) <= os.cpu_count()
