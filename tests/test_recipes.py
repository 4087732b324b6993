"""Every recipe under configs/ runs a few steps on a tiny random BERT; recipe features work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gradlab
from gradlab.build import build_parts, model_from_config
from gradlab.config import load_config
from gradlab.methods import get_method

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _needs_solver(method: str) -> bool:
    try:
        get_method(method)
    except ImportError:
        return True
    return False


def _aux_files(tmp_path: Path) -> dict:
    rows = ["sentence\tlabel"] + [f"the sentence number {i} is {'fine' if i % 2 else 'odd'}"
                                  f"\t{i % 2}" for i in range(40)]
    for split in ("train", "dev"):
        (tmp_path / f"cola-{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"train": str(tmp_path / "cola-train.tsv"), "dev": str(tmp_path / "cola-dev.tsv")}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_recipe_runs_a_few_steps(config, tmp_path, tiny_overrides):
    first_line = config.read_text().splitlines()[0]
    assert first_line.startswith("# gradlab "), f"{config.name}: first line names the command"
    cfg = load_config(config)
    if _needs_solver(cfg.method):
        pytest.skip(f"{cfg.method} needs torchjd's solver extras")
    if cfg.eda_tasks and not Path("/usr/share/wordnet").is_dir():
        pytest.skip("EDA needs WordNet (apt-get install wordnet-base)")
    overrides = {**tiny_overrides, "steps": 3 if cfg.schedule == "joint" else 6,
                 "eval_every": 0, "name": config.stem}
    if cfg.aux_tasks:
        overrides["aux_tasks"] = {"cola": {**cfg.aux_tasks["cola"], **_aux_files(tmp_path)}}
    handle = gradlab.train(config, **overrides)
    run = handle.load()
    assert run.status == "finished"
    assert set(handle.metrics) >= set(cfg.tasks)
    assert len(run.losses()) > 0


def test_per_task_optimizers_have_their_own_lr_and_weight_decay(tiny_overrides):
    cfg = load_config(None, {**tiny_overrides, "encoder_lr": 1e-5, "encoder_weight_decay": 0.2,
                             "lr": 1e-3, "weight_decay": 0.01})
    parts = build_parts(cfg)
    model, opt = parts.model, parts.optimizer
    by_name = {}
    for g in opt.param_groups:
        by_name.setdefault(g["name"], []).append(g)
    assert set(by_name) == {"encoder", "head.sst", "head.para", "head.sts"}
    assert {g["lr"] for g in by_name["encoder"]} == {1e-5}
    assert max(g["weight_decay"] for g in by_name["encoder"]) == 0.2
    assert {g["lr"] for g in by_name["head.sst"]} == {1e-3}
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())


def test_round_robin_does_not_move_inactive_heads(tiny_overrides):
    handle = gradlab.train(None, **{**tiny_overrides, "name": "rr", "steps": 1,
                                    "schedule": "round_robin", "weight_decay": 0.5})
    model, _ = model_from_config(handle.config)
    start = model.state_dict()
    last = load_file(str(handle.path / "checkpoints/last/model.safetensors"))
    for key, value in start.items():
        if key.startswith(("heads.para", "heads.sts")):
            assert torch.equal(last[key], value), key  # step 0 trained SST only
    assert any(not torch.equal(last[k], v) for k, v in start.items() if k.startswith("heads.sst"))


def test_smart_changes_training_but_not_the_logged_task_loss(tiny_overrides):
    plain = gradlab.train(None, **{**tiny_overrides, "name": "plain", "steps": 2})
    smart = gradlab.train(None, **{**tiny_overrides, "name": "smart", "steps": 2,
                                   "smart_weight": {"sst": 10.0}})
    lp, ls = plain.load().losses(), smart.load().losses()
    # SST runs first in step 0: its logged loss is the task loss alone, without the SMART term
    # (later tasks differ: SMART's noise draws move the dropout masks that follow)
    first = lambda df: df[(df["step"] == 0) & (df["task"] == "sst")]["value"].item()  # noqa: E731
    assert first(lp) == first(ls)
    pa = load_file(str(plain.path / "checkpoints/last/model.safetensors"))
    sa = load_file(str(smart.path / "checkpoints/last/model.safetensors"))
    assert any(not torch.equal(pa[k], sa[k]) for k in pa)


def test_bf16_autocast_runs_on_cpu(tiny_overrides):
    handle = gradlab.train(None, **{**tiny_overrides, "name": "bf16", "steps": 2,
                                    "precision": "bf16"})
    assert np.isfinite(handle.load().losses()["value"]).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_end_with_the_parameters_of_one_process(tmp_path, tiny_overrides):
    """torchrun with 2 CPU processes (gloo) == 1 process with the combined batch."""
    tiny = {**tiny_overrides["tiny_encoder"], "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}
    common = {**tiny_overrides, "tiny_encoder": tiny, "head_dropout": 0.0, "batch_size": 8,
              "probe_batch_size": 4, "steps": 3, "probe_every": 1, "threads": 1,
              "method": "pcgrad"}
    args = [f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in
            {**common, "runs_dir": str(tmp_path / "ddp"), "name": "r"}.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", str(_free_port()), "-m", "gradlab", "train", *args],
                   check=True, env=env, capture_output=True, timeout=600)
    single = gradlab.train(None, **{**common, "runs_dir": str(tmp_path / "one"), "name": "r"})
    ddp = load_file(str(tmp_path / "ddp/r/checkpoints/last/model.safetensors"))
    one = load_file(str(single.path / "checkpoints/last/model.safetensors"))
    for key in one:
        torch.testing.assert_close(ddp[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    # only rank 0 wrote the store; its probe Gramians equal the single process's
    g_ddp = gradlab.load_run(tmp_path / "ddp/r").gramian(1, source="probe")[1]
    g_one = single.load().gramian(1, source="probe")[1]
    np.testing.assert_allclose(g_ddp, g_one, rtol=1e-4)
