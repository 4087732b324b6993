"""Experiment configuration: a dataclass of commented defaults -> YAML file -> key=value overrides.

The file and the overrides are merged first, then the merged result is validated once:
unknown keys and bad values are errors, all of them listed at once, each naming the key and
the value (every key's type and range: `gradlab.config_checks`). YAML is read with
`gradlab.safe_yaml` (no objects, no alias bombs). Renamed keys of earlier versions
(``DEPRECATED_KEYS``) are still read, with a warning, so that saved run folders resume and
evaluate. The resolved config is saved with every run and checkpoint. Components never
receive this object: the builders unpack it into plain arguments.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from gradlab.config_checks import show
from gradlab.safe_yaml import MAX_YAML_NODES, YAMLRefusedError, safe_load

#: old key -> its current name; an old key is read as the new one, with a FutureWarning
DEPRECATED_KEYS = {"sst_head": "single_head", "sts_loss": "regression_loss"}


class ConfigError(ValueError):
    """One error that lists every problem found in a config."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


@dataclass
class TrainConfig:
    # --- run --------------------------------------------------------------------------
    # run folder name under runs_dir (no path separators); None: a new name per run,
    # "<method>-<schedule>-<YYYYmmdd-HHMMSS>" (gradlab.training.default_run_name)
    name: str | None = None
    runs_dir: str = "runs"  # where run folders are created
    seed: int = 0  # seeds torch, numpy, random, data order, probe batches and methods
    # --- data -------------------------------------------------------------------------
    data_dir: str | None = None  # None: $GRADLAB_DATA, ./data, ../shared/data
    tasks: list[str] = field(default_factory=lambda: ["sst", "para", "sts"])
    train_limit: int | None = None  # use only the first N training rows of each task
    dev_limit: int | None = None  # evaluate on the first N dev rows of each task
    strict_data: bool = False  # refuse malformed rows instead of skipping them
    max_length: int = 64  # truncation length in tokens (pairs: both sentences together)
    batch_size: int = 16  # examples per task per optimizer step
    eval_batch_size: int = 128
    drop_last: bool = False  # skip each epoch's final partial batch (all batches equal-sized)
    # folder for tokenized datasets (.npz, keyed by file, reader and tokenizer) that other
    # processes reuse; None: tokenize once per process
    tokenization_cache: str | None = None
    # per-task file and column overrides, e.g. {"para": {"train": "qqp.tsv",
    # "text_columns": ["question1", "question2"]}}
    task_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    # extra tasks from any labelled sentence file, each with its own head, e.g.
    # {"cola": {"train": "cola-train.tsv", "dev": "cola-dev.tsv", "text_columns": ["sentence"],
    #  "label_column": "label", "label_kind": "class", "num_classes": 2, "label_range": [0, 1]}}
    # (list the name in `tasks` too)
    aux_tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    eda_tasks: list[str] = field(default_factory=list)  # EDA-augment these tasks' train data
    eda_fraction: float = 0.1  # share of the training rows that get an augmented copy
    eda_args: dict[str, Any] = field(default_factory=dict)  # alpha_sr/ri/rs, p_rd, n_aug
    # --- model ------------------------------------------------------------------------
    encoder: str = "minilm"  # "minilm" (packaged MiniLM-L6), a local path or a hub id
    tiny_encoder: dict[str, int] | None = None  # random BERT config for tests
    pooling: str = "mean"  # "mean" | "cls"
    single_head: str = "linear"  # single-sentence tasks (SST, aux): "linear" | "mlp"
    pair_head: str = "bi"  # PARA/STS: "bi" | "cross" | "cosine" (cosine: STS only)
    para_head: str | None = None  # override pair_head for PARA
    sts_head: str | None = None  # override pair_head for STS
    head_dropout: float = 0.1
    # train the task heads only: the encoder's weights are frozen (no encoder gradients, so
    # no Gramians, probes or counterfactuals are logged and the method has nothing to act
    # on); the baseline that says what fine-tuning adds
    freeze_encoder: bool = False
    # loss of the regression tasks (STS, aux): "mse" | "pearson" (1 - Pearson r over the batch)
    regression_loss: str = "mse"
    smart_weight: dict[str, float] = field(default_factory=dict)  # SMART weight per task
    smart_args: dict[str, Any] = field(default_factory=dict)  # epsilon, step_size, noise_var, steps
    # --- optimisation -----------------------------------------------------------------
    method: str = "sum"  # gradient method: sum | mean | pcgrad | ... (gradlab.methods)
    method_args: dict[str, Any] = field(default_factory=dict)  # e.g. {"reduction": "mean"}
    schedule: str = "joint"  # joint | round_robin | sequential
    steps: int = 300  # optimizer steps (step_budget=optimizer) or batches per task
    # "optimizer": `steps` optimizer steps whatever the schedule; "per_task": `steps`
    # batches of each task, so a round-robin or sequential run takes steps x tasks
    # optimizer steps and sees the same examples as a joint run (fair comparisons)
    step_budget: str = "optimizer"
    lr: float = 5e-5  # AdamW learning rate (heads, and the encoder unless encoder_lr is set)
    weight_decay: float = 0.01
    # per-task optimizers: each head its own AdamW parameter group at lr/weight_decay, the
    # shared encoder one with its own (usually more conservative) values
    encoder_lr: float | None = None
    encoder_weight_decay: float | None = None
    warmup_ratio: float = 0.1  # linear warmup share of the steps, then linear decay
    max_grad_norm: float | None = 1.0  # clip the update's norm; None: no clipping
    nonfinite: str = "error"  # "error" | "skip": what a NaN/inf loss or gradient does
    # with nonfinite="skip": stop (naming the step) once more than this share of the run's
    # optimizer steps were skipped (0: the first skip stops, 1: never stop)
    max_skipped_share: float = 0.1
    # --- evaluation, probes, checkpoints ----------------------------------------------
    eval_every: int = 0  # evaluate on dev every N steps (0: only at the end)
    probe_every: int = 25  # every N steps: all task gradients on probe batches (eval mode)
    probe_batch_size: int | None = None  # examples per task per probe batch; null: batch_size
    probe_replicates: int = 2  # K independent probe batches per task (K >= 2: calibration)
    counterfactual_methods: list[str] = field(default_factory=lambda: ["sum", "mean", "pcgrad"])
    measure_counterfactual: bool = False  # virtual step per method on probe steps (costly)
    # per-example gradient Gramian of N training examples (about N/T per task) every N steps
    example_probe_every: int = 0  # 0: off
    example_probe_size: int = 48  # N examples, drawn per (seed, step) from the training sets
    log_train_gramians: bool = True  # log the Gramian of every joint training step
    checkpoint_every: int = 0  # save checkpoints/last (and step-N) every N steps; 0: at the end
    keep_checkpoints: int = 2  # periodic step-N checkpoints kept (besides last and best)
    save_checkpoints: bool = True
    progress: bool = True  # tqdm progress bars
    threads: int | None = None  # torch CPU threads (None: torch's default)
    device: str = "cpu"  # "cpu" or "cuda[:N]"
    precision: str = "fp32"  # "fp32" | "bf16" (autocast of the forward passes)
    # storage of the per-task gradients J [T, P]: "float32" | "bfloat16" (half the memory;
    # Gramians still summed in float64, the update in float32); float16 is refused (range)
    gradient_dtype: str = "float32"

    @property
    def probe_size(self) -> int:
        """Examples per task in each probe batch: ``probe_batch_size``, or ``batch_size``
        when it is null (the default), so that probe and training gradients are equally noisy.

        >>> TrainConfig(batch_size=32).probe_size, TrainConfig(probe_batch_size=8).probe_size
        (32, 8)
        """
        return self.batch_size if self.probe_batch_size is None else self.probe_batch_size

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps the run takes: ``steps``, times the number of tasks when
        ``step_budget`` is "per_task" and the schedule steps one task at a time.

        >>> TrainConfig(steps=80, schedule="round_robin", step_budget="per_task").optimizer_steps
        240
        """
        if self.step_budget == "per_task" and self.schedule != "joint":
            return self.steps * len(self.tasks)
        return self.steps


def stored_probe_size(config: Mapping[str, Any]) -> int:
    """`TrainConfig.probe_size` of a run's stored config (a plain mapping): its
    probe_batch_size, or its batch_size when that is null (runs stored before the null
    default hold 16), or the default batch_size when the config names neither."""
    return int(config.get("probe_batch_size") or config.get("batch_size")
               or TrainConfig.batch_size)


def config_keys() -> list[str]:
    """Names of every valid config key."""
    return [f.name for f in fields(TrainConfig)]


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Build a TrainConfig from defaults, an optional YAML file and ``key=value`` overrides.

    The file's keys and the overrides are merged, then validated together: one `ConfigError`
    lists every problem of the file, the overrides and the merged values.

    Example:
        >>> cfg = load_config(None, ["steps=10", "method=pcgrad"])
        >>> (cfg.steps, cfg.method)
        (10, 'pcgrad')
    """
    source = "config" if path is None else str(path)
    values, file_problems = ({}, []) if path is None else _read_file(Path(path))
    changes, problems = _parse_overrides(overrides)
    if file_problems:  # nothing to validate the overrides with
        raise ConfigError(file_problems + problems, source)
    values.update(changes)
    return config_from_dict(values, source, problems)


def _read_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The keys of a YAML config file (renamed keys upgraded), or the problem reading it."""
    if not path.is_file():
        return {}, [f"config file {path} does not exist"]
    try:
        loaded = safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        return {}, [f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                    f"{err.start})"]
    except OSError as err:
        return {}, [f"cannot read {path}: {err.strerror or err}"]
    except (yaml.YAMLError, YAMLRefusedError) as err:
        return {}, [f"{path} is not valid YAML: {' '.join(str(err).split())}"]
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        return {}, [f"{path} must hold a mapping of keys, found {type(loaded).__name__}"]
    return upgrade_keys(loaded, str(path)), []


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["key=value", ...]`` (or a mapping) -> {key: value}: the one override parser of the
    CLI, sweeps and inference. Values are read as YAML (`parse_value`); renamed keys get
    their current names. The keys are not checked here: `load_config` validates the merged
    config. Raises `ConfigError` listing every item that is not ``key=value``.

    >>> parse_overrides(["steps=10", "tasks=[sst, sts]", "lr=1e-4"])
    {'steps': 10, 'tasks': ['sst', 'sts'], 'lr': 0.0001}
    """
    values, problems = _parse_overrides(overrides)
    if problems:
        raise ConfigError(problems, "overrides")
    return values


def _parse_overrides(overrides: Sequence[str] | Mapping[str, Any] | None
                     ) -> tuple[dict[str, Any], list[str]]:
    if overrides is None:
        return {}, []
    if isinstance(overrides, Mapping):
        return upgrade_keys(overrides, "overrides"), []
    if isinstance(overrides, str):
        raise TypeError(f"overrides must be a list of 'key=value' items, found the string "
                        f"{overrides!r}")
    values, problems = {}, []
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r} is not of the form key=value")
            continue
        try:
            values[key.strip()] = parse_value(raw)
        except YAMLRefusedError as err:
            problems.append(f"{key.strip()}: the value is refused: {err}")
    return upgrade_keys(values, "overrides"), problems


def upgrade_keys(values: Mapping[str, Any], source: str = "config", *, warn: bool = True
                 ) -> dict[str, Any]:
    """``values`` with the renamed keys of earlier versions (`DEPRECATED_KEYS`) under their
    current names, with a FutureWarning naming ``source`` (unless ``warn`` is False).

    An old key given together with its new one is dropped when they agree; when they
    differ, both stay, and `config_from_dict` reports the contradiction.
    """
    out = dict(values)
    for old, new in DEPRECATED_KEYS.items():
        if old not in out:
            continue
        if new in out and out[new] != out[old]:
            continue  # config_from_dict names the conflict
        if warn:
            warnings.warn(f"{source}: config key {old!r} is deprecated; it is read as {new!r}",
                          FutureWarning, stacklevel=3)
        value = out.pop(old)
        out.setdefault(new, value)
    return out


def parse_value(raw: str) -> Any:
    """A YAML scalar/list/mapping; numbers YAML 1.1 leaves as strings ("1e-4") become floats.
    Text that is not YAML is kept as a string; raises `YAMLRefusedError` for an alias bomb.
    """
    if not raw.strip():
        return None
    try:
        value = safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def config_from_dict(values: Mapping[str, Any], source: str = "config",
                     problems: Sequence[str] = ()) -> TrainConfig:
    """Validate a mapping of keys and build the config; every problem is listed at once
    (``problems``: ones the caller found already, e.g. malformed overrides)."""
    valid = config_keys()
    values = upgrade_keys(values, source)
    problems = list(problems)
    unknown = [key for key in values if key not in valid]
    for key in unknown:
        if key in DEPRECATED_KEYS:
            new = DEPRECATED_KEYS[key]
            problems.append(f"{key}={values[key]!r} (the deprecated name of {new!r}) "
                            f"contradicts {new}={values[new]!r}; give only {new!r}")
            continue
        close = difflib.get_close_matches(key, valid, n=1) if isinstance(key, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"unknown key {show(key)}{hint}")
    known = {k: v for k, v in values.items() if k in valid}
    defaults = TrainConfig()
    for key, value in list(known.items()):
        if isinstance(getattr(defaults, key), float) and isinstance(value, str):
            try:
                known[key] = float(value)  # YAML 1.1 reads "5e-5" as a string
            except ValueError:
                pass  # the type check names it
    cfg = TrainConfig(**known)
    problems += validate(cfg)
    if any(key not in DEPRECATED_KEYS for key in unknown):
        problems.append("valid keys: " + ", ".join(valid))
    if problems:
        raise ConfigError(problems, source)
    return cfg


def task_table_args(cfg: TrainConfig) -> dict[str, Any]:
    """The config keys that define a run's task table, as `gradlab.tasks.task_table`'s
    arguments: ``task_table(**task_table_args(cfg))``."""
    return {"tasks": cfg.tasks, "aux_tasks": cfg.aux_tasks, "task_files": cfg.task_files,
            "single_head": cfg.single_head, "pair_head": cfg.pair_head,
            "para_head": cfg.para_head, "sts_head": cfg.sts_head,
            "regression_loss": cfg.regression_loss}


def validate(cfg: TrainConfig) -> list[str]:
    """Every problem with a config's values (empty list when it is fine): each key's type and
    range (`gradlab.config_checks`)."""
    from gradlab.config_checks import config_problems

    return config_problems(cfg)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain JSON/YAML-able values."""
    return asdict(cfg)


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` with ``changes`` (config keys) applied, validated as a whole.

    >>> replace(TrainConfig(), steps=5, method="pcgrad").steps
    5
    """
    values = to_dict(cfg)
    values.update(upgrade_keys(changes, "changes"))
    return config_from_dict(values)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (the file ``load_config`` reads back)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


__all__ = [
    "DEPRECATED_KEYS",
    "ConfigError",
    "MAX_YAML_NODES",
    "TrainConfig",
    "YAMLRefusedError",
    "config_from_dict",
    "config_keys",
    "load_config",
    "parse_overrides",
    "parse_value",
    "replace",
    "safe_load",
    "save_config",
    "task_table_args",
    "to_dict",
    "upgrade_keys",
    "validate",
]
