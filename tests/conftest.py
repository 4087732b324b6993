"""Shared fixtures: fixed seeds, a tiny random BERT config, closed figures."""

from __future__ import annotations

import copy
import json
import os
import random
import sys
import warnings
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


_PARTS: dict[str, object] = {}


def tiny_parts(**changes):
    """The ``gradlab.build.Parts`` of ``tiny_config`` (32 training rows per task, max_length
    24) with ``changes``: built once per configuration and session, every call a deep copy
    of it (sharing only the tokenizer and the read data, which nothing changes)."""
    from gradlab.build import build_parts
    from gradlab.config import load_config

    values = tiny_config(Path("unused"), **{"train_limit": 32, "max_length": 24, **changes})
    key = json.dumps(values, sort_keys=True)
    if key not in _PARTS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # truncation notices
            _PARTS[key] = build_parts(load_config(None, values))
    base = _PARTS[key]
    shared = {id(x): x for x in (base.tokenizer, base.train_sets, base.dev_sets)}
    return copy.deepcopy(base, shared)


@pytest.fixture
def tiny_overrides(tmp_path) -> dict:
    """``tiny_config(tmp_path)``: the keys of a seconds-long run on a tiny random BERT."""
    return tiny_config(tmp_path)
