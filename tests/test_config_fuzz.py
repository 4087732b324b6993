"""Config fuzzing: random values of random types for every config key, through ``key=value``
overrides and through a YAML file. Each draw either validates or is refused with a
`ConfigError` whose problems are single lines naming a key that was set; never another
exception, never a hang (a deadline per example), never a folder left behind: a refused
config given to ``gradlab train`` exits 2 with one line and creates nothing."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import signal
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gradlab.cli import main
from gradlab.config import ConfigError, TrainConfig, config_keys, load_config
from gradlab.config_checks import key_of

KEYS = config_keys()
# import what the checks and `gradlab train` import once, so the deadline times the draws
load_config(None, ["tiny_encoder={hidden_size: 32}", "method=pcgrad", "eda_tasks=[sst]"])
importlib.import_module("gradlab.training")

# plausible pieces, so that draws also reach the checks behind the type checks
_WORDS = ["sst", "para", "sts", "cola", "sum", "pcgrad", "mean", "cagrad", "joint",
          "round_robin", "train", "dev", "text_columns", "label_column", "hidden_size",
          "num_attention_heads", "max_position_embeddings", "reduction", "alpha_sr", "n_aug",
          "epsilon", "steps", "cuda", "cuda:0", "cpu", "bf16", "minilm", "mlp", "cross", ""]
_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(-3, 600),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2),
    st.text(max_size=12), st.sampled_from(_WORDS))
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_WORDS), st.text(max_size=6)), inner,
                        max_size=4)),
    max_leaves=8)
_WORD_LISTS = st.lists(st.sampled_from(_WORDS), max_size=3)


def _of_its_type(key: str) -> st.SearchStrategy:
    """Values of the key's own type (so that draws also pass the type check)."""
    default = getattr(TrainConfig(), key)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-2, 700)
    if isinstance(default, float):
        return st.one_of(st.floats(-1, 2), st.sampled_from([math.nan, math.inf, 1e300]))
    if isinstance(default, list):
        return _WORD_LISTS
    if isinstance(default, dict) or key == "tiny_encoder":
        leaf = st.one_of(_SCALARS, _WORD_LISTS)
        return st.dictionaries(st.sampled_from(_WORDS), st.one_of(
            leaf, st.dictionaries(st.sampled_from(_WORDS), leaf, max_size=3)), max_size=3)
    return st.one_of(st.sampled_from(_WORDS), st.integers(0, 20))


_CHANGES = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.one_of(_VALUES, _of_its_type(k)) for k in keys}))

# GRADLAB_FUZZ_EXAMPLES=5000 for a longer search
_SETTINGS = settings(max_examples=int(os.environ.get("GRADLAB_FUZZ_EXAMPLES", "250")),
                     deadline=timedelta(seconds=3),
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.function_scoped_fixture])
_HANG_S = 20  # a draw that takes this long hangs


@contextlib.contextmanager
def _time_limit(seconds: int):
    def hang(*_):
        raise TimeoutError(f"a config draw took more than {seconds} s")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_refusal(err: ConfigError, keys: list[str]) -> None:
    event(f"refused: {len(err.problems)} problem(s)")
    assert err.problems, err
    for problem in err.problems:
        assert "\n" not in problem, problem
        assert len(problem) < 1500, problem
        assert key_of(problem) in keys or any(k in problem for k in keys), (problem, keys)


def _override(value) -> str:
    """A value as a ``key=value`` override would spell it (YAML flow style; NaN as .nan)."""
    if isinstance(value, str):
        return value
    return json.dumps(value).replace("NaN", ".nan").replace("-Infinity", "-.inf") \
        .replace("Infinity", ".inf")


@_SETTINGS
@given(changes=_CHANGES)
def test_random_overrides_validate_or_are_refused_naming_the_key(tmp_path, changes, capsys):
    overrides = [f"{key}={_override(value)}" for key, value in changes.items()]
    before = set(os.listdir(tmp_path))
    cwd = Path.cwd()
    os.chdir(tmp_path)  # a relative runs_dir the fuzzer draws lands here, if anywhere
    try:
        with _time_limit(_HANG_S):
            try:
                load_config(None, overrides)
                event("validates")
            except ConfigError as err:
                _check_refusal(err, list(changes))
                capsys.readouterr()
                runs_dir = [] if "runs_dir" in changes else [f"runs_dir={tmp_path / 'runs'}"]
                assert main(["train", *overrides, *runs_dir]) == 2
                lines = capsys.readouterr().err.strip().splitlines()
                assert len(lines) == 1 and lines[0].startswith("gradlab train: error: "), lines
                assert set(os.listdir(tmp_path)) == before  # no folder left behind
    finally:
        os.chdir(cwd)


@_SETTINGS
@given(changes=_CHANGES)
def test_random_yaml_files_validate_or_are_refused_naming_the_key(tmp_path, changes):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(changes, allow_unicode=True), encoding="utf-8")
    with _time_limit(_HANG_S):
        try:
            cfg = load_config(path)
            event("validates")
        except ConfigError as err:
            _check_refusal(err, list(changes))
            return
    for key, value in changes.items():  # what validates is what was written
        got = getattr(cfg, key)
        assert got == value or (isinstance(value, float) and math.isnan(value)
                                and math.isnan(got)) or isinstance(value, str), (key, value, got)
