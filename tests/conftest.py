"""Shared fixtures: fixed seeds, a tiny random BERT config, closed figures."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

#: a tiny random BERT (built from a config, no weights to download)
TINY_ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                "intermediate_size": 64}
DATA_DIR = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def tiny_config(tmp_path: Path, **changes) -> dict:
    """Config keys for a seconds-long training run on a tiny random BERT (runs under
    ``tmp_path / "runs"``), with ``changes`` applied."""
    return {
        "encoder": "minilm",
        "tiny_encoder": dict(TINY_ENCODER),
        "runs_dir": str(tmp_path / "runs"),
        "train_limit": 64,
        "dev_limit": 32,
        "batch_size": 4,
        "max_length": 32,
        "steps": 6,
        "probe_every": 2,
        "probe_batch_size": 4,
        "eval_batch_size": 32,
        "progress": False,
        "threads": 1,  # two processes' thread pools on 2 cores slow each other down badly
        **changes,
    }


@pytest.fixture
def tiny_overrides(tmp_path) -> dict:
    """``tiny_config(tmp_path)``: the keys of a seconds-long run on a tiny random BERT."""
    return tiny_config(tmp_path)
