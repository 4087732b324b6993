"""What a user reads from the gradlab command: --help with every config key and every
default, --version, hints for options that are config keys, a grid that swallowed the config
path, value typos, task names in any case, and a refused config before the training stack
loads. Through the real CLI (``main(argv)`` or a subprocess)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import warnings

import pytest
from conftest import DATA_DIR, ROOT, tiny_config

import gradlab
from gradlab.cli import build_parser, main
from gradlab.cli.keys import key_help
from gradlab.config import TrainConfig, config_keys


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_train_help_lists_every_config_key_with_its_default_and_meaning(capsys):
    text = _help(capsys, "train")
    lines = text.splitlines()
    defaults = TrainConfig()
    for key in config_keys():
        default, meaning = key_help()[key]
        assert f"  {key} = {default}" in lines, key
        assert meaning, f"config key {key!r} has no comment in TrainConfig and no help line"
        at = lines.index(f"  {key} = {default}")
        assert lines[at + 1].strip() == meaning.split()[0] or \
            lines[at + 1].strip().startswith(meaning[:20]), key
    assert "  steps = 300" in lines and "  method = sum" in lines
    assert defaults.steps == 300 and "gradlab config --list" in text
    # a meaning comes from the field's own comment, not its neighbour's
    assert key_help()["tasks"][1] != key_help()["data_dir"][1]
    assert key_help()["max_length"][1].startswith("truncation length")


def test_config_list_prints_the_same_table(capsys):
    assert main(["config", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {key} = " in out for key in config_keys())
    assert "  lr = 5e-05" in out and "  tasks = [sst, para, sts]" in out


def test_config_prints_the_resolved_config_without_training(tmp_path, capsys):
    assert main(["config", str(ROOT / "configs" / "pcgrad.yaml"), "steps=7",
                 f"runs_dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "steps: 7" in out.splitlines() and "method: pcgrad" in out.splitlines()
    assert not (tmp_path / "runs").exists()
    assert "did you mean 'pcgrad'" in _error(capsys, ["config", "method=pcgard"])


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"gradlab {gradlab.__version__}"


def test_every_help_shows_every_options_default(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse's own
    assert {"train", "config", "demo", "sweep", "noise-study"} <= set(commands)
    for name, command in commands.items():
        # no whitespace at all: argparse wraps long defaults (a checkout path) at hyphens
        text = "".join(_help(capsys, name).split())
        for action in command._actions:  # noqa: SLF001
            default = action.default
            if not action.option_strings or default is None or default is False or \
                    default == [] or default is argparse.SUPPRESS:
                continue
            shown = ("".join(f"default: {default}".split()), "".join(f"default {default}".split()))
            assert any(s in text for s in shown), (name, action.dest, text)


@pytest.mark.parametrize("argv, hint", [
    (["train", "--steps", "10"], "use steps=10"),
    (["train", "--steps=10", "lr=1e-4"], "use steps=10"),
    (["train", "--config", "configs/demo.yaml", "--eval-every", "5"], "use eval_every=5"),
    (["evaluate", "runs/x", "--dev-limit", "8"], "use dev_limit=8"),
])
def test_a_config_key_given_as_an_option_gets_the_key_value_form(capsys, argv, hint):
    assert hint in _error(capsys, argv)


def test_an_unknown_option_that_is_no_config_key_is_argparses_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", "--bogus", "3"])
    assert done.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_grid_that_swallowed_the_config_path_is_named(tmp_path, capsys):
    err = _error(capsys, ["sweep", "--grid", "method=sum,pcgrad", "configs/demo.yaml",
                          "--runs-dir", str(tmp_path / "sweep")])
    assert "--grid took 'configs/demo.yaml'" in err
    assert "config path must come before --grid" in err
    assert "gradlab sweep configs/demo.yaml --grid method=sum,pcgrad" in err
    assert not (tmp_path / "sweep").exists()
    err = _error(capsys, ["sweep", "configs/demo.yaml", "--grid", "method=sum", "oops"])
    assert "'oops': it is not a grid item" in err
    err = _error(capsys, ["sweep", "lr=1e-4", "--grid", "method=sum"])
    assert "give the config file: gradlab sweep CONFIG" in err


@pytest.mark.parametrize("override, hint", [
    ("method=pcgard", "did you mean 'pcgrad'?"),
    ("schedule=roundrobin", "did you mean 'round_robin'?"),
    ("pooling=CLS", "did you mean 'cls'?"),
    ("tasks=[sst, STS]", "did you mean 'sts'?"),
    ("pair_head=crosss", "did you mean 'cross'?"),
])
def test_a_value_typo_gets_did_you_mean(tmp_path, capsys, override, hint):
    err = _error(capsys, ["train", override, f"runs_dir={tmp_path / 'runs'}"])
    assert hint in err


def test_no_suggestion_for_a_value_far_from_every_choice(tmp_path, capsys):
    assert "did you mean" not in _error(capsys, ["train", "method=zzzzzz"])


def test_a_refused_config_does_not_load_the_training_stack():
    code = ("import sys; from gradlab.cli import main; "
            "rc = main(['train', 'method=pcgard']); "
            "print(rc, 'gradlab.training' in sys.modules, 'gradlab.engine' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stdout + done.stderr


@pytest.mark.slow
def test_predict_takes_the_task_name_in_any_case(tmp_path, capsys):
    if not (DATA_DIR / "sts-dev.csv").is_file():
        pytest.skip(f"no task data in {DATA_DIR}")
    data = tmp_path / "data"
    data.mkdir()
    for name in ("sts-train.csv", "sts-dev.csv"):
        with open(DATA_DIR / name, "rb") as source:
            (data / name).write_bytes(b"".join(next(source) for _ in range(17)))
    cfg = tiny_config(tmp_path, tasks=["sts"], steps=1, probe_every=0, data_dir=str(data),
                      name="sts", save_checkpoints=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gradlab.train(None, **cfg)
    out = tmp_path / "pred.tsv"
    assert main(["predict", str(tmp_path / "runs" / "sts"), "--task", "STS",
                 "--input", str(data / "sts-dev.csv"), "--out", str(out)]) == 0
    assert "wrote 16 predictions" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) >= 16
    err = _error(capsys, ["predict", str(tmp_path / "runs" / "sts"), "--task", "para",
                          "--input", str(data / "sts-dev.csv"), "--out", str(out)])
    assert "not one of the checkpoint's tasks" in err
