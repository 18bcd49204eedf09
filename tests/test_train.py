"""Training: resumable, fingerprinted, float32 master weights, loss on the scored tokens only."""

import json
import os
import shutil
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

from knnlm_limits import model, train
from knnlm_limits.tokens import from_sequences, pad_batch, scored_mask
from tests.support import ROOT

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
    lm = model.build_model(300, 2, 64, 4, 32, dropout=0.1, seed=5)
    s = train.TrainSettings(checkpoints=%r, batch_size=8, lr=3e-3, warmup_steps=10, seed=5)
    dirs = {k: f"{out}/step-{k}" for k in s.checkpoints}
    train.train(lm, examples, s, dirs, f"{out}/.work", log=sys.stderr)
    """
    % STEPS
)


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-c", RUN, str(out)], stderr=subprocess.PIPE, text=True, env=env)


def _weights(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _start(reference).wait(timeout=300) == 0

    proc = _start(killed)
    deadline = time.time() + 120
    # once step-75's weights exist, the state of step 50 is complete on disk
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
    _assert_same_weights(_weights(reference / "step-150"), _weights(killed / "step-150"))
    for s in STEPS:
        assert (killed / f"step-{s}" / "model.safetensors").is_file()


# ---------------------------------------------------------------- in-process runs

EXAMPLES = from_sequences(np.random.default_rng(1).integers(0, 120, size=(40, 16)))


def _fresh(seed=7):
    return model.build_model(120, 2, 32, 2, 32, seed=seed)


def _run(tmp_path, settings, name="run", lm=None, log=None):
    out = {k: tmp_path / name / f"step-{k}" for k in settings.checkpoints}
    train.train(lm or _fresh(), EXAMPLES, settings, out, tmp_path / name / ".work", log=log)
    return tmp_path / name


class Killed(Exception):
    pass


def _die_on_call(monkeypatch, target, name, on_call):
    """Make `target.name` raise Killed on its `on_call`-th call, as a SIGKILL would stop it."""
    original, calls = getattr(target, name), {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == on_call:
            raise Killed(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapper)


def test_a_job_killed_while_publishing_finishes_on_rerun(tmp_path, monkeypatch, capsys):
    s = train.TrainSettings(checkpoints=[0, 4, 8], batch_size=4, lr=1e-3, seed=1)
    reference = _run(tmp_path, s, "reference")
    _die_on_call(monkeypatch, train, "_link_tree", 2)  # killed between publishing step 0 and step 4
    with pytest.raises(Killed):
        _run(tmp_path, s, "killed")
    monkeypatch.undo()
    # Snakemake deletes the outputs of a killed job before it reruns it
    for k in s.checkpoints:
        subprocess.run(["rm", "-rf", str(tmp_path / "killed" / f"step-{k}")], check=True)
    _run(tmp_path, s, "killed", log=sys.stdout)
    assert "resuming from step 8" in capsys.readouterr().out  # nothing retrained
    for k in s.checkpoints:
        _assert_same_weights(_weights(reference / f"step-{k}"), _weights(tmp_path / "killed" / f"step-{k}"))
    assert not (tmp_path / "killed" / ".work").exists()


def test_state_of_another_run_is_discarded_not_continued(tmp_path, monkeypatch, capsys):
    s = train.TrainSettings(checkpoints=[4, 8], batch_size=4, lr=1e-3, seed=1)
    _die_on_call(monkeypatch, train, "_link_tree", 1)  # leaves a finished state behind
    with pytest.raises(Killed):
        _run(tmp_path, s, "work")
    monkeypatch.undo()
    assert json.loads((tmp_path / "work" / ".work" / "state" / "meta.json").read_text())["step"] == 8

    changed = train.TrainSettings(checkpoints=[4, 8], batch_size=4, lr=3e-3, seed=1)  # another lr
    _run(tmp_path, changed, "work", log=sys.stdout)
    out = capsys.readouterr().out
    assert out.count("discarding") == 1 and "another run's state" in out and "resuming" not in out
    reference = _run(tmp_path, changed, "reference")
    _assert_same_weights(_weights(reference / "step-8"), _weights(tmp_path / "work" / "step-8"))


def test_other_examples_or_initial_weights_change_the_fingerprint():
    s = train.TrainSettings(checkpoints=[4])
    base = train.fingerprint(_fresh(), EXAMPLES, s)
    assert base == train.fingerprint(_fresh(), EXAMPLES, s)
    assert base != train.fingerprint(_fresh(seed=8), EXAMPLES, s)
    other = from_sequences(np.random.default_rng(2).integers(0, 120, size=(40, 16)))
    assert base != train.fingerprint(_fresh(), other, s)
    assert base == train.fingerprint(_fresh(), EXAMPLES, train.TrainSettings(checkpoints=[4], save_every=2))


def test_state_is_saved_every_save_every_steps(tmp_path, monkeypatch, capsys):
    s = train.TrainSettings(checkpoints=[10], batch_size=4, lr=1e-3, save_every=3, seed=2)
    reference = _run(tmp_path, s, "reference")
    _die_on_call(monkeypatch, train, "lm_loss", 9)  # killed during step 8 (0-based)
    with pytest.raises(Killed):
        _run(tmp_path, s, "killed")
    monkeypatch.undo()
    assert json.loads((tmp_path / "killed" / ".work" / "state" / "meta.json").read_text())["step"] == 6
    _run(tmp_path, s, "killed", log=sys.stdout)
    assert "resuming from step 6" in capsys.readouterr().out
    _assert_same_weights(_weights(reference / "step-10"), _weights(tmp_path / "killed" / "step-10"))


def _killed_after_the_state_of_step_6(tmp_path, monkeypatch, s):
    _die_on_call(monkeypatch, train, "lm_loss", 9)  # killed during step 8 (0-based)
    with pytest.raises(Killed):
        _run(tmp_path, s, "killed")
    monkeypatch.undo()
    return tmp_path / "killed" / ".work" / "state"


def _tear(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


DAMAGE = {  # what a kill in the middle of the old rmtree of state/, or a torn write, leaves
    "model.safetensors missing": lambda state: (state / "model.safetensors").unlink(),
    "optimizer.pt missing": lambda state: (state / "optimizer.pt").unlink(),
    "model.safetensors torn": lambda state: _tear(state / "model.safetensors"),
    "optimizer.pt torn": lambda state: _tear(state / "optimizer.pt"),
    "meta.json torn": lambda state: _tear(state / "meta.json"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_an_incomplete_state_is_discarded_not_a_crash(tmp_path, monkeypatch, capsys, damage):
    s = train.TrainSettings(checkpoints=[10], batch_size=4, lr=1e-3, save_every=3, seed=2)
    reference = _run(tmp_path, s, "reference")
    DAMAGE[damage](_killed_after_the_state_of_step_6(tmp_path, monkeypatch, s))
    _run(tmp_path, s, "killed", log=sys.stdout)
    out = capsys.readouterr().out
    assert out.count("discarding") == 1 and "incomplete state" in out and "resuming" not in out
    _assert_same_weights(_weights(reference / "step-10"), _weights(tmp_path / "killed" / "step-10"))
    assert sorted(os.listdir(tmp_path / "killed")) == ["step-10"]


def test_an_incomplete_state_falls_back_to_a_good_copy_put_aside(tmp_path, monkeypatch, capsys):
    s = train.TrainSettings(checkpoints=[10], batch_size=4, lr=1e-3, save_every=3, seed=2)
    reference = _run(tmp_path, s, "reference")
    state = _killed_after_the_state_of_step_6(tmp_path, monkeypatch, s)
    shutil.copytree(state, state.with_name(".state.old-1"))  # the good state of step 6, put aside
    meta = json.loads((state / "meta.json").read_text())
    (state / "meta.json").write_text(json.dumps({**meta, "step": 9}))  # a newer state/, half deleted
    (state / "optimizer.pt").unlink()
    _run(tmp_path, s, "killed", log=sys.stdout)
    out = capsys.readouterr().out
    assert out.count("incomplete state") == 1 and "resuming from step 6" in out
    _assert_same_weights(_weights(reference / "step-10"), _weights(tmp_path / "killed" / "step-10"))
    assert sorted(os.listdir(tmp_path / "killed")) == ["step-10"]


def test_bf16_weights_are_trained_in_float32(tmp_path):
    """AdamW at lr 1e-5 on bf16 weights loses the updates to rounding; float32 master weights keep them."""
    lm = _fresh().to(torch.bfloat16)
    start = {k: v.float().clone() for k, v in lm.state_dict().items()}
    s = train.TrainSettings(checkpoints=[5], batch_size=4, lr=1e-5, seed=0)
    _run(tmp_path, s, "bf16", lm=lm)
    after = _weights(tmp_path / "bf16" / "step-5")
    assert all(t.dtype == torch.float32 for t in after.values())
    matrix = "transformer.h.0.mlp.c_fc.weight"
    changed = (after[matrix] != start[matrix]).float().mean().item()
    assert changed > 0.9, f"only {changed:.0%} of the weights moved"


def test_loss_is_on_scored_targets_only():
    """Padding is never a target, and a chat turn's prompt is not trained on."""
    lm = _fresh().eval()
    ex = from_sequences([[1, 2, 3, 4, 5, 6], [7, 8, 9]], score_start=[3, 1])
    ids, _ = pad_batch(ex, [0, 1])
    scored = scored_mask(ex, [0, 1], ids.size(1))
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=ids).logits[:, :-1], -1)
        nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        # targets: positions 3..5 of the first example (4, 5, 6 predicted), 1..2 of the second
        expected = torch.cat([nll[0, 2:5], nll[1, 0:2]]).mean()
        torch.testing.assert_close(train.lm_loss(lm, ids, scored), expected)


def _reference_loss(lm, ids, scored):
    """cross_entropy over the model's full logits: the plain definition of lm_loss."""
    logits = lm(input_ids=ids).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(~scored, -100)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def _loss_and_grads(lm, loss_fn, ids, scored):
    lm.zero_grad(set_to_none=True)
    loss = loss_fn(lm, ids, scored)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
@pytest.mark.parametrize("untied", [False, True])
def test_chunked_head_loss_matches_full_logits(monkeypatch, architecture, untied):
    """Loss and every gradient equal cross_entropy over the full logits, over several chunks."""
    lm = model.build_model(97, 2, 32, 4, 16, architecture=architecture, tie_word_embeddings=not untied, seed=1)
    assert model.head_split(lm) is not None  # the chunked path is the one under test
    ex = from_sequences([[5, 6, 7, 8, 9, 10, 11, 12], [3, 4, 5], [90, 80, 70, 60, 50, 40]], score_start=[2, 1, 0])
    ids, _ = pad_batch(ex, [0, 1, 2])
    scored = scored_mask(ex, [0, 1, 2], ids.size(1))
    monkeypatch.setattr(train, "HEAD_CHUNK_CPU", 97 * 4)  # 4 rows a chunk: 11 scored targets, 3 chunks
    loss, grads = _loss_and_grads(lm, train.lm_loss, ids, scored)
    expected, expected_grads = _loss_and_grads(lm, _reference_loss, ids, scored)
    torch.testing.assert_close(loss, expected)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_head_loss_under_bf16_autocast():
    """The GPU path's dtypes (bf16 products, float32 weights) on the CPU: gradients keep the weights' dtype."""
    lm = model.build_model(97, 2, 32, 4, 16, seed=1)
    ids = torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(0))
    scored = torch.ones(3, 11, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = _loss_and_grads(lm, train.lm_loss, ids, scored)
    expected, expected_grads = _loss_and_grads(lm, _reference_loss, ids, scored)
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=0)
    head = "transformer.wte.weight"
    assert grads[head].dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(grads[head].flatten(), expected_grads[head].flatten(), dim=0)
    assert cosine > 0.99


def test_models_of_other_families_train_on_full_logits():
    """A causal LM outside the known families (GPT-NeoX) falls back to its own logits."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=16)
    lm = GPTNeoXForCausalLM(config)
    assert model.head_split(lm) is None
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    scored = torch.ones(2, 9, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(train.lm_loss(lm, ids, scored), _reference_loss(lm, ids, scored))


def test_batches_are_a_function_of_seed_and_step():
    s = train.TrainSettings(checkpoints=[10], batch_size=7, seed=3)
    a = [train.batch_indices(k, 20, s) for k in range(10)]
    b = [train.batch_indices(k, 20, s) for k in range(10)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    first_epoch = np.concatenate([train.batch_indices(k, 21, train.TrainSettings([3], batch_size=7)) for k in range(3)])
    assert sorted(first_epoch.tolist()) == list(range(21))


def test_warmup_then_constant_lr():
    s = train.TrainSettings(checkpoints=[10], lr=1.0, warmup_steps=4)
    assert [train.lr_at(k, s) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_examples_longer_than_the_context_are_an_error(tmp_path):
    lm = model.build_model(50, 1, 16, 2, n_positions=8)
    ex = from_sequences([list(range(12))])
    with pytest.raises(ValueError, match="12 tokens but the model's context holds 8"):
        train.train(lm, ex, train.TrainSettings(checkpoints=[1]), {1: tmp_path / "s1"}, tmp_path / "w")


def test_atomic_writes_to_a_device_leave_it_a_device(tmp_path):
    """`--csv /dev/null` and the like: the device is written, never renamed over."""
    import stat

    from knnlm_limits import io

    io.write_text("/dev/null", "nothing\n")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
