"""Checks of a config's values: every key's type and range, before any data is read or any
folder created.

`config_problems(cfg)` returns one line per problem, each starting with the key it is about
and showing the value found (shortened), so that `gradlab.config.ConfigError` can list them
all at once. Numbers must be finite (NaN and inf are refused, so a run never blames its loss
for a NaN learning rate), ``true``/``false`` are not numbers, the arguments of the method,
EDA and SMART are checked against their functions' signatures, a tiny encoder against the
rules of ``BertConfig``, ``max_length`` against the encoder's position limit, and ``device``
against the torch that is installed.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import reprlib
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gradlab.config import TrainConfig

_INT_MAX = 2**31 - 1  # sizes and counts above this are typos (and overflow numpy indices)
_SEED_MAX = 2**32 - 1  # numpy's seed range
_PATH_KEYS = ("name", "runs_dir", "data_dir", "encoder", "tokenization_cache")

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 60, 60, 6, 6
_short.maxlong, _short.maxlevel = 40, 3


def show(value: Any) -> str:
    """A value as problem lines show it: its repr, shortened to about 60 characters."""
    try:
        return _short.repr(value)
    except ValueError:  # an int past Python's 4300-digit str limit
        return f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) \
            else f"<a {type(value).__name__}>"


def config_problems(cfg: TrainConfig) -> list[str]:
    """Every problem with a config's values (empty list when it is fine)."""
    p, bad = _type_problems(cfg)
    p += _task_problems(cfg, bad)
    p += _choice_problems(cfg, bad)
    p += _number_problems(cfg, bad)
    p += _text_problems(cfg, bad)
    p += _method_problems(cfg, bad)
    p += _frozen_problems(cfg, bad)
    p += _recipe_problems(cfg, bad)
    p += _encoder_problems(cfg, bad)
    p += _device_problems(cfg, bad)
    p += _example_probe_problems(cfg, bad)
    return p


def key_of(problem: str) -> str:
    """The config key a problem line starts with ("aux_tasks['x']: ..." -> "aux_tasks")."""
    return re.split(r"[=\[:]", problem, maxsplit=1)[0]


# --- types -----------------------------------------------------------------------------------


def _type_problems(cfg: TrainConfig) -> tuple[list[str], set[str]]:
    """Values of another type than the key's (the range checks skip these keys), e.g.
    ``encoder: {...}``, ``progress: "no"``, ``lr: true`` or ``max_grad_norm: .nan``."""
    problems, bad = [], set()
    for f in fields(cfg):
        if f.name in ("tasks", "tiny_encoder", "method_args"):  # checked with more detail
            continue
        allowed = [part.strip().split("[")[0] for part in str(f.type).split("|")]
        value = getattr(cfg, f.name)
        if value is None and "None" in allowed:
            continue
        kinds = [a for a in allowed if a != "None"]
        if any(_is(value, kind) for kind in kinds):
            continue
        bad.add(f.name)
        if "float" in kinds and isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{f.name}={value!r} must be a finite number")
            continue
        problems.append(f"{f.name}={show(value)} must be of type {' or '.join(allowed)}")
    return problems, bad


def _is(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":  # bool is not a number here: `lr: true` would train at 1.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        try:
            return math.isfinite(float(value))
        except OverflowError:  # an int past float's range
            return False
    if kind == "bool":
        return isinstance(value, bool)
    types = {"str": str, "list": list, "dict": dict}
    return kind in types and isinstance(value, types[kind])


# --- tasks, choices, numbers, text -----------------------------------------------------------


def _task_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    """tasks, heads, losses, aux_tasks, task_files: the task table names its problems."""
    from gradlab.config import task_table_args
    from gradlab.tasks import TaskTableError, task_table

    try:
        task_table(**task_table_args(cfg))
    except TaskTableError as err:
        return [x for x in err.problems if key_of(x) not in bad]  # one problem per key
    return []


def _choice_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    from gradlab.methods import METHODS
    from gradlab.schedules import SCHEDULES

    choices = {"method": sorted(METHODS), "schedule": sorted(SCHEDULES),
               "step_budget": ["optimizer", "per_task"], "pooling": ["mean", "cls"],
               "nonfinite": ["error", "skip"], "precision": ["fp32", "bf16"]}
    choices["gradient_dtype"] = ["float32", "bfloat16"]
    # float16 with its reason (benchmarks/dtype_check.py: 40% of MiniLM's gradient values)
    why = {("gradient_dtype", "float16"): " (float16 is refused: many gradient values lie "
           "below its normal range, 6e-5, and lose precision or flush to 0; bfloat16 has "
           "float32's range)"}
    return [f"{key}={show(getattr(cfg, key))} is not one of {allowed}"
            + (why.get((key, getattr(cfg, key))) or did_you_mean(getattr(cfg, key), allowed))
            for key, allowed in choices.items()
            if key not in bad and getattr(cfg, key) not in allowed]


def did_you_mean(value: Any, allowed: list[str]) -> str:
    """`` (did you mean 'pcgrad'?)`` for a near miss of one of ``allowed``, else ''."""
    if not isinstance(value, str):
        return ""
    import difflib

    lowered = {a.lower(): a for a in allowed}
    close = difflib.get_close_matches(value.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


#: integer keys -> smallest allowed value (None: the key may also be null)
_INT_RANGES = {"steps": 1, "batch_size": 1, "eval_batch_size": 1, "max_length": 8,
               "probe_batch_size": 1, "eval_every": 0, "probe_every": 0, "checkpoint_every": 0,
               "keep_checkpoints": 0, "train_limit": 1, "dev_limit": 1, "threads": 1,
               "probe_replicates": 1, "example_probe_every": 0}
#: number keys -> (low, low inclusive, high, high inclusive)
_FLOAT_RANGES = {"lr": (0, False, math.inf, False), "weight_decay": (0, True, math.inf, False),
                 "encoder_lr": (0, False, math.inf, False),
                 "encoder_weight_decay": (0, True, math.inf, False),
                 "max_grad_norm": (0, False, math.inf, False),
                 "warmup_ratio": (0, True, 1, False), "head_dropout": (0, True, 1, False),
                 "eda_fraction": (0, True, 1, True), "max_skipped_share": (0, True, 1, True)}


def _number_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    p = []
    for key, low in _INT_RANGES.items():
        value = getattr(cfg, key)
        if key not in bad and value is not None and not low <= value <= _INT_MAX:
            high = f" and <= {_INT_MAX}" if value > _INT_MAX else ""
            p.append(f"{key}={show(value)} must be an integer >= {low}{high}"
                     + (" (or null)" if key in ("train_limit", "dev_limit", "threads") else ""))
    if "seed" not in bad and not 0 <= cfg.seed <= _SEED_MAX:
        p.append(f"seed={show(cfg.seed)} must be an integer in [0, {_SEED_MAX}]")
    for key, (low, low_in, high, high_in) in _FLOAT_RANGES.items():
        value = getattr(cfg, key)
        if key in bad or value is None:
            continue
        if not ((low <= value if low_in else low < value)
                and (value <= high if high_in else value < high)):
            interval = f"{'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"
            p.append(f"{key}={show(value)} must be a number in {interval}"
                     + (" or null" if key in ("encoder_lr", "encoder_weight_decay",
                                              "max_grad_norm") else ""))
    return p


def _text_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    p = []
    for key in _PATH_KEYS:
        value = getattr(cfg, key)
        if key not in bad and isinstance(value, str) and (
                "\0" in value or (key != "name" and not value.strip())):
            p.append(f"{key}={show(value)} must be a non-empty name without NUL characters")
            bad.add(key)
    name = cfg.name
    if "name" not in bad and name is not None and (
            not name.strip() or "/" in name or "\\" in name or name in (".", "..")
            or name.startswith(".")):
        p.append(f"name={show(name)} must be a plain folder name (no '/', '\\', '..')")
    return p


# --- method, EDA, SMART ----------------------------------------------------------------------


def _method_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    """method_args checked against the method's signature, then by building the method (its
    own checks name the argument); counterfactual_methods are method names."""
    from gradlab.methods import METHODS, get_method

    p = []
    if "counterfactual_methods" not in bad:
        for m in cfg.counterfactual_methods:
            if not isinstance(m, str) or m not in METHODS:
                p.append(f"counterfactual_methods: unknown method {show(m)}; "
                         f"known: {sorted(METHODS)}")
    args = cfg.method_args
    if not isinstance(args, dict):
        return [*p, f"method_args={show(args)} must be a mapping of argument -> value"]
    if "method" in bad or cfg.method not in METHODS:
        return p
    accepted = list(inspect.signature(METHODS[cfg.method]).parameters)
    unknown = [k for k in args if k not in accepted]
    if unknown:
        return [*p, f"method_args: method {cfg.method!r} takes no argument(s) "
                    f"{_items(args, unknown)}; it takes {accepted}"]
    nan = [k for k, v in args.items() if _has_nan(v)]
    if nan:
        return [*p, f"method_args: {', '.join(nan)} must not be NaN"]
    kwargs = dict(args)
    if "seed" in accepted and "seed" not in kwargs and "seed" not in bad:
        kwargs["seed"] = cfg.seed
    try:
        get_method(cfg.method, **kwargs)
    except (TypeError, ValueError, ArithmeticError) as err:
        p.append(f"method_args={show(args)}: {_one_line(err)}")
    return p


def _frozen_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    """freeze_encoder=true trains the heads only, each on its own task's gradient: a method
    combines shared-encoder gradients, of which a frozen encoder has none, so every method
    would train the same model (and the block-wise ones have no blocks): only "sum"."""
    if "freeze_encoder" in bad or not cfg.freeze_encoder or "method" in bad:
        return []
    if cfg.method != "sum":
        return [f"freeze_encoder=true trains the heads only, each on its own task's gradient, "
                f"so method={show(cfg.method)} has no shared gradients to combine; use "
                "method=sum (the frozen-encoder baseline)"]
    return []


def _recipe_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    """Problems with the recipe keys: EDA and SMART."""
    from gradlab.augment import EDA_ARGS, check_eda_args
    from gradlab.regularizers import smart_loss

    p: list[str] = []
    tasks = cfg.tasks if isinstance(cfg.tasks, list) else []
    for t in cfg.eda_tasks if "eda_tasks" not in bad else []:
        if t not in tasks:
            p.append(f"eda_tasks: {show(t)} is not among tasks {show(tasks)}")
    if "eda_args" not in bad:
        unknown = [k for k in cfg.eda_args if k not in EDA_ARGS]
        if unknown:
            p.append(f"eda_args: unknown argument(s) {_items(cfg.eda_args, unknown)}; "
                     f"EDA takes {list(EDA_ARGS)}")
        else:
            try:
                check_eda_args(**{**EDA_ARGS, **cfg.eda_args})
            except ValueError as err:
                p.append(f"eda_args={show(cfg.eda_args)}: {_one_line(err)}")
    if "smart_weight" not in bad:
        for t, w in cfg.smart_weight.items():
            if t not in tasks:
                p.append(f"smart_weight: {show(t)} is not among tasks {show(tasks)}")
            if not _is(w, "float") or w < 0:
                p.append(f"smart_weight[{show(t)}]={show(w)} must be a finite number >= 0")
    if "smart_args" not in bad:
        params = inspect.signature(smart_loss).parameters
        accepted = [n for n, q in params.items() if q.kind is q.KEYWORD_ONLY
                    and n not in ("predictions", "generator")]
        for k, v in cfg.smart_args.items():
            if k not in accepted:
                p.append(f"smart_args: unknown argument {_items(cfg.smart_args, [k])}; "
                         f"SMART takes {accepted}")
            elif k == "steps" and (not _is(v, "int") or not 0 <= v <= 1000):
                p.append(f"smart_args['steps']={show(v)} must be an integer in [0, 1000]")
            elif k != "steps" and (not _is(v, "float") or v < 0):
                p.append(f"smart_args[{k!r}]={show(v)} must be a finite number >= 0")
    return p


def _items(mapping: dict, keys: list) -> str:
    """``key=value, ...`` of some of a mapping's items (keys as written, values shortened)."""
    return ", ".join(f"{k if isinstance(k, str) and k.isidentifier() and k.isascii() else show(k)}"
                     f"={show(mapping[k])}" for k in keys)


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, list | tuple):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


# --- encoder, max_length, device -------------------------------------------------------------

#: tiny_encoder fields -> (smallest value, kind); everything else of BertConfig is refused
_TINY_FIELDS = {"num_hidden_layers": (1, "int"), "hidden_size": (1, "int"),
                "num_attention_heads": (1, "int"), "intermediate_size": (1, "int"),
                "max_position_embeddings": (8, "int"), "vocab_size": (1, "int"),
                "type_vocab_size": (2, "int"), "hidden_dropout_prob": (0, "prob"),
                "attention_probs_dropout_prob": (0, "prob"), "layer_norm_eps": (0, "positive"),
                "initializer_range": (0, "positive"), "hidden_act": (None, "act")}
_MINILM_VOCAB = 30522  # the packaged tokenizer's vocabulary (tiny encoders use it)
_TINY_MAX_PARAMETERS = 10**9


def _encoder_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    """The encoder folder, the tiny encoder's fields, and ``max_length`` against the
    encoder's position limit."""
    p, limit = [], None
    if cfg.tiny_encoder is not None:
        tiny_problems, limit = _tiny_problems(cfg.tiny_encoder, cfg.encoder)
        p += tiny_problems
    elif "encoder" not in bad:
        folder_problems, limit = _encoder_folder(cfg.encoder)
        p += folder_problems
    if "max_length" not in bad and limit is not None and cfg.max_length > limit:
        p.append(f"max_length={cfg.max_length} is larger than the encoder's position limit "
                 f"{limit} (max_position_embeddings of {show(cfg.encoder)}"
                 f"{' with tiny_encoder' if cfg.tiny_encoder is not None else ''}); "
                 f"use max_length <= {limit}")
    return p


def _tiny_problems(tiny: Any, encoder: Any) -> tuple[list[str], int | None]:
    """tiny_encoder's fields against BertConfig's rules; (problems, position limit)."""
    from gradlab.model import TINY_ENCODER_DEFAULTS

    if not isinstance(tiny, dict):
        return [f"tiny_encoder={show(tiny)} must be a mapping of BertConfig fields "
                f"({', '.join(_TINY_FIELDS)}) or null"], None
    unknown = [k for k in tiny if k not in _TINY_FIELDS]
    if unknown:
        return [f"tiny_encoder: unknown field(s) {', '.join(show(k) for k in unknown)}; "
                f"allowed: {list(_TINY_FIELDS)}"], None
    values = {**TINY_ENCODER_DEFAULTS, **tiny}
    p = []
    for key, value in tiny.items():
        low, kind = _TINY_FIELDS[key]
        if kind == "int" and not (_is(value, "int") and low <= value <= _INT_MAX):
            p.append(f"tiny_encoder['{key}']={show(value)} must be an integer in "
                     f"[{low}, {_INT_MAX}]")
        elif kind == "prob" and not (_is(value, "float") and 0 <= value < 1):
            p.append(f"tiny_encoder['{key}']={show(value)} must be a number in [0, 1)")
        elif kind == "positive" and not (_is(value, "float") and value > 0):
            p.append(f"tiny_encoder['{key}']={show(value)} must be a finite number > 0")
        elif kind == "act":
            from transformers.activations import ACT2FN

            if not isinstance(value, str) or value not in ACT2FN:
                p.append(f"tiny_encoder['hidden_act']={show(value)} is not one of "
                         f"{sorted(ACT2FN)}")
    if p:
        return p, None
    h, heads = values["hidden_size"], values["num_attention_heads"]
    if h % heads:
        p.append(f"tiny_encoder: hidden_size={h} must be a multiple of "
                 f"num_attention_heads={heads}")
    if encoder == "minilm" and values["vocab_size"] < _MINILM_VOCAB:
        p.append(f"tiny_encoder['vocab_size']={values['vocab_size']} is smaller than the "
                 f"packaged tokenizer's vocabulary ({_MINILM_VOCAB} tokens)")
    size = (values["vocab_size"] + values["max_position_embeddings"]) * h + \
        values["num_hidden_layers"] * (4 * h * h + 2 * h * values["intermediate_size"])
    if size > _TINY_MAX_PARAMETERS:
        p.append(f"tiny_encoder={show(tiny)} has about {size:.2e} parameters; a tiny test "
                 f"encoder has at most {_TINY_MAX_PARAMETERS:.0e}")
    return p, values["max_position_embeddings"]


def _encoder_folder(encoder: str) -> tuple[list[str], int | None]:
    """(problems, position limit) of the packaged encoder or a local folder; a hub id is
    checked when it is loaded."""
    if encoder == "minilm":
        try:
            from gradlab.model import packaged_encoder_dir

            folder = packaged_encoder_dir()
        except (ImportError, ValueError):  # the loader explains it
            return [], None
    else:
        folder = Path(encoder).expanduser()
        if not folder.exists():
            nested = os.sep in encoder.strip("/").split("/", 1)[-1]  # more than org/name
            if encoder.startswith((".", "/", "~")) or nested:
                return [f"encoder={show(encoder)}: no such folder"], None
            return [], None  # a hub id
        if not (folder / "config.json").is_file():
            return [f"encoder={show(encoder)}: the folder has no config.json"], None
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        limit = config.get("max_position_embeddings")
        limit = None if limit is None else int(limit)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        return [f"encoder={show(encoder)}: cannot read {folder / 'config.json'} "
                f"({_one_line(err)})"], None
    if limit is None:  # no absolute positions: no limit to check here
        return [], None
    if str(config.get("model_type", "")).endswith("roberta"):
        limit -= int(config.get("pad_token_id") or 1) + 1  # positions start after the pad id
    return [], limit


def _device_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    if "device" in bad:
        return []
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", cfg.device)
    if match is None:
        return [f"device={show(cfg.device)} must be 'cpu', 'cuda' or 'cuda:N'"]
    if cfg.device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else \
            "no CUDA device is visible"
        return [f"device={cfg.device!r} but {why}; use device=cpu"]
    index, count = int(match.group(1) or 0), torch.cuda.device_count()
    if index >= count:
        return [f"device={cfg.device!r} but only {count} CUDA device(s) are visible "
                f"(cuda:0 to cuda:{count - 1})"]
    return []


__all__ = ["config_problems", "key_of", "show"]


def _example_probe_problems(cfg: TrainConfig, bad: set[str]) -> list[str]:
    """example_probe_size: at least 2 examples per task (a leave-one-out task mean needs
    another example); per-example losses: no 1 - Pearson r (a loss of the whole batch)."""
    if "example_probe_every" in bad or not cfg.example_probe_every:
        return []
    p = []
    tasks = cfg.tasks if isinstance(cfg.tasks, list) else []
    size = cfg.example_probe_size
    if "example_probe_size" not in bad and not 2 * max(len(tasks), 1) <= size <= 4096:
        p.append(f"example_probe_size={show(size)} must be an integer in "
                 f"[{2 * max(len(tasks), 1)}, 4096] (2 examples per task at least) when "
                 "example_probe_every > 0")
    if "regression_loss" not in bad and cfg.regression_loss == "pearson":
        from gradlab.config import task_table_args
        from gradlab.tasks import TaskTableError, task_table

        try:
            table = task_table(**task_table_args(cfg))
        except TaskTableError:
            return p
        regression = [t for t, spec in table.items() if spec.loss == "pearson"]
        if regression:
            p.append(f"example_probe_every={show(cfg.example_probe_every)}: per-example "
                     f"gradients need a per-example loss, but regression_loss='pearson' (1 - "
                     f"Pearson r over the batch) is the loss of {regression}; use "
                     "regression_loss='mse' or example_probe_every=0")
    return p
