"""The training loop end to end on a tiny random BERT, through Python and the real CLI."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch

import gradlab
from gradlab.cli import main
from gradlab.config import ConfigError


def _cli_overrides(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        out.append(f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}")
    return out


@pytest.mark.parametrize("schedule,method", [("joint", "sum"), ("joint", "pcgrad"),
                                             ("round_robin", "sum"), ("sequential", "sum")])
def test_cli_train_each_schedule_then_evaluate_and_predict(tmp_path, tiny_overrides, schedule,
                                                           method, capsys):
    overrides = {**tiny_overrides, "name": f"{schedule}-{method}", "schedule": schedule,
                 "method": method}
    assert main(["train", *_cli_overrides(overrides)]) == 0
    run_dir = tmp_path / "runs" / f"{schedule}-{method}"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "run.sqlite").is_file()
    for kind in ("best", "last"):
        ckpt = run_dir / "checkpoints" / kind
        assert {p.name for p in ckpt.iterdir()} == {"model.safetensors",
                                                    "train_state.safetensors", "state.json"}
    run = gradlab.load_run(run_dir)
    assert run.status == "finished" and run.schedule == schedule
    losses = run.losses()
    assert sorted(losses["step"].unique()) == list(range(6))
    probes = run.cosines(source="probe")
    assert sorted(probes["step"].unique()) == [0, 2, 4, 6]
    if schedule == "joint":
        assert sorted(run.cosines(source="train")["step"].unique()) == list(range(6))
    if schedule == "round_robin":  # one task per step, cycling in task order
        order = losses.sort_values("step")["task"].tolist()
        assert order == ["sst", "para", "sts", "sst", "para", "sts"]
    if schedule == "sequential":
        assert losses.sort_values("step")["task"].tolist() == ["sst"] * 2 + ["para"] * 2 + \
            ["sts"] * 2
    if (schedule, method) != ("joint", "sum"):
        return  # reading a checkpoint back does not depend on how it was trained
    # the saved metrics equal what `evaluate` computes from the reloaded checkpoint
    capsys.readouterr()
    assert main(["evaluate", str(run_dir / "checkpoints" / "last"), "progress=false"]) == 0
    reloaded = json.loads(capsys.readouterr().out)
    saved = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for task in ("sst", "para", "sts"):
        for metric, value in saved[task].items():
            assert reloaded[task][metric] == pytest.approx(value, abs=1e-6)
    out = tmp_path / "pred.tsv"
    dev = gradlab.data.resolve_data_dir() / "sts-dev.csv"
    assert main(["predict", str(run_dir), "--task", "sts", "--input", str(dev),
                 "--out", str(out), "progress=false"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id\tPredicted_Similarity" and len(lines) == 864
    # a test file: the dev file without labels
    unlabelled = tmp_path / "sts-test.csv"
    unlabelled.write_text("".join(line.rsplit("\t", 1)[0] + "\n" for line in
                                  dev.read_text(encoding="utf-8").splitlines()),
                          encoding="utf-8")
    out_test = tmp_path / "pred-test.tsv"
    assert main(["predict", str(run_dir), "--task", "sts", "--input", str(unlabelled),
                 "--out", str(out_test), "progress=false"]) == 0
    assert out_test.read_text() == out.read_text()


def test_training_is_deterministic_for_a_seed(tmp_path, tiny_overrides):
    a = gradlab.train(None, **{**tiny_overrides, "name": "a", "method": "pcgrad", "steps": 3})
    b = gradlab.train(None, **{**tiny_overrides, "name": "b", "method": "pcgrad", "steps": 3})
    ra, rb = a.load(), b.load()
    pd_a, pd_b = ra.losses()["value"].to_numpy(), rb.losses()["value"].to_numpy()
    np.testing.assert_array_equal(pd_a, pd_b)
    from safetensors.torch import load_file
    sa = load_file(str(a.path / "checkpoints/last/model.safetensors"))
    sb = load_file(str(b.path / "checkpoints/last/model.safetensors"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_train_gramian_in_store_matches_brute_force(tmp_path, tiny_overrides):
    handle = gradlab.train(None, **{**tiny_overrides, "name": "g", "steps": 1,
                                    "probe_every": 0})
    run = handle.load()
    tasks, whole = run.gramian(0, source="train", block="encoder")
    blocks = sum(run.gramian(0, source="train", block=b)[1] for b in run.blocks)
    np.testing.assert_allclose(blocks, whole, rtol=1e-12)
    assert tasks == ["sst", "para", "sts"] and np.all(np.diag(whole) > 0)


def test_unknown_keys_refused_by_cli(tmp_path, capsys):
    assert main(["train", "stepz=3", "methd=sum"]) == 2
    err = capsys.readouterr().err
    assert "'stepz'" in err and "'methd'" in err and "valid keys" in err
    with pytest.raises(ConfigError):
        gradlab.train(None, bogus=1)


def test_store_is_sqlite_wal(tmp_path, tiny_overrides):
    handle = gradlab.train(None, **{**tiny_overrides, "name": "w", "steps": 1,
                                    "save_checkpoints": False})
    con = sqlite3.connect(handle.path / "run.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("schedule", ["joint", "round_robin", "sequential"])
def test_per_task_step_budget_gives_every_schedule_the_same_batches(tmp_path, tiny_overrides,
                                                                     schedule):
    """step_budget=per_task: `steps` batches of each task, whatever the schedule."""
    steps = tiny_overrides["steps"]
    handle = gradlab.train(None, **{**tiny_overrides, "name": schedule, "schedule": schedule,
                                    "step_budget": "per_task"})
    losses = handle.load().losses()
    per_task = losses.groupby("task")["step"].nunique().to_dict()
    assert per_task == {"sst": steps, "para": steps, "sts": steps}
    total = steps * (1 if schedule == "joint" else 3)
    assert handle.config.optimizer_steps == total
    assert sorted(losses["step"].unique()) == list(range(total))
    with pytest.raises(ConfigError, match="step_budget='examples' is not one of"):
        gradlab.train(None, **{**tiny_overrides, "step_budget": "examples"})


# -- run names, overwrite, runs without gradient data ----------------------------------------------

NAME = r"(sum|pcgrad)-(joint|round_robin)-\d{8}-\d{6}(-\d+)?"


def test_default_names_are_new_per_run_and_overwrite_replaces(tmp_path, tiny_overrides):
    import re

    values = {**tiny_overrides, "steps": 1, "probe_every": 0, "save_checkpoints": False}
    a, b = gradlab.train(None, **values), gradlab.train(None, **values)  # twice in a notebook
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path / "runs"
    assert re.fullmatch(NAME, a.name) and re.fullmatch(NAME, b.name), (a.name, b.name)
    assert a.load().name == a.name and a.config.name == a.name
    assert (a.path / "config.yaml").read_text().startswith(f"name: {a.name}\n")
    with pytest.raises(FileExistsError, match="already exists.*resume"):
        gradlab.train(None, **{**values, "name": a.name})
    (a.path / "notes.txt").write_text("from the first run")
    again = gradlab.train(None, **{**values, "name": a.name, "overwrite": True,
                                   "method": "pcgrad"})
    assert again.path == a.path and not (a.path / "notes.txt").exists()
    assert again.load().method == "pcgrad" and again.load().status == "finished"
    with pytest.raises(ValueError, match="pass one of them"):
        gradlab.train(None, **{**values, "name": a.name, "overwrite": True, "resume": True})
    with pytest.raises(ValueError, match=r"resume=True needs the name"):
        gradlab.train(None, **values, resume=True)


def test_cli_default_name_is_method_schedule_time(tmp_path, tiny_overrides, capsys):
    import re
    from pathlib import Path

    values = {**tiny_overrides, "steps": 1, "save_checkpoints": False, "method": "pcgrad"}
    assert main(["train", *_cli_overrides(values)]) == 0
    path = Path(json.loads(capsys.readouterr().out)["run"])
    assert path.parent == tmp_path / "runs" and re.fullmatch(NAME, path.name)
    assert path.name.startswith("pcgrad-joint-")


@pytest.mark.parametrize("changes", [{"schedule": "round_robin", "probe_every": 0},
                                     {"log_train_gramians": False, "probe_every": 0}])
def test_a_run_without_gradient_data_warns_at_start_and_plots_say_why(tmp_path, tiny_overrides,
                                                                       changes):
    from gradlab.run import NoGradientDataError

    values = {**tiny_overrides, "steps": 2, "save_checkpoints": False, **changes}
    with pytest.warns(UserWarning, match=r"will log no gradient data.*probe_every=N") as caught:
        handle = gradlab.train(None, **values)
    assert any("log no gradient data" in str(w.message) and w.filename == __file__
               for w in caught)  # points at the caller's line
    key = "schedule=joint" if "schedule" in changes else "log_train_gramians=true"
    run = handle.load()
    with pytest.raises(NoGradientDataError, match=f"logs no gradient data: train: .*{key}.*; "
                                                  "probe: probe_every=0.*probe_every=N"):
        gradlab.plot_conflicts(run)
    with pytest.raises(NoGradientDataError, match="never logs 'probe' .*probe_every=N"):
        run.cosines(source="probe")
    with pytest.raises(NoGradientDataError, match=f"never logs 'train' .*{key}"):
        run.cosines(source="train")
