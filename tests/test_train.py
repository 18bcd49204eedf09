"""Training: a SIGKILLed run resumes to the same final weights as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from knnlm_limits import train
from knnlm_limits.tokens import from_sequences
from tests.conftest import ROOT

STEPS = [0, 25, 50, 75, 100, 125, 150]

RUN = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from knnlm_limits import model, train
    from knnlm_limits.tokens import from_sequences
    torch.set_num_threads(1)
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    examples = from_sequences(rng.integers(0, 300, size=(64, 24)))
    lm = model.build_gpt2(300, 2, 64, 4, 32, dropout=0.1, seed=5)
    s = train.TrainSettings(checkpoints=%r, batch_size=8, lr=3e-3, warmup_steps=10, seed=5)
    dirs = {k: f"{out}/step-{k}" for k in s.checkpoints}
    train.train(lm, examples, s, dirs, f"{out}/.work", log=sys.stderr)
    """
    % STEPS
)


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-c", RUN, str(out)], stderr=subprocess.PIPE, text=True, env=env)


def _weights(out: Path) -> dict:
    return load_file(out / f"step-{STEPS[-1]}" / "model.safetensors")


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _start(reference).wait(timeout=300) == 0

    proc = _start(killed)
    deadline = time.time() + 120
    # once step-75's weights exist, step 50's optimizer state is complete on disk
    while not (killed / ".work" / "step-75").exists():
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / f"step-{STEPS[-1]}").exists()

    resumed = _start(killed)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    step = int(err.split("resuming from step ")[1].split()[0])
    assert step >= 50
    assert not (killed / ".work").exists()

    a, b = _weights(reference), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for s in STEPS:
        assert (killed / f"step-{s}" / "model.safetensors").is_file()


def test_batches_are_a_function_of_seed_and_step():
    s = train.TrainSettings(checkpoints=[10], batch_size=7, seed=3)
    a = [train.batch_indices(k, 20, s) for k in range(10)]
    b = [train.batch_indices(k, 20, s) for k in range(10)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # every example once per epoch
    first_epoch = np.concatenate([train.batch_indices(k, 21, train.TrainSettings([3], batch_size=7)) for k in range(3)])
    assert sorted(first_epoch.tolist()) == list(range(21))


def test_warmup_then_constant_lr():
    s = train.TrainSettings(checkpoints=[10], lr=1.0, warmup_steps=4)
    assert [train.lr_at(k, s) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_loss_ignores_padding():
    from knnlm_limits import model
    from knnlm_limits.tokens import pad_batch

    lm = model.build_gpt2(50, 1, 16, 2, 16, seed=0).eval()
    ex = from_sequences([[1, 2, 3, 4, 5], [6, 7, 8]])
    ids, mask = pad_batch(ex, [1])
    short = train.lm_loss(lm, ids, mask)
    ids2, mask2 = pad_batch(ex, [0, 1])
    with torch.no_grad():
        logits = lm(input_ids=ids2).logits[:, :-1]
        logp = torch.log_softmax(logits, -1)
        tok = ids2[:, 1:]
        nll = -logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        expected = nll[mask2[:, 1:]].mean()
    torch.testing.assert_close(train.lm_loss(lm, ids2, mask2), expected)
    assert short.item() > 0


def test_examples_longer_than_the_context_are_an_error(tmp_path):
    from knnlm_limits import model

    lm = model.build_gpt2(50, 1, 16, 2, n_positions=8)
    ex = from_sequences([list(range(12))])
    with pytest.raises(ValueError, match="12 tokens but the model's context holds 8"):
        train.train(lm, ex, train.TrainSettings(checkpoints=[1]), {1: tmp_path / "s1"}, tmp_path / "w")
