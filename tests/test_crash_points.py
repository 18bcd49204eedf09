"""A kill at any filesystem operation of training's save, resume and publish path.

A crash point is a run killed at its n-th operation, then Snakemake's deletion of the
killed job's outputs. A rerun from there ends with an uninterrupted run's weights, leaves
no work folder or tmp/aside copy, and trains again at most save_every steps.
"""

import filecmp
import io
import itertools
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers

from knnlm_limits import io as kio
from knnlm_limits import train
from tests.test_train import _assert_same_weights, _run, _weights

# States after steps 2, 3, 4 and the final 6: no two saves more than save_every apart.
SETTINGS = train.TrainSettings(checkpoints=[0, 3, 6], batch_size=4, lr=1e-3, save_every=2, seed=3)
OPS = ("replace", "rename", "link", "unlink", "remove", "rmdir")
WRITES = (  # (owner, name, the file a torn write leaves half written)
    (transformers.PreTrainedModel, "save_pretrained", lambda args: Path(args[1]) / "model.safetensors"),
    (torch, "save", lambda args: Path(args[1])),
    (Path, "write_text", lambda args: args[0]),
)


class Killed(BaseException):
    """A SIGKILL: not an Exception, so no `except Exception` of the code under test swallows it."""


class Crash:
    """Counts the filesystem operations while armed and kills the run at the n-th. A write is
    two crash points: before it, and torn (half of its file on disk). Once killed, every
    operation raises again: the cleanup in a `finally`, which a SIGKILL never runs, does nothing."""

    def __init__(self, mp, n: int, armed: bool = True, whole_rmtree: bool = False):
        self.n, self.calls, self.where, self.armed = n, 0, None, armed
        for name in OPS:
            mp.setattr(os, name, self._op(getattr(os, name), name))
        for owner, name, written in WRITES:
            mp.setattr(owner, name, self._write(getattr(owner, name), name, written))
        if whole_rmtree:  # one crash point for a whole rmtree, none inside it
            mp.setattr(shutil, "rmtree", self._whole(shutil.rmtree, "rmtree"))

    def _tick(self, what: str, before_kill=None) -> None:
        if self.where is not None:
            raise Killed(self.where)
        if not self.armed:
            return
        self.calls += 1
        if self.calls == self.n:
            if before_kill:
                before_kill()
            self.where = what
            raise Killed(what)

    def _op(self, original, name):
        def op(*args, **kwargs):
            self._tick(name)
            return original(*args, **kwargs)
        return op

    def _whole(self, original, name):
        def op(*args, **kwargs):
            self._tick(name)
            armed, self.armed = self.armed, False
            try:
                return original(*args, **kwargs)
            finally:
                self.armed = armed
        return op

    def _write(self, original, name, written):
        def tear(args):
            path = written(args)
            os.truncate(path, path.stat().st_size // 2)

        def write(*args, **kwargs):
            self._tick(name)
            out = original(*args, **kwargs)
            self._tick(f"{name} (torn)", lambda: tear(args))
            return out
        return write


@dataclass
class Point:
    n: int  # the operation killed
    where: str
    done: int  # steps trained when killed
    saved: int  # the step of the last state save that had returned
    published: bool  # all outputs were there when killed
    left: Path  # what the kill, then Snakemake, left of the run folder


def _kill_at(root: Path, n: int) -> Point | None:
    """A run killed at operation n, then Snakemake; None if the run has fewer operations."""
    done, saved = [0], [0]
    real_loss, real_save = train.lm_loss, train._save_state

    def counted_loss(*args):
        done[0] += 1  # a step's filesystem operations all come after its optimizer step
        return real_loss(*args)

    def recorded_save(model, optimizer, step, *rest):
        real_save(model, optimizer, step, *rest)
        saved[0] = step

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "lm_loss", counted_loss)
        mp.setattr(train, "_save_state", recorded_save)
        crash = Crash(mp, n)
        try:
            _run(root, SETTINGS, f"kill-{n}")
        except Killed:
            pass
    if crash.where is None:
        return None
    left = root / f"kill-{n}"
    published = all((left / f"step-{k}").is_dir() for k in SETTINGS.checkpoints)
    for k in SETTINGS.checkpoints:  # Snakemake deletes the outputs of a killed job
        shutil.rmtree(left / f"step-{k}", ignore_errors=True)
    return Point(n, crash.where, done[0], saved[0], published, left)


def _copy(point: Point, tmp_path: Path, name: str) -> str:
    shutil.copytree(point.left, tmp_path / name, symlinks=True)
    return name


def _layout(folder: Path) -> tuple:
    return tuple(sorted(str(f.relative_to(folder)) for f in folder.rglob("*")))


def _rerun(tmp_path: Path, name: str, reference: Path, kill_in_resume: int = 0) -> tuple[int | None, int]:
    """Rerun to the end, or kill it at operation `kill_in_resume` of its resume (rmtree: one
    operation); the step it resumed from (None if killed) and how many operations its resume did."""
    log = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        crash, real_resume = Crash(mp, kill_in_resume, armed=False, whole_rmtree=True), train._resume

        def armed_resume(*args):
            crash.armed = True
            try:
                return real_resume(*args)
            finally:
                crash.armed = False

        mp.setattr(train, "_resume", armed_resume)
        try:
            _run(tmp_path, SETTINGS, name, log=log)
        except Killed:
            return None, crash.calls
    run_dir = tmp_path / name
    # no work folder, no tmp or aside copy: just the outputs
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(f"step-{k}" for k in SETTINGS.checkpoints)
    for k in SETTINGS.checkpoints:
        _assert_same_weights(_weights(reference / f"step-{k}"), _weights(run_dir / f"step-{k}"))
        files = sorted(os.listdir(reference / f"step-{k}"))  # config files too
        assert sorted(os.listdir(run_dir / f"step-{k}")) == files
        assert all(filecmp.cmp(reference / f"step-{k}" / f, run_dir / f"step-{k}" / f, shallow=False) for f in files)
    found = re.search(r"resuming from step (\d+)", log.getvalue())
    return int(found.group(1)) if found else 0, crash.calls


def _check_loss(p: Point, resumed: int) -> None:
    context = f"killed at operation {p.n} ({p.where}) after {p.done} steps, resumed from {resumed}"
    if p.published:
        # killed while deleting work_dir, the outputs complete: before its first deletion the
        # rerun only publishes again, after it starts over (see the train.py docstring)
        assert resumed in (0, SETTINGS.total_steps), context
    else:
        assert resumed >= p.saved, context  # a complete state is never lost
        assert p.done - resumed <= SETTINGS.save_every, context


@pytest.fixture
def one_thread():
    """Tiny models: one thread is faster (about 1.5x here), and the same for every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_folder_replace_killed_at_any_operation_is_recovered(tmp_path):
    """io.atomic_path onto an existing folder, killed at each operation: after io.recover the
    folder is the old or the new one, complete, with nothing beside it."""
    old, new = {"a": "old", "b": "old"}, {"a": "new", "b": "new"}
    for n in itertools.count(1):
        folder = tmp_path / str(n) / "out"
        folder.mkdir(parents=True)
        for name, text in old.items():
            (folder / name).write_text(text)
        with pytest.MonkeyPatch.context() as mp:
            crash = Crash(mp, n)
            try:
                with kio.atomic_path(folder) as tmp:
                    tmp.mkdir()
                    for name, text in new.items():
                        (tmp / name).write_text(text)
            except Killed:
                pass
        kio.recover(folder)
        assert os.listdir(folder.parent) == ["out"]
        assert {p.name: p.read_text() for p in folder.iterdir()} in (old, new), crash.where
        if crash.where is None:
            assert {p.name: p.read_text() for p in folder.iterdir()} == new
            break
    assert n >= 10  # 2 writes (before, torn), 2 renames, 3 deletions for the old copy, then none


def test_a_kill_at_any_operation_loses_at_most_save_every_steps(tmp_path, one_thread):
    """Every crash point of a run, from its first operation until a run that is not killed.
    Then, once for each distinct folder a first kill left, a second kill at each operation of
    the rerun's resume (cleaning up, discarding, renaming a copy to state/): a third run
    resumes where the rerun would have. rmtree counts as one operation there; a half-done one
    is among the first kills."""
    reference, started = _run(tmp_path, SETTINGS, "reference"), time.time()
    points, layouts, second = [], set(), 0
    for n in itertools.count(1):
        p = _kill_at(tmp_path, n)
        if p is None:
            break
        points.append(p)
        resumed, ops = _rerun(tmp_path, _copy(p, tmp_path, f"rerun-{n}"), reference)
        _check_loss(p, resumed)
        if _layout(p.left) in layouts:
            continue
        layouts.add(_layout(p.left))
        for m in range(1, ops + 1):
            name = _copy(p, tmp_path, f"rerun-{n}-{m}")
            assert _rerun(tmp_path, name, reference, kill_in_resume=m)[0] is None
            assert _rerun(tmp_path, name, reference)[0] == resumed, f"first kill {n} ({p.where}), second {m}"
            second += 1
    print(f"\n{len(points)} crash points and {second} second kills while resuming in {time.time() - started:.1f} s")
    kinds = {p.where for p in points}
    assert {"rename", "link", "unlink", "rmdir", "save_pretrained (torn)", "write_text (torn)"} <= kinds
    assert any(p.published for p in points) and points[-1].done == SETTINGS.total_steps
