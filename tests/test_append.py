"""Training longer: a checkpoint appended to a run plans only the new steps and what reads
them; earlier checkpoints and everything computed from them stay as they are, and the new
checkpoint is the one an uninterrupted run would have written."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from knnlm_limits import train
from knnlm_limits.config import previous_checkpoint
from tests.support import ROOT, planned_jobs, snakemake
from tests.test_recompute import CHANGES

TINY = yaml.safe_load((ROOT / ".tests/config.yaml").read_text())
# what running the workflow rewrites whatever changed: its own bookkeeping
BOOKKEEPING = ("logs/", "benchmarks/")


def config_file(tmp_path: Path, results: Path, **sections) -> Path:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    config["results"] = str(results)
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def with_checkpoints(section: str, steps: list[int]) -> dict:
    return {section: {"train": {**TINY[section]["train"], "checkpoints": steps}}}


def snapshot(results: Path) -> dict[str, tuple[int, str]]:
    """(modification time, content hash) of every file a run wrote, bookkeeping aside."""
    out = {}
    for f in sorted(results.rglob("*")):
        rel = f.relative_to(results).as_posix()
        if f.is_file() and not rel.startswith(BOOKKEEPING):
            out[rel] = (f.stat().st_mtime_ns, hashlib.blake2b(f.read_bytes(), digest_size=16).hexdigest())
    return out


@pytest.fixture
def finished(tiny_runs, tmp_path):
    """A copy of a finished tiny DAG (modification times kept), free to extend."""
    results = tmp_path / "results"
    shutil.copytree(tiny_runs[0], results, symlinks=True)
    return results


def test_previous_checkpoint_is_the_one_before_in_the_list():
    assert previous_checkpoint([300, 150], 300, "k") == 150
    assert previous_checkpoint([150, 300], 150, "k") is None
    assert previous_checkpoint([0, 25, 50], 25, "k") == 0
    with pytest.raises(ValueError, match="corpus_lm.train.checkpoints"):
        previous_checkpoint([150], 75, "corpus_lm.train.checkpoints")


# Appending step 40 to the corpus LM's [20]: its training from step 20, its kNN-LM point, and
# Figures 2 and 3, whose base model is the corpus LM's last checkpoint (now step 40)
CORPUS_APPEND = {**next(e for label, _, e in CHANGES if label.startswith("a checkpoint appended to `corpus_lm")),
                 "all": 1}
# what the run may rewrite: the new point's files, Figures 2 and 3 (their base moved to
# step 40) and the tables over every point
MOVES_WITH_THE_BASE = ("models/overspecification/", "children/overspecification/", "figure2/", "models/chat/",
                       "figure3/", "findings", "perplexity_by_key")


def test_appending_a_corpus_checkpoint_continues_from_the_last_and_leaves_it_alone(finished, tmp_path):
    config = config_file(tmp_path, finished, **with_checkpoints("corpus_lm", [20, 40]))
    assert planned_jobs(snakemake("-n", "--configfile", str(config)).stdout) == CORPUS_APPEND
    before = snapshot(finished)
    snakemake("--cores", "2", "--configfile", str(config))
    after = snapshot(finished)

    changed = {rel for rel in before if after[rel] != before[rel]}
    assert changed and all(rel.startswith(MOVES_WITH_THE_BASE) for rel in changed), sorted(changed)
    step20 = [rel for rel in before if "/step-20/" in rel or rel.startswith("models/corpus_lm/tiny/step-20")]
    assert step20 and not changed & set(step20)  # the step-20 point: not a byte, not a timestamp
    new = [rel for rel in after if rel not in before]
    assert "models/corpus_lm/tiny/step-40/model.safetensors" in new
    assert "table1/corpus_lm/tiny/step-40/mlp_input/table1.csv" in new
    log = (finished / "logs/train/corpus_lm/tiny/step-40.log").read_text()
    assert "train:  50%" in log  # the job started at step 20 of 40, not at 0

    # an uninterrupted run to step 40 from the same data, as its own workflow
    alone = tmp_path / "alone"
    shutil.copytree(finished / "data", alone / "data")
    target = alone / "models/corpus_lm/tiny/step-40"
    snakemake(str(target), "--cores", "1", "--configfile",
              str(config_file(tmp_path, alone, **with_checkpoints("corpus_lm", [40]))))
    assert (alone / "logs/train/corpus_lm/tiny/step-40.log").read_text().count("train:   0%") == 1
    appended, uninterrupted = (load_file(d / "model.safetensors") for d in (finished / target.relative_to(alone), target))
    assert appended.keys() == uninterrupted.keys()
    assert all(torch.equal(appended[k], uninterrupted[k]) for k in appended)  # bitwise, on a CPU


def test_continuing_needs_the_checkpoints_optimizer_state_of_its_step(tmp_path):
    from tests.test_train import _run

    settings = train.TrainSettings(checkpoints=[3], batch_size=2, lr=1e-3, keep_optimizer=True)
    out = _run(tmp_path, settings) / "step-3"
    _, start = train.continued(out, 3, device="cpu")
    assert start.step == 3 and all(int(v["step"]) == 3 for v in start.optimizer["state"].values())
    with pytest.raises(ValueError, match="taken \\[3\\] steps, not 5"):
        train.continued(out, 5, device="cpu")
    (Path(out) / train.OPTIMIZER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="no optimizer state"):
        train.continued(out, 3, device="cpu")
