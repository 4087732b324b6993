"""A checkpoint's whole training state is checked against its schema on load.

A crafted or corrupt ``last`` (nesting, huge integers, RNG words past 32 bits, an lr of 1e300,
a 0-dim Adam moment, ``saves=[1, 2]``, lost moments) falls back to the older readable
checkpoint, as a truncated one does; model tensors of another dtype or optimizer
hyperparameters of another optimizer are refused, naming the file and the tensor or key.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file

import gradlab
from gradlab import checkpoint as ckpt
from gradlab import resume as resume_state
from gradlab.checkpoint import CheckpointError
from gradlab.checkpoint_schema import bounds_problems, check_training_state, state_problems
from gradlab.cli import main
from gradlab.config import load_config


class Crash(Exception):
    """Stands in for a crash in the middle of a run."""


def config(runs_dir: Path, name: str, **changes) -> dict:
    return tiny_config(runs_dir, **{
        "name": name, "runs_dir": str(runs_dir), "train_limit": 48, "dev_limit": 16,
        "max_length": 24, "steps": 10, "eval_every": 3, "eval_batch_size": 16,
        "checkpoint_every": 2, "keep_checkpoints": 2, "method": "pcgrad", **changes})


def _crash_after(step: int):
    def hook(done: int, model) -> None:
        if done == step:
            raise Crash(f"crash after step {step}")
    return hook


@pytest.fixture(scope="module")
def crashed(tmp_path_factory) -> Path:
    """A run crashed after step 7: last = step-6 (and step-4, step-6, best kept)."""
    runs = tmp_path_factory.mktemp("crashed")
    with warnings.catch_warnings(), pytest.raises(Crash):
        warnings.simplefilter("ignore", UserWarning)
        gradlab.train(None, _after_step=_crash_after(7), **config(runs, "run"))
    return runs / "run"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("reference")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return gradlab.train(None, **config(runs, "reference")).path


def copy_run(crashed: Path, tmp_path: Path) -> Path:
    """A copy of the crashed run (files copied, so editing last leaves step-6 intact)."""
    run = tmp_path / "run"
    shutil.copytree(crashed, run, ignore=shutil.ignore_patterns(".lock"))
    return run


def edit_state(last: Path, change) -> None:
    state = json.loads((last / "state.json").read_text(encoding="utf-8"))
    change(state)
    (last / "state.json").write_text(json.dumps(state), encoding="utf-8")


def edit_text(last: Path, change) -> None:
    text = (last / "state.json").read_text(encoding="utf-8")
    (last / "state.json").write_text(change(text), encoding="utf-8")


def edit_tensors(last: Path, file: str, change) -> None:
    tensors = load_file(str(last / file))
    change(tensors)
    save_file(tensors, str(last / file))


def _deep(text: str, depth: int = 100_000) -> str:
    return text.rstrip().removesuffix("}") + ', "extra": ' + "[" * depth + "]" * depth + "}"


def _set(path: list, value):
    def change(state: dict) -> None:
        target = state
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _drop(names):
    def change(tensors: dict) -> None:
        for name in [n for n in tensors if names(n)]:
            del tensors[name]
    return change


# each: how last is crafted, and what the warning names
CORRUPT = {
    "deeply nested JSON (RecursionError)": (
        lambda last: edit_text(last, _deep), r"state\.json is corrupt \(JSON nested too deeply"),
    "nesting under the recursion limit": (
        lambda last: edit_state(last, _set(["metrics", "sst"], json.loads(
            "[" * 300 + "]" * 300))), r"state\.json is corrupt: .*nested deeper than 32"),
    "a 5000-digit integer": (
        lambda last: edit_text(last, lambda t: t.replace('"step": 6', '"step": ' + "7" * 5000)),
        r"state\.json is corrupt \(Exceeds the limit"),
    "a Python RNG word of 2**80 (OverflowError)": (
        lambda last: edit_state(last, _set(["rng", "python", 1, 0], 2**80)),
        r"state\.json is corrupt: .*outside int64"),
    "a Python RNG word past 32 bits": (
        lambda last: edit_state(last, _set(["rng", "python", 1, 5], 2**40)),
        r"state\.json is corrupt: rng\.python="),
    "a param-group lr of 1e300": (
        lambda last: edit_state(last, _set(["optimizer", "param_groups", 0, "lr"], 1e300)),
        r"state\.json is corrupt: optimizer\.param_groups\[0\]\.lr=1e\+300 must be a finite "
        r"number >= 0 and at most initial_lr"),
    "saves=[1, 2]": (
        lambda last: edit_state(last, _set(["saves"], [1, 2])),
        r"state\.json is corrupt: saves=\[1, 2\] must list distinct checkpoint names"),
    "skipped_steps past the step": (
        lambda last: edit_state(last, _set(["skipped_steps"], 9)),
        r"skipped_steps=9 must be an integer in 0\.\.6"),
    "a 0-dim exp_avg": (
        lambda last: edit_tensors(last, "train_state.safetensors",
                                  _set(["optim.0.exp_avg"], torch.tensor(0.5))),
        r"train_state\.safetensors is corrupt: optim\.0\.exp_avg is float32 \[\], expected "
        r"a floating tensor of shape \[\d+, 32\]"),
    "all optimizer moments missing": (
        lambda last: edit_tensors(last, "train_state.safetensors",
                                  _drop(lambda n: n.startswith("optim."))),
        r"train_state\.safetensors is corrupt: the optimizer moments of \d+ parameter\(s\) are "
        r"missing .*Adam would silently start again"),
    "one moment missing": (
        lambda last: edit_tensors(last, "train_state.safetensors",
                                  _drop(lambda n: n == "optim.3.exp_avg_sq")),
        r"optim\.3: missing \['exp_avg_sq'\]: Adam would silently start again"),
    "a negative second moment": (
        lambda last: edit_tensors(last, "train_state.safetensors", lambda t: t[
            "optim.2.exp_avg_sq"].neg_()),
        r"optim\.2\.exp_avg_sq holds non-finite or negative values"),
    "a NaN model parameter": (
        lambda last: edit_tensors(last, "model.safetensors", lambda t: t[
            "heads.sts.weight" if "heads.sts.weight" in t else sorted(t)[-1]].fill_(
                float("nan"))),
        r"model\.safetensors is corrupt: tensor '.*' holds NaN"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
def test_a_malformed_last_falls_back_to_the_older_checkpoint(crashed, tmp_path, case):
    run = copy_run(crashed, tmp_path)
    craft, message = CORRUPT[case]
    craft(run / "checkpoints" / "last")
    cfg = load_config(None, config(tmp_path, "run"))
    with pytest.warns(RuntimeWarning, match=r"skipping unreadable checkpoint") as caught:
        point = resume_state.find_resume_point(run, cfg)
    assert point.path.name == "step-6"
    text = " ".join(str(w.message) for w in caught)
    assert str(run / "checkpoints" / "last") in text
    assert __import__("re").search(message, text), text


def test_a_resume_from_a_crafted_last_ends_as_the_uninterrupted_run(crashed, reference,
                                                                     tmp_path):
    from test_resume import assert_same_run

    run = copy_run(crashed, tmp_path)
    # before: OverflowError from random.setstate, a traceback at the start of the resume
    edit_state(run / "checkpoints" / "last", _set(["rng", "python", 1, 0], 2**80))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.warns(RuntimeWarning, match="skipping unreadable checkpoint"):
            handle = gradlab.train(None, resume=True, **config(tmp_path, "run"))
    assert_same_run(handle.path, reference)


def test_no_well_formed_checkpoint_names_every_file(crashed, tmp_path):
    run = copy_run(crashed, tmp_path)
    folder = run / "checkpoints"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["best", "last", "step-4", "step-6"]
    for name in names:
        edit_state(folder / name, _set(["saves"], [1, 2]))
    with pytest.raises(CheckpointError, match="no readable checkpoint to resume from") as err:
        resume_state.find_resume_point(run, load_config(None, config(tmp_path, "run")))
    # a weights-only best (saved once a last existed) is no resume point, so not named
    candidates = [n for n in names
                  if n != "best" or (folder / n / "train_state.safetensors").exists()]
    assert all(str(folder / name / "state.json") in str(err.value) for name in candidates)


# --- refused: the checkpoint does not fit the run's model or optimizer ---------------------


def _to(dtype):
    def change(tensors: dict) -> None:
        name = "encoder.embeddings.word_embeddings.weight"
        tensors[name] = tensors[name].to(dtype)
    return change


REFUSED = {
    "an fp16 model tensor": (
        lambda last: edit_tensors(last, "model.safetensors", _to(torch.float16)),
        r"model\.safetensors does not fit the model \(nothing is cast or reshaped\): tensor "
        r"'encoder\.embeddings\.word_embeddings\.weight' is float16 \[\d+, 32\], the model's "
        r"float32"),
    "an int64 model tensor": (
        lambda last: edit_tensors(last, "model.safetensors", _to(torch.int64)),
        r"tensor 'encoder\.embeddings\.word_embeddings\.weight' is int64 .*, the model's "
        r"float32"),
    "another optimizer's eps": (
        lambda last: edit_state(last, _set(["optimizer", "param_groups", 1, "eps"], 1e-3)),
        r"its optimizer state does not fit the run's optimizer: param_groups\[1\]\.eps=0\.001, "
        r"the optimizer's 1e-08"),
    "another optimizer's parameters": (
        lambda last: edit_state(last, _set(["optimizer", "param_names", 0], "pooler.weight")),
        r"optimizer\.param_names differ from the optimizer's parameters \(first at index 0: "
        r"\['pooler\.weight'\], the optimizer's \['encoder\.embeddings"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_model_or_optimizer_that_does_not_fit_is_refused_naming_the_tensor(
        crashed, tmp_path, case, capsys):
    run = copy_run(crashed, tmp_path)
    craft, message = REFUSED[case]
    craft(run / "checkpoints" / "last")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main(["train", "--resume", str(run), "progress=false"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradlab train: error: cannot resume "
                                                   f"from {run / 'checkpoints' / 'last'}")
    assert __import__("re").search(message, lines[0]), lines[0]


# --- the schema itself -----------------------------------------------------------------------


def test_every_checkpoint_a_run_writes_is_well_formed(crashed):
    for folder in (crashed / "checkpoints").iterdir():
        if not (folder / "train_state.safetensors").exists():
            assert folder.name == "best"  # weights only once a last exists (sharing)
            ckpt.load_checkpoint(folder, training_state=False)
            continue
        check_training_state(folder, *ckpt.load_checkpoint(folder))


def test_bounds_are_found_without_recursion():
    nested: list = []
    for _ in range(100_000):  # a structure a recursive walk could not visit
        nested = [nested]
    (problem,) = bounds_problems({"a": nested})
    assert problem == "state.json.a[0][0][0][0][0]: nested deeper than 32 levels"
    assert bounds_problems({"a": [1, {"b": -(2**63) - 1}]}) == [
        "state.json.a[1].b: an integer of 64 bits (outside int64)"]
    assert bounds_problems({"a": [1, {"b": 2**63 - 1}], "c": True, "d": 1e300}) == []


def test_state_problems_list_every_missing_part():
    assert state_problems({"step": True}) == [
        f"{key}: missing" for key in ("config", "optimizer", "scheduler", "methods",
                                      "batchers", "rng")] + [
        "step=True must be an integer in 0..2147483647"]
