"""Sweeps on the tiny random BERT: results table, resumability, failed and killed runs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest
import torch

from gradlab.config import ConfigError
from gradlab.store import run_status
from gradlab.sweep import SweepError, parse_grid, plan_sweep, run_name, run_sweep

GRID = ["method=sum,pcgrad", "lr=5e-5,1e-4"]
FAILED = "_failed"
NAMES = ["method-sum_lr-5e-05_seed-0", "method-sum_lr-0.0001_seed-0",
         "method-pcgrad_lr-5e-05_seed-0", "method-pcgrad_lr-0.0001_seed-0"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # the trainer sets threads=1 for the whole process
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sweep_args(tiny_overrides, tmp_path):
    overrides = {k: v for k, v in tiny_overrides.items() if k != "runs_dir"}
    # one thread: tiny models gain nothing from more, and lose a lot on a busy machine
    overrides.update(steps=2, probe_every=2, counterfactual_methods=["sum"], threads=1)
    return {"config": None, "runs_dir": tmp_path / "sweep", "overrides": overrides}


def _set_status(run_dir, status: str) -> None:
    with sqlite3.connect(run_dir / "run.sqlite") as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'status'", (status,))


def test_grid_runs_are_resumable_and_failures_keep_their_data(sweep_args, capsys):
    runs_dir = sweep_args["runs_dir"]
    table = run_sweep(grid=GRID, seeds=[0], **sweep_args)
    assert list(table["run"]) == NAMES
    assert (table["status"] == "finished").all() and (table["action"] == "ran").all()
    assert list(table["method"]) == ["sum", "sum", "pcgrad", "pcgrad"]
    assert list(table["lr"]) == [5e-5, 1e-4, 5e-5, 1e-4]
    for column in ("sst.accuracy", "para.f1", "sts.pearson", "overall.score", "wall_time"):
        assert table[column].notna().all(), column
    saved = json.loads((runs_dir / NAMES[2] / "metrics.json").read_text())["metrics"]
    assert table.loc[2, "sst.accuracy"] == pytest.approx(saved["sst"]["accuracy"])
    on_disk = pd.read_csv(runs_dir / "results.csv")
    assert list(on_disk["run"]) == NAMES and "sts.pearson" in on_disk
    comparison = pd.read_csv(runs_dir / "comparison.csv")
    assert set(comparison["method"]) == {"sum", "pcgrad"} and set(comparison["lr"]) == {5e-5, 1e-4}
    assert (comparison["baseline"] == "sum").all()
    assert {"diff", "p_value", "within_seed_noise", "ci_low"} <= set(comparison.columns)

    # a second call skips every finished run and reports the same numbers
    capsys.readouterr()
    again = run_sweep(grid=GRID, seeds=[0], **sweep_args)
    assert (again["action"] == "skipped").all()
    assert "skipped (finished)" in capsys.readouterr().out
    pd.testing.assert_series_equal(again["sst.accuracy"], table["sst.accuracy"])

    # killed with a checkpoint -> resumed; killed before any checkpoint -> moved aside, rerun
    _set_status(runs_dir / NAMES[0], "running")
    _set_status(runs_dir / NAMES[1], "failed")
    shutil.rmtree(runs_dir / NAMES[1] / "checkpoints")
    (runs_dir / NAMES[1] / "marker").write_text("old data")
    third = run_sweep(grid=GRID, seeds=[0], **sweep_args)
    assert list(third["action"]) == ["resumed", "restarted", "skipped", "skipped"]
    assert (third["status"] == "finished").all()
    aside = list((runs_dir / "_failed").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(NAMES[1] + ".failed-")
    assert (aside[0] / "marker").read_text() == "old data"  # nothing deleted
    assert not (runs_dir / NAMES[1] / "marker").exists()
    import gradlab

    assert len(gradlab.load_runs(runs_dir)) == 4  # the moved-aside copy is not a 5th run


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(sweep_args, tmp_path):
    grid = ["data_dir=" + str(tmp_path / "no-data") + "," + str(tmp_path / "also-none")]
    with pytest.raises(SweepError, match="2 of 2 runs failed"):
        run_sweep(grid=grid, seeds=[0], **sweep_args)
    table = pd.read_csv(sweep_args["runs_dir"] / "results.csv")
    assert (table["status"] == "failed").all()
    assert table["error"].str.contains("FileNotFoundError").all()
    out = run_sweep(grid=grid, seeds=[0], raise_on_failure=False, **sweep_args)
    assert (out["status"] == "failed").all()


def test_parse_grid_values_like_config_overrides():
    axes = parse_grid(["lr=5e-5,1e-4", "tasks=[sst,sts],[sst,para]", "method=pcgrad",
                       "method_args={reduction: mean},{reduction: sum}", "max_grad_norm=null,1"])
    assert axes["lr"] == [5e-5, 1e-4]
    assert axes["tasks"] == [["sst", "sts"], ["sst", "para"]]
    assert axes["method"] == ["pcgrad"]
    assert axes["method_args"] == [{"reduction": "mean"}, {"reduction": "sum"}]
    assert axes["max_grad_norm"] == [None, 1]
    with pytest.raises(ConfigError) as err:
        parse_grid(["lr", "seed=1,2", "nope=1", "lr=1,1", "steps="])
    text = str(err.value)
    for expected in ("'lr' is not of the form", "'seed' is set by the sweep", "'nope' is not a "
                     "config key", "lists a value twice", "empty value"):
        assert expected in text
    with pytest.raises(TypeError):
        parse_grid("lr=1,2")


def test_linked_grid_keys_vary_together():
    axes = parse_grid(["method:schedule=sum:joint,pcgrad:joint,sum:round_robin",
                       "lr:tasks=1e-4:[sst,sts],5e-5:[sst,para]"])
    assert axes["method:schedule"] == [{"method": "sum", "schedule": "joint"},
                                       {"method": "pcgrad", "schedule": "joint"},
                                       {"method": "sum", "schedule": "round_robin"}]
    assert axes["lr:tasks"] == [{"lr": 1e-4, "tasks": ["sst", "sts"]},
                                {"lr": 5e-5, "tasks": ["sst", "para"]}]
    with pytest.raises(ConfigError) as err:
        parse_grid(["method:schedule=sum:joint,pcgrad", "method=sum", "seed:lr=1:2",
                    "method:nope=a:b", ":lr=1"])
    text = str(err.value)
    for expected in ("value 'pcgrad' needs 2 parts separated by ':'",
                     "grid key 'method' is given twice", "'seed' is set by the sweep",
                     "'nope' is not a config key", "':lr=1' is not of the form"):
        assert expected in text


def test_plan_of_linked_keys_compares_schedules_on_one_budget(tmp_path):
    runs = plan_sweep(None, ["method:schedule=sum:joint,pcgrad:joint,sum:round_robin"], [0, 1],
                      tmp_path, ["step_budget=per_task", "steps=4"])
    assert [r.name for r in runs] == [
        "method-sum_schedule-joint_seed-0", "method-sum_schedule-joint_seed-1",
        "method-pcgrad_schedule-joint_seed-0", "method-pcgrad_schedule-joint_seed-1",
        "method-sum_schedule-round_robin_seed-0", "method-sum_schedule-round_robin_seed-1"]
    assert [r.variant for r in runs[::2]] == ["sum", "pcgrad", "round_robin"]
    assert runs[4].values["schedule"] == "round_robin" and runs[4].values["method"] == "sum"
    with pytest.raises(ConfigError, match="'method' is both a grid key and an override"):
        plan_sweep(None, ["method:schedule=sum:joint"], [0], tmp_path, ["method=pcgrad"])


def test_run_names_are_deterministic_and_safe():
    assert run_name({"method": "pcgrad", "lr": 5e-5}, 0) == "method-pcgrad_lr-5e-05_seed-0"
    assert run_name({"tasks": ["sst", "sts"]}, 3) == "tasks-sst+sts_seed-3"
    assert run_name({"data_dir": "/a b/c"}, 1) == "data_dir-a-b-c_seed-1"
    assert run_name({}, 2) == "seed-2"
    long = run_name({"data_dir": "x" * 300}, 0)
    assert len(long) <= 130 and long.endswith("_seed-0")
    assert long != run_name({"data_dir": "x" * 299 + "y"}, 0)


def test_plan_validates_every_config_before_running(tmp_path):
    runs = plan_sweep(None, ["method=sum,pcgrad"], [0, 1], tmp_path, ["steps=3"])
    assert [r.name for r in runs] == ["method-sum_seed-0", "method-sum_seed-1",
                                      "method-pcgrad_seed-0", "method-pcgrad_seed-1"]
    assert runs[3].values == {"steps": 3, "method": "pcgrad", "seed": 1,
                              "name": "method-pcgrad_seed-1", "runs_dir": str(tmp_path)}
    rr = plan_sweep(None, ["schedule=joint,round_robin"], [0], tmp_path, [])
    assert [r.variant for r in rr] == ["sum", "round_robin"]
    with pytest.raises(ConfigError) as err:
        plan_sweep(None, ["method=sum,nosuch", "steps=0,2"], [0], tmp_path,
                   {"seed": 1, "steps": 3})
    text = str(err.value)
    assert "override 'seed' is set by the sweep" in text
    assert "'steps' is both a grid key and an override" in text
    with pytest.raises(ConfigError) as err:
        plan_sweep(None, ["method=sum,nosuch", "steps=0,2"], [0], tmp_path, [])
    assert "method-nosuch_steps-2_seed-0: method='nosuch'" in str(err.value)
    assert "method-sum_steps-0_seed-0: steps=0" in str(err.value)
    with pytest.raises(ConfigError, match="seed twice"):
        plan_sweep(None, [], [0, 0], tmp_path, [])


def test_cli_sweep_end_to_end(sweep_args, tmp_path, capsys):
    import yaml

    from gradlab.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(sweep_args["overrides"]))
    runs_dir = tmp_path / "cli-sweep"
    assert main(["sweep", str(config), "--grid", "method=sum,pcgrad", "--seeds", "0,1",
                 "--runs-dir", str(runs_dir), "lr=1e-4"]) == 0
    out = capsys.readouterr().out
    assert "method-pcgrad_seed-1" in out and "sts.pearson" in out
    table = pd.read_csv(runs_dir / "results.csv")
    assert len(table) == 4 and (table["status"] == "finished").all()
    saved = yaml.safe_load((runs_dir / "method-sum_seed-1" / "config.yaml").read_text())
    assert (saved["lr"], saved["seed"], saved["method"]) == (1e-4, 1, "sum")
    comparison = pd.read_csv(runs_dir / "comparison.csv")
    assert set(comparison["n"]) == {2} and set(comparison["n_pairs"]) == {2}


def test_sweep_compares_round_robin_with_joint_methods_on_one_budget(sweep_args):
    table = run_sweep(None, ["method:schedule=sum:joint,sum:round_robin"], [0, 1],
                      sweep_args["runs_dir"], {**sweep_args["overrides"],
                                               "step_budget": "per_task"})
    assert list(table["variant"]) == ["sum", "sum", "round_robin", "round_robin"]
    assert (table["status"] == "finished").all()
    from gradlab.run import load_run

    rr = load_run(sweep_args["runs_dir"] / "method-sum_schedule-round_robin_seed-1")
    assert rr.losses()["step"].max() == 3 * sweep_args["overrides"]["steps"] - 1
    comparison = pd.read_csv(sweep_args["runs_dir"] / "comparison.csv")
    assert set(comparison["method"]) == {"sum", "round_robin"}
    assert set(comparison["baseline"]) == {"sum"}
    assert set(comparison.loc[comparison.method == "round_robin", "n_pairs"]) == {2}


def test_cli_sweeps_the_aux_recipe_over_two_seeds_in_one_process(sweep_args, tmp_path, capsys):
    """Each run builds its own task table: the second aux-task run of a process is not
    refused (an earlier version registered the aux task in module globals)."""
    from test_config import AUX_CONFIG, aux_data_dir

    from gradlab.cli import main

    data = aux_data_dir(tmp_path / "data")
    overrides = {**sweep_args["overrides"], "data_dir": str(data), "eval_every": 0}
    args = [f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}"
            for k, v in overrides.items()]
    runs_dir = tmp_path / "aux-sweep"
    assert main(["sweep", str(AUX_CONFIG), "--seeds", "0,1", "--runs-dir", str(runs_dir),
                 *args]) == 0
    table = pd.read_csv(runs_dir / "results.csv")
    assert list(table["run"]) == ["seed-0", "seed-1"]
    assert (table["status"] == "finished").all(), table["error"].tolist()
    assert table["cola.accuracy"].notna().all() and table["sts.pearson"].notna().all()


def test_grid_reads_renamed_keys_and_keeps_their_run_names(tmp_path):
    with pytest.warns(FutureWarning, match="'sst_head' is deprecated"):
        runs = plan_sweep(None, ["sst_head=linear,mlp"], [0], tmp_path, ["steps=2"])
    assert [r.name for r in runs] == ["sst_head-linear_seed-0", "sst_head-mlp_seed-0"]
    assert [r.config.single_head for r in runs] == ["linear", "mlp"]


def test_a_killed_run_with_only_a_best_checkpoint_is_resumed_not_restarted(sweep_args):
    runs_dir, grid = sweep_args["runs_dir"], ["method=sum"]
    run_sweep(grid=grid, seeds=[0], **sweep_args)
    run_dir = runs_dir / "method-sum_seed-0"
    shutil.rmtree(run_dir / "checkpoints" / "last")  # checkpoint_every=0: best, then last
    _set_status(run_dir, "running")
    again = run_sweep(grid=grid, seeds=[0], **sweep_args)
    assert list(again["action"]) == ["resumed"] and list(again["status"]) == ["finished"]
    assert not (runs_dir / FAILED).exists()


# --- two processes on one runs folder ---------------------------------------------------------

_HOLD_LOCK = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
              "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)")


def test_a_run_locked_by_another_process_is_skipped_never_moved(sweep_args, capsys):
    pytest.importorskip("fcntl")
    runs_dir, grid = sweep_args["runs_dir"], ["method=sum"]
    run_sweep(grid=grid, seeds=[0], **sweep_args)
    run_dir = runs_dir / "method-sum_seed-0"
    # what a second sweep sees while the first trains it: 'running', no checkpoint yet
    _set_status(run_dir, "running")
    shutil.rmtree(run_dir / "checkpoints")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run_dir / ".lock")],
                              stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        assert run_status(run_dir) == "running"
        capsys.readouterr()
        table = run_sweep(grid=grid, seeds=[0], **sweep_args)  # not a failure: no SweepError
        out = capsys.readouterr().out
        assert "skipped: running in another process" in out
        assert "1 running in another process" in out
        assert list(table["status"]) == ["running"] and list(table["action"]) == ["skipped"]
        assert not (runs_dir / FAILED).exists() and (run_dir / "run.sqlite").is_file()
        assert not (run_dir / "checkpoints").exists()  # not trained here either
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    # its holder died: the run is dead, and is restarted as before
    assert run_status(run_dir) == "dead"
    again = run_sweep(grid=grid, seeds=[0], **sweep_args)
    assert list(again["action"]) == ["restarted"] and list(again["status"]) == ["finished"]
    assert len(list((runs_dir / FAILED).iterdir())) == 1


@pytest.mark.slow
def test_two_sweep_processes_on_one_folder_train_each_run_once(sweep_args, tmp_path):
    import yaml
    from conftest import ROOT

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**sweep_args["overrides"], "steps": 6}))
    runs_dir = tmp_path / "shared-runs"
    code = "import sys; from gradlab.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "sweep", str(config), "--grid", "method=sum,pcgrad",
            "--seeds", "0,1", "--runs-dir", str(runs_dir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    sweeps = [subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in sweeps]
    assert [p.returncode for p in sweeps] == [0, 0], outs
    assert not (runs_dir / FAILED).exists(), outs
    names = [d.name for d in runs_dir.iterdir() if d.is_dir()]
    assert len(names) == 4
    for name in names:
        with sqlite3.connect(runs_dir / name / "run.sqlite") as con:
            losses = con.execute("SELECT step, task FROM scalars WHERE name = 'loss'").fetchall()
            saves = con.execute("SELECT step, kind FROM checkpoints").fetchall()
        assert sorted(losses) == sorted({*losses}) and len(losses) == 6 * 3, name
        assert len(saves) == len(set(saves)), name
        trained = [out.count(f"{name}: training") for out in outs]
        assert sum(trained) == 1, (name, outs)
