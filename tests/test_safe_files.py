"""Safe files: nothing gradlab reads can run code. No pickle anywhere, YAML through safe_load,
checkpoints as safetensors + JSON; crafted checkpoints and configs are refused, and the
marker file their payloads would create never appears."""

from __future__ import annotations

import ast
import json
import os
import pickle
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY_ENCODER

import gradlab
from gradlab import checkpoint as ckpt
from gradlab.checkpoint import CheckpointError
from gradlab.cli import main
from gradlab.config import ConfigError, load_config
from gradlab.inference import evaluate_checkpoint

PACKAGE = ROOT / "gradlab"


# --- the package itself -----------------------------------------------------------------------

_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                      "marshal", "jsonpickle"}
_FORBIDDEN_CALLS = {"torch.load", "pickle.load", "pickle.loads", "pd.read_pickle",
                    "pandas.read_pickle", "yaml.load", "yaml.unsafe_load", "yaml.full_load",
                    "yaml.load_all", "yaml.unsafe_load_all", "yaml.full_load_all",
                    "torch.serialization.load", "eval", "exec", "compile"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _unsafe_uses(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in _FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in _FORBIDDEN_MODULES:
                found.append(f"from {node.module} import ...")
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                found.append("from torch import load")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in _FORBIDDEN_CALLS:
                found.append(f"{name}() on line {node.lineno}")
            if name.endswith("np.load") or name == "numpy.load":
                safe = [k for k in node.keywords if k.arg == "allow_pickle"
                        and isinstance(k.value, ast.Constant) and k.value.value is False]
                if not safe:
                    found.append(f"{name}() without allow_pickle=False on line {node.lineno}")
            if name.startswith("yaml.") and name not in ("yaml.safe_load", "yaml.safe_dump",
                                                         *_FORBIDDEN_CALLS):
                found.append(f"{name}() on line {node.lineno}")
    return found


def test_the_scanner_finds_unsafe_code():
    unsafe = ("import pickle\nimport torch, yaml, numpy as np\ntorch.load('x')\n"
              "yaml.load(s)\nnp.load('a.npy')\nfrom torch import load\n")
    assert len(_unsafe_uses(unsafe)) == 5
    assert _unsafe_uses("np.load(f, allow_pickle=False)\nyaml.safe_load(s)\n") == []


def test_no_pickle_torch_load_or_unsafe_yaml_in_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    problems = {str(f.relative_to(ROOT)): uses for f in files
                if (uses := _unsafe_uses(f.read_text(encoding="utf-8")))}
    assert problems == {}


# --- crafted checkpoints ----------------------------------------------------------------------


@pytest.fixture
def marker(tmp_path) -> Path:
    """The file a successful payload would create; asserted absent after every test."""
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a crafted file ran code"


class _Payload:
    """Unpickling this runs a shell command (creating it does not)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _reduce(marker: Path) -> dict:
    """JSON shaped like the serialisations that execute code on load (pickle's __reduce__,
    jsonpickle's py/reduce), should anything ever interpret them."""
    command = f"touch {marker}"
    return {"__reduce__": ["os.system", [command]], "py/reduce": [{"py/function": "os.system"},
                                                                  {"py/tuple": [command]}],
            "!!python/object/apply:os.system": [command]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("safe")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        gradlab.train(None, name="run", runs_dir=str(folder), encoder="minilm",
                      tiny_encoder=dict(TINY_ENCODER), train_limit=16, dev_limit=8,
                      batch_size=4, max_length=24, steps=2, probe_every=0, eval_batch_size=16,
                      checkpoint_every=1, keep_checkpoints=1, method="pcgrad",
                      progress=False, threads=1)
    return folder / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "runs" / "run"))


def _edit_states(run: Path, edit) -> None:
    for folder in (run / "checkpoints").iterdir():
        file = folder / "state.json"
        state = json.loads(file.read_text())
        edit(state)
        file.write_text(json.dumps(state))


def _resume(run: Path):
    return gradlab.train(load_config(run / "config.yaml"), resume=True,
                         runs_dir=str(run.parent), progress=False)


_PLACES = {
    "config": lambda s, p: s["config"].update(encoder=p),
    "whole config": lambda s, p: s.update(config=p),
    "scheduler": lambda s, p: s.update(scheduler=p),
    "scheduler value": lambda s, p: s["scheduler"].update(base_lrs=[p]),
    "optimizer group": lambda s, p: s["optimizer"]["param_groups"][0].update(lr=p),
    "method state": lambda s, p: s["methods"]["method"].update(p),
    "counterfactual state": lambda s, p: s["methods"].update({"counterfactual.sum": p}),
    "data positions": lambda s, p: s["batchers"].update(sst=p),
    "rng": lambda s, p: s["rng"].update(python=[3, p, None]),
    "step": lambda s, p: s.update(step=p),
}


@pytest.mark.parametrize("place", sorted(_PLACES))
def test_crafted_state_json_cannot_run_code(run, marker, place):
    _edit_states(run, lambda state: _PLACES[place](state, _reduce(marker)))
    with pytest.raises((CheckpointError, ConfigError)):
        _resume(run)
    if place in ("config", "whole config"):
        with pytest.raises((CheckpointError, ConfigError)):
            evaluate_checkpoint(run / "checkpoints" / "last")
    else:  # evaluation reads only the config and the model
        evaluate_checkpoint(run / "checkpoints" / "last")


def _safetensors(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


_TENSOR_FILES = {
    "pickle payload": lambda m: pickle.dumps(_Payload(f"touch {m}")),
    "pickle payload, protocol 0": lambda m: pickle.dumps(_Payload(f"touch {m}"), protocol=0),
    "huge header length": lambda m: struct.pack("<Q", 2**62) + b"{}",
    "header not JSON": lambda m: _safetensors(b"\x80\x04\x95cos\nsystem\n"),
    "python tags in the header": lambda m: _safetensors(
        {"__metadata__": {"x": f"!!python/object/apply:os.system ['touch {m}']"},
         "w": {"dtype": "py/object", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "data beyond the file": lambda m: _safetensors(
        {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\0" * 8),
    "negative shape": lambda m: _safetensors(
        {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
    "metadata reduce": lambda m: _safetensors({"__metadata__": _reduce(m)}),
}


@pytest.mark.parametrize("kind", sorted(_TENSOR_FILES))
@pytest.mark.parametrize("name", ["model.safetensors", "train_state.safetensors"])
def test_crafted_tensor_files_cannot_run_code(run, marker, kind, name):
    for folder in (run / "checkpoints").iterdir():
        (folder / name).unlink()  # hard links: replace, do not write through
        (folder / name).write_bytes(_TENSOR_FILES[kind](marker))
    last = run / "checkpoints" / "last"
    with pytest.raises(CheckpointError, match=rf"last: {name} is corrupt"):
        ckpt.load_checkpoint(last)
    if name == "model.safetensors":
        with pytest.raises(CheckpointError, match=rf"last: {name} is corrupt"):
            evaluate_checkpoint(last)
    with pytest.raises(CheckpointError, match=rf"no readable checkpoint .*{name} is corrupt"):
        _resume(run)


def test_the_payloads_are_live(tmp_path):
    """The payloads above do run code when loaded unsafely, so their tests mean something."""
    import yaml

    live = tmp_path / "live"
    pickle.loads(_TENSOR_FILES["pickle payload"](live))  # noqa: S301 - on purpose
    assert live.exists()
    live.unlink()
    yaml.unsafe_load(_yaml_payloads(live)[0])
    assert live.exists()


# --- crafted configs ----------------------------------------------------------------------------


def _yaml_payloads(marker: Path) -> list[str]:
    command = f"touch {marker}"
    return [
        f"steps: !!python/object/apply:os.system ['{command}']\n",
        f"!!python/object/apply:os.system ['{command}']\n",
        f"encoder: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
        "tasks: !!python/name:os.system\n",
        "method_args: !!python/object:__main__.X {a: 1}\n",
    ]


@pytest.mark.parametrize("index", range(5))
def test_crafted_config_cannot_run_code(tmp_path, marker, index, capsys):
    config = tmp_path / "evil.yaml"
    config.write_text(_yaml_payloads(marker)[index])
    with pytest.raises(ConfigError, match=r"evil.yaml is not valid YAML: could not determine a "
                                          r"constructor for the tag 'tag:yaml.org,2002:python"):
        load_config(config)
    assert main(["train", "--config", str(config), f"runs_dir={tmp_path}"]) == 2
    assert "is not valid YAML" in capsys.readouterr().err


def test_crafted_config_of_a_run_cannot_run_code_on_resume(run, marker, capsys):
    (run / "config.yaml").write_text(_yaml_payloads(marker)[0])
    assert main(["train", "--resume", str(run)]) == 2
    assert "config.yaml is not valid YAML" in capsys.readouterr().err


def test_crafted_override_cannot_run_code(tmp_path, marker, capsys):
    payload = f"steps=!!python/object/apply:os.system ['touch {marker}']"
    assert main(["train", payload, f"runs_dir={tmp_path}"]) == 2
    assert "steps=" in capsys.readouterr().err


def test_crafted_tokenization_cache_is_not_unpickled(tmp_path, marker):
    from gradlab.data import DEFAULT_READERS as READERS
    from gradlab.data import DataWarning, read_task_file, tokenize_texts
    from gradlab.model import load_tokenizer

    data = tmp_path / "sst.csv"
    data.write_text("\tid\tsentence\tsentiment\n0\ta\tsome words\t1\n", encoding="utf-8")
    examples = read_task_file(data, READERS["sst"], task="sst")
    tokenizer = load_tokenizer("minilm")
    cache = tmp_path / "cache"
    tokenize_texts(examples, tokenizer, cache_dir=cache)
    (cache_file,) = cache.glob("*.npz")
    evil = np.array([_Payload(f"touch {marker}")], dtype=object)
    with open(cache_file, "wb") as f:
        np.savez(f, key=evil, labels=evil, ids_0=evil, offsets_0=evil)
    from gradlab.data import clear_tokenization_cache

    clear_tokenization_cache()
    with pytest.warns(DataWarning, match="ignoring unreadable tokenization cache"):
        tokenized = tokenize_texts(examples, tokenizer, cache_dir=cache)
    assert len(tokenized) == 1
