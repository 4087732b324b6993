"""Checkpoint sharing (issue 15, item 15): the checkpoints of one save share one set of files
(hard links), and the optimizer state (``train_state.safetensors``) is kept only where a
resume needs it: ``last`` and ``step-N`` always, ``best`` only while no ``last`` exists."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from gradlab import checkpoint as ckpt

TRAIN_STATE = "train_state.safetensors"


def _save(folder: Path, kinds: list[str], step: int) -> list[Path]:
    """A save whose model and optimizer tensors are told apart by the step."""
    return ckpt.save_step(folder, kinds, model_state={"w": torch.full((64,), float(step))},
                          tensors={"optimizer.0.exp_avg": torch.full((128,), -float(step))},
                          state={"step": step})


def _bytes_on_disk(folder: Path) -> int:
    """The sizes of the files under ``folder``, each inode counted once (as ``du`` does)."""
    seen = {}
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            seen[st.st_dev, st.st_ino] = st.st_size
    return sum(seen.values())


def test_a_best_saved_before_any_last_is_a_whole_resume_point(tmp_path):
    _save(tmp_path, ["best"], 2)
    assert (tmp_path / "best" / TRAIN_STATE).is_file()
    path, (_, tensors, state) = ckpt.latest_checkpoint(tmp_path)
    assert path == tmp_path / "best" and state["step"] == 2
    assert torch.equal(tensors["optimizer.0.exp_avg"], torch.full((128,), -2.0))


def test_a_save_of_last_drops_the_optimizer_state_of_an_older_best(tmp_path):
    _save(tmp_path, ["best"], 2)
    _save(tmp_path, ["step-4", "last"], 4)
    assert not (tmp_path / "best" / TRAIN_STATE).exists()
    # best still serves evaluation: the model and its state.json
    model, tensors, state = ckpt.load_checkpoint(tmp_path / "best", training_state=False)
    assert torch.equal(model["w"], torch.full((64,), 2.0)) and tensors == {}
    assert state["step"] == 2
    assert ckpt.resolve_checkpoint(tmp_path / "best") == tmp_path / "best"
    assert ckpt.latest_checkpoint(tmp_path)[0] == tmp_path / "last"


def test_a_best_saved_after_a_last_holds_the_model_only_and_is_no_resume_point(tmp_path,
                                                                               recwarn):
    _save(tmp_path, ["step-4", "last"], 4)
    _save(tmp_path, ["best"], 6)
    best = tmp_path / "best"
    assert sorted(p.name for p in best.iterdir()) == ["model.safetensors", "state.json"]
    assert torch.equal(ckpt.load_checkpoint(best, training_state=False)[0]["w"],
                       torch.full((64,), 6.0))
    with pytest.raises(ckpt.CheckpointError, match="lacks"):
        ckpt.load_checkpoint(best)
    # the newer best is skipped without a word: resume continues from last (step 4)
    path, (_, _, state) = ckpt.latest_checkpoint(tmp_path)
    assert path == tmp_path / "last" and state["step"] == 4
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_one_save_is_one_set_of_files_and_du_counts_it_once(tmp_path):
    _save(tmp_path, ["best", "step-8", "last"], 8)
    for name in ckpt.FILES:
        assert os.path.samefile(tmp_path / "best" / name, tmp_path / "last" / name)
        assert os.path.samefile(tmp_path / "step-8" / name, tmp_path / "last" / name)
    one = _bytes_on_disk(tmp_path / "last")
    assert _bytes_on_disk(tmp_path) == one
    du = subprocess.run(["du", "-s", "-B1", str(tmp_path)], capture_output=True, text=True,
                        check=True)
    # du counts each linked file once: three folders take about the room of one
    assert int(du.stdout.split()[0]) < 2 * (one + 3 * 4096) + 3 * 4096


def test_rotation_keeps_the_other_names_of_linked_files(tmp_path):
    _save(tmp_path, ["step-4", "last"], 4)
    _save(tmp_path, ["step-8", "last"], 8)
    removed = ckpt.rotate_checkpoints(tmp_path, 0, 8)  # every step-N goes, last shares step-8's
    assert sorted(p.name for p in removed) == ["step-4", "step-8"]
    model, tensors, state = ckpt.load_checkpoint(tmp_path / "last")
    assert state["step"] == 8 and torch.equal(model["w"], torch.full((64,), 8.0))
    assert torch.equal(tensors["optimizer.0.exp_avg"], torch.full((128,), -8.0))
    assert all(os.stat(tmp_path / "last" / name).st_nlink == 1 for name in ckpt.FILES)


class Crash(Exception):
    pass


def test_a_kill_after_dropping_best_state_is_rolled_forward(tmp_path, monkeypatch):
    _save(tmp_path, ["best"], 2)

    def write_point(what: str) -> None:
        if what.startswith("removed") and what.endswith(TRAIN_STATE):
            raise Crash  # killed right after best's optimizer state was dropped

    monkeypatch.setattr(ckpt, "write_point", write_point)
    with pytest.raises(Crash):
        _save(tmp_path, ["step-4", "last"], 4)
    monkeypatch.undo()
    assert (tmp_path / ".commit.json").is_file()  # committed, not yet cleaned up
    ckpt.recover_checkpoints(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "last", "step-4"]
    assert not (tmp_path / "best" / TRAIN_STATE).exists()
    assert ckpt.latest_checkpoint(tmp_path)[0] == tmp_path / "last"
