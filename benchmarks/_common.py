"""Shared parts of the benchmark scripts: machine report, timing statistics, fixed batches,
and the two training steps being compared.

- ``summed_step``: the classic step (forward every task, sum the losses, one backward, clip,
  AdamW step), with autograd's own ``.grad`` tensors and no engine.
- ``EngineStep``: the step as the training loop runs it for a joint schedule: the public
  ``gradlab.step.train_step`` (bind_row + backward per task, block Gramians, method,
  write_update, clip), AdamW and scheduler steps, then the Monitor writing to a real run
  store, timing each phase by observing the engine's and the method's calls.

Scripts import this module first: it puts the repository root on ``sys.path`` so that
``python benchmarks/NAME.py`` works from a checkout without installing gradlab.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"

#: the --quick encoder: a tiny random BERT (same vocabulary as MiniLM, so the same token ids)
QUICK_ENCODER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                 "intermediate_size": 64}

#: --encoder-size: random BERTs built from a config (``tiny_encoder``; vocabulary 30522, 512
#: positions), so that no weights, package or download are needed; step times do not depend
#: on the weights' values.
ENCODER_SIZES = {
    "tiny": QUICK_ENCODER,
    "minilm": {"num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12,
               "intermediate_size": 1536},  # all-MiniLM-L6-v2's shape
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12,
             "intermediate_size": 3072},  # bert-base-uncased's shape
}

#: [CLS], [SEP], [PAD] of BERT's uncased vocabulary (MiniLM's too): the random-encoder setups
#: use them where the packaged tokenizer is not installed
BERT_SPECIAL_IDS = {"cls_id": 101, "sep_id": 102, "pad_id": 0}

#: the three tasks of the default setting
TASK_NAMES = ("sst", "para", "sts")

#: the load average (1 min) above which timings are not trusted
QUIET_LOAD = 0.5


# --- command line, machine report, results --------------------------------------------------


def base_parser(description: str, *, malloc_option: bool = False) -> argparse.ArgumentParser:
    """The options every script takes: --quick, --threads, --no-save (and --warm-malloc)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="tiny random BERT and few steps: a smoke run in seconds")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch.get_num_threads())")
    parser.add_argument("--no-save", action="store_true",
                        help="do not append the results to benchmarks/results/")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="append the JSON line to DIR/<script>.jsonl instead of "
                             "benchmarks/results/ (e.g. one folder per GPU check)")
    if malloc_option:
        parser.add_argument("--warm-malloc", action="store_true",
                            help="keep freed memory mapped (glibc mallopt): steps stop paying "
                                 "page faults for fresh memory; default: the normal allocator")
    return parser


def add_device_options(parser: argparse.ArgumentParser, *, precision: bool = True) -> None:
    """--device, --encoder-size (and --precision): where and on what encoder to measure."""
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda[:N] (CUDA: synchronized timings, peak GPU memory)")
    parser.add_argument("--encoder-size", choices=sorted(ENCODER_SIZES), default=None,
                        help="a random BERT of this shape built from a config (minilm: "
                             "MiniLM-L6's, base: BERT-base's, tiny: --quick's); default: "
                             "the packaged MiniLM-L6 (tiny with --quick)")
    if precision:
        parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                            help="forward passes under bf16 autocast, or fp32 (default)")


def encoder_label(args: argparse.Namespace) -> str:
    """The encoder a script measures, in words."""
    size = getattr(args, "encoder_size", None)
    if size == "minilm":
        return "random BERT of MiniLM-L6's shape " + str(ENCODER_SIZES[size])
    if size == "base":
        return "random BERT of BERT-base's shape " + str(ENCODER_SIZES[size])
    if size == "tiny" or args.quick:
        return f"tiny random BERT {QUICK_ENCODER}"
    return "MiniLM-L6"


def gpu_info(device: str) -> dict[str, Any] | None:
    """The CUDA device's name, memory and capability (None on the CPU)."""
    if not str(device).startswith("cuda"):
        return None
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    return {"name": props.name, "memory_gib": props.total_memory / 2**30,
            "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda}


def start(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Set the thread count, print the machine and load, return the report's header."""
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    quiet_transformers()
    malloc = warm_malloc() if getattr(args, "warm_malloc", False) else None
    info = machine_info()
    load = os.getloadavg()
    print(f"== benchmarks/{name}.py{' --quick' if args.quick else ''}")
    print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['memory_gb']:.1f} GB, "
          f"{info['platform']}")
    print(f"python {info['python']}, torch {info['torch']}, transformers "
          f"{info['transformers']}; torch threads: {threads}")
    if malloc is not None:
        print(f"--warm-malloc: glibc mallopt {'applied' if malloc else 'NOT available'}")
    gpu = gpu_info(getattr(args, "device", "cpu"))
    if gpu is not None:
        print(f"device: {args.device} {gpu['name']}, {gpu['memory_gib']:.0f} GiB, "
              f"sm {gpu['capability']}, CUDA {gpu['cuda']}")
    print(f"load average at start: {_load_str(load)}")
    if load[0] > QUIET_LOAD:
        print(f"WARNING: 1-minute load average {load[0]:.2f} > {QUIET_LOAD}: other work is "
              "running and distorts timings; rerun on a quiet machine for reportable numbers")
    print()
    return {"benchmark": name, "started_at": _now(), "quick": bool(args.quick),
            "threads": threads, "warm_malloc": malloc, "machine": info,
            "device": getattr(args, "device", "cpu"), "gpu": gpu,
            "precision": getattr(args, "precision", "fp32"),
            "encoder": encoder_label(args),
            "load_start": list(load),
            "results_dir": getattr(args, "results_dir", None),
            "argv": sys.argv[1:], "command": " ".join(["python", f"benchmarks/{name}.py",
                                                        *sys.argv[1:]])}


def finish(header: dict[str, Any], results: dict[str, Any], *, save: bool = True) -> None:
    """Print the load at the end and append header + results as one JSON line."""
    load = os.getloadavg()
    print(f"\nload average at end: {_load_str(load)}")
    if max(header["load_start"][0], load[0]) > QUIET_LOAD:
        print("NOTE: the machine was not quiet during this run; treat the numbers as rough.")
    folder = header.pop("results_dir", None) or RESULTS_DIR
    record = {**header, "load_end": list(load), "finished_at": _now(), "results": results}
    if save:
        folder = Path(folder).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{header['benchmark']}.jsonl"
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_json_default) + "\n")
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        print(f"results appended to {shown}")


def quiet_transformers() -> None:
    """No weight-loading progress bars in the benchmark output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def machine_info() -> dict[str, Any]:
    import transformers

    cpu_model = platform.processor() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        match = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
        if match:
            cpu_model = match.group(1).strip()
    except OSError:
        pass
    try:
        mem_kb = int(re.search(r"MemTotal:\s+(\d+)",
                               Path("/proc/meminfo").read_text(encoding="utf-8")).group(1))
    except (OSError, AttributeError):
        mem_kb = 0
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "memory_gb": mem_kb / 2**20,
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__}


def _load_str(load: Sequence[float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load) + " (1 / 5 / 15 min)"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


# --- statistics and tables --------------------------------------------------------------------


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, IQR, mean and count of a list of durations (seconds)."""
    xs = sorted(times)
    if not xs:
        return {"n": 0, "median": math.nan, "q25": math.nan, "q75": math.nan,
                "iqr": math.nan, "mean": math.nan, "min": math.nan}
    if len(xs) >= 2:
        q25, _, q75 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q25 = q75 = xs[0]
    return {"n": len(xs), "median": statistics.median(xs), "q25": q25, "q75": q75,
            "iqr": q75 - q25, "mean": statistics.fmean(xs), "min": xs[0]}


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """A plain fixed-width table (floats with 3 significant decimals)."""
    def fmt(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))


def interleaved(variants: Sequence[str], rounds: int, seed: int = 0) -> list[tuple[int, str]]:
    """(round, variant): every variant once per round, in a fresh seeded random order each
    round, so that no variant always runs first or after the same neighbour (what the
    previous step left in the allocator and caches matters) and slow drift cancels out."""
    order = []
    for r in range(rounds):
        names = list(variants)
        random.Random(seed * 100_003 + r).shuffle(names)
        order.extend((r, v) for v in names)
    return order


def warm_malloc() -> bool:
    """Ask glibc's malloc to keep freed memory mapped (no heap trimming, mmap only above
    32 MiB), so that a step re-uses pages instead of page-faulting fresh ones. Off by default:
    a run uses the default allocator. Returns False where it is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)
                    and libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh memory touched for the first time)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# --- model, batches ---------------------------------------------------------------------------


def make_config(quick: bool, tasks: Sequence[str] = TASK_NAMES, *,
                encoder_size: str | None = None, **overrides: Any):
    """A TrainConfig with the training defaults (MiniLM, or the tiny BERT with --quick; a
    random BERT of ``encoder_size``'s shape when given)."""
    from gradlab.config import load_config

    values: dict[str, Any] = {"tasks": list(tasks), "progress": False, "seed": 0}
    if encoder_size is not None:
        values["tiny_encoder"] = dict(ENCODER_SIZES[encoder_size])
    elif quick:
        values["tiny_encoder"] = dict(QUICK_ENCODER)
    values.update(overrides)
    return load_config(None, values)


def random_batches(model, tasks: Sequence[str], *, batch_size: int, seq_len: int,
                   special: Mapping[str, int], vocab_size: int, seed: int
                   ) -> dict[str, dict[str, torch.Tensor]]:
    """Fixed random batches, every sequence exactly ``seq_len`` tokens ([CLS] ids [SEP], no
    padding). Single-sentence tasks: one [B, L] input; bi-encoder pair tasks: two [B, L]
    inputs (suffixes _a, _b). Labels: 5 classes (sst-like), 0/1 (para), uniform in [0, 5] (sts).
    """
    from gradlab.tasks import TASKS

    generator = torch.Generator().manual_seed(seed)

    def ids() -> dict[str, torch.Tensor]:
        # 999..: past BERT's [PAD], [unused*], [UNK], [CLS], [SEP], [MASK]
        body = torch.randint(999, vocab_size, (batch_size, seq_len - 2), generator=generator)
        input_ids = torch.cat([torch.full((batch_size, 1), special["cls_id"]), body,
                               torch.full((batch_size, 1), special["sep_id"])], dim=1)
        return {"input_ids": input_ids,
                "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
                "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.long)}

    batches = {}
    for task in tasks:
        layout = model.layout(task)
        if layout == "bi":
            batch = {f"{k}_a": v for k, v in ids().items()}
            batch |= {f"{k}_b": v for k, v in ids().items()}
        elif layout == "single":
            batch = ids()
        else:
            raise ValueError(f"task {task!r}: layout {layout!r} is not benchmarked")
        spec = TASKS[task]
        if spec.output == "class":
            labels = torch.randint(0, spec.num_classes, (batch_size,), generator=generator)
        elif spec.output == "binary":
            labels = torch.randint(0, 2, (batch_size,), generator=generator).float()
        else:
            labels = 5.0 * torch.rand(batch_size, generator=generator)
        batch["labels"] = labels
        batches[task] = batch
    return batches


def batch_shape_note(model, tasks: Sequence[str], batch_size: int, seq_len: int) -> str:
    parts = []
    for task in tasks:
        layout = model.layout(task)
        n = 2 if layout == "bi" else 1
        parts.append(f"{task}: {n} x [{batch_size}, {seq_len}]" + (" (bi-encoder)"
                                                                    if n == 2 else ""))
    return "; ".join(parts)


@dataclass
class Setup:
    """The run's parts (``gradlab.build.Parts``: model, engine, AdamW with the run's parameter
    groups, LR schedule, method) and the fixed batches of one benchmark process."""

    cfg: Any
    parts: Any
    batches: dict[str, dict[str, torch.Tensor]]

    @property
    def model(self):
        return self.parts.model

    @property
    def tasks(self) -> list[str]:
        return self.parts.tasks

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.parts.optimizer

    @property
    def scheduler(self):
        return self.parts.scheduler

    @property
    def tokenizer(self):
        """The encoder's tokenizer; None for a random encoder without the packaged MiniLM."""
        return self.parts.tokenizer

    @property
    def special(self) -> dict[str, int]:
        return self.parts.special

    @property
    def num_shared(self) -> int:
        return sum(p.numel() for _, p in self.model.shared_parameters())

    @property
    def device_type(self) -> str:
        return torch.device(self.cfg.device).type

    def sync(self) -> None:
        """Wait for the GPU's queued work (nothing on the CPU): timings end here."""
        if self.device_type == "cuda":
            torch.cuda.synchronize()

    def autocast(self):
        """The forward passes' precision context (the run's ``precision``, as TaskLoss)."""
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def build_setup(cfg, *, seq_len: int = 64, seed: int = 0, method: str = "sum") -> Setup:
    """The run's parts from gradlab's builders (no data read: fixed random batches instead;
    no engine yet: ``make_engine`` allocates one, so that memory.py can measure it)."""
    from transformers import get_linear_schedule_with_warmup

    from gradlab.build import (
        Parts,
        build_counterfactuals,
        build_method,
        build_optimizer,
    )
    from gradlab.schedules import get_schedule
    from gradlab.step import TaskLoss

    torch.manual_seed(cfg.seed)
    model, tokenizer, special = _model_and_tokens(cfg)
    model.train()
    tasks = list(cfg.tasks)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                encoder_lr=cfg.encoder_lr,
                                encoder_weight_decay=cfg.encoder_weight_decay)
    # A long schedule: the LR never reaches 0 during a benchmark.
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, 10**6)
    parts = Parts(
        tasks=tasks, model=model, tokenizer=tokenizer, special=special, train_sets={},
        dev_sets={}, batchers={}, probe_batches={}, engine=None, optimizer=optimizer,
        scheduler=scheduler, method_name=method,
        method=build_method(method, seed=cfg.seed),
        counterfactuals=build_counterfactuals(cfg.counterfactual_methods, cfg.seed),
        schedule=get_schedule("joint", len(tasks), 10**6), total_steps=10**6,
        loss=TaskLoss(specs=model.task_specs, precision=cfg.precision),
        max_length=cfg.max_length,
        max_grad_norm=cfg.max_grad_norm, device=cfg.device)
    parts.probe_batches = random_batches(model, tasks, batch_size=cfg.probe_size,
                                         seq_len=seq_len, special=special,
                                         vocab_size=model.encoder.config.vocab_size,
                                         seed=seed + 1)
    batches = random_batches(model, tasks, batch_size=cfg.batch_size, seq_len=seq_len,
                             special=special, vocab_size=model.encoder.config.vocab_size,
                             seed=seed)
    if torch.device(cfg.device).type != "cpu":  # drawn on the CPU (same ids on every device)
        parts.probe_batches = _to_device(parts.probe_batches, cfg.device)
        batches = _to_device(batches, cfg.device)
    return Setup(cfg, parts, batches)


def _model_and_tokens(cfg):
    """The config's model, its tokenizer and special token ids. A random encoder where the
    packaged MiniLM (whose tokenizer the random ones borrow) is not installed, e.g. on a GPU
    machine: the model without a tokenizer (None), BERT's special ids."""
    from gradlab.build import model_from_config
    from gradlab.data import special_token_ids
    from gradlab.model import EncoderError, MultitaskModel, load_encoder

    try:
        model, tokenizer = model_from_config(cfg)
        return model, tokenizer, special_token_ids(tokenizer)
    except EncoderError:
        if cfg.tiny_encoder is None:
            raise
    from gradlab.config import task_table_args
    from gradlab.tasks import task_table

    # what gradlab.build.build_model does, less the tokenizer (same seeds, same weights)
    encoder = load_encoder(cfg.encoder, tiny=cfg.tiny_encoder, seed=cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = MultitaskModel(encoder, task_table(**task_table_args(cfg)), pooling=cfg.pooling,
                               dropout=cfg.head_dropout)
    return model.to(cfg.device), None, dict(BERT_SPECIAL_IDS)


def _to_device(batches: Mapping[str, Mapping[str, torch.Tensor]], device: str
               ) -> dict[str, dict[str, torch.Tensor]]:
    return {t: {k: v.to(device) for k, v in b.items()} for t, b in batches.items()}


# --- the steps --------------------------------------------------------------------------------


def summed_step(s: Setup, timings: dict[str, float] | None = None, *,
                set_to_none: bool = True) -> None:
    """The classic step: forward all tasks, sum the losses, one backward, clip, AdamW step.

    set_to_none: PyTorch's default zero_grad (autograd allocates fresh .grad tensors every
    step); False zeroes the previous step's .grad tensors in place instead.
    """
    from gradlab.step import clip_gradients
    from gradlab.tasks import task_loss

    t0 = time.perf_counter()
    s.optimizer.zero_grad(set_to_none=set_to_none)

    def loss(task: str) -> torch.Tensor:
        with s.autocast():  # the forward pass only; the loss in float32 (as TaskLoss)
            predictions = s.model(task, s.batches[task])
        return task_loss(s.model.task_specs[task], predictions.float(), s.batches[task]["labels"])

    total = sum(loss(t) for t in s.tasks)
    if not math.isfinite(total.item()):
        raise FloatingPointError("non-finite summed loss")
    total.backward()
    t1 = time.perf_counter()
    clip_gradients(s.model, s.cfg.max_grad_norm)
    s.optimizer.step()
    s.scheduler.step()
    t2 = time.perf_counter()
    if timings is not None:
        timings["forward_backward"] = t1 - t0
        timings["optimizer"] = t2 - t1


#: phases of an engine step; "forward_backward" is the rest of ``train_step`` (forward and
#: backward passes, loss and gradient checks, clipping)
ENGINE_PHASES = ("forward_backward", "gramian", "method", "update", "optimizer", "monitor")


@dataclass
class EngineStep:
    """One method's step as the training loop runs it for a joint schedule:
    ``gradlab.step.train_step`` (the public step itself), AdamW and scheduler steps, then the
    Monitor. The Gramian, method and update phases are timed by observing the engine's and
    the method's calls (wrappers that time them), not by a copy of the step."""

    setup: Setup
    method_name: str
    parts: Any
    monitor: Any = None
    writer: Any = None
    step: int = 0

    def __call__(self, timings: dict[str, float] | None = None) -> None:
        from gradlab.step import train_step

        s, parts = self.setup, self.parts
        observed = dict.fromkeys(("gramian", "method", "update"), 0.0)
        with _timed(parts.engine, "block_gramians", observed, "gramian"), \
                _timed(parts.engine, "write_update", observed, "update"), \
                _timed(parts, "method", observed, "method"):
            t0 = time.perf_counter()
            result = train_step(parts, s.tasks, self.step, batches=s.batches)
            t1 = time.perf_counter()
        if result.fault is not None:
            raise FloatingPointError(f"{self.method_name}: {result.fault}")
        lr = s.scheduler.get_last_lr()[0]
        s.optimizer.step()
        s.scheduler.step()
        t2 = time.perf_counter()
        if self.monitor is not None:
            self.monitor.train_step(self.step, s.tasks, result.losses, result.weights,
                                    result.output, result.block_gramians, lr=lr,
                                    grad_norm=result.grad_norm, step_time=t2 - t0)
        t3 = time.perf_counter()
        self.step += 1
        if timings is not None:
            timings["forward_backward"] = t1 - t0 - sum(observed.values())
            timings.update(observed)
            timings["optimizer"] = t2 - t1
            timings["monitor"] = t3 - t2

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _timed:
    """Within the block, calls of ``owner.name`` add their duration to ``timings[key]``."""

    def __init__(self, owner: Any, name: str, timings: dict[str, float], key: str) -> None:
        self.owner, self.name, self.timings, self.key = owner, name, timings, key

    def __enter__(self) -> None:
        inner = getattr(self.owner, self.name)
        self.had_own = self.name in vars(self.owner)
        self.inner = inner

        class Timed:
            def __call__(_, *args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    self.timings[self.key] += time.perf_counter() - t0

            def __getattr__(_, attr: str) -> Any:  # e.g. a method's ``blockwise``
                return getattr(inner, attr)

        setattr(self.owner, self.name, Timed())

    def __exit__(self, *exc: Any) -> None:
        if self.had_own:
            setattr(self.owner, self.name, self.inner)
        else:
            delattr(self.owner, self.name)


def make_engine(s: Setup):
    """A gradient engine for the setup's model: allocates J [T, P] and the update [P]."""
    from gradlab.engine import GradientEngine
    from gradlab.model import block_name

    shared = s.model.shared_parameters()
    return GradientEngine([p for _, p in shared], [block_name(n) for n, _ in shared],
                          num_tasks=len(s.tasks))


def make_engine_step(s: Setup, method_name: str, engine, *, instrumented: bool,
                     store_root: Path | None, run_name: str | None = None) -> EngineStep:
    """An EngineStep for ``method_name`` (built by ``gradlab.build.build_method`` with the
    run's seed); with ``instrumented`` a Monitor writes to a real RunWriter in
    ``store_root/run_name`` (as the training loop does)."""
    import dataclasses

    from gradlab.build import build_method
    from gradlab.config import to_dict
    from gradlab.monitor import Monitor
    from gradlab.store import RunWriter

    parts = dataclasses.replace(s.parts, engine=engine, method_name=method_name,
                                method=build_method(method_name, seed=s.cfg.seed))
    writer = monitor = None
    if instrumented:
        assert store_root is not None
        writer = RunWriter(store_root / (run_name or method_name), name=run_name or method_name,
                           config=to_dict(s.cfg), tasks=s.tasks,
                           blocks=[(b.name, b.numel) for b in engine.blocks],
                           method=method_name, seed=s.cfg.seed, schedule="joint")
        monitor = Monitor(writer, s.tasks, engine.block_names)
    return EngineStep(s, method_name, parts, monitor, writer, 0)


def run_interleaved(steps: Mapping[str, Callable[[dict[str, float]], None]], *, rounds: int,
                    warmup: int, on_step: Callable[[int, str, float], None] | None = None,
                    sync: Callable[[], None] | None = None
                    ) -> dict[str, list[dict[str, float]]]:
    """Run every variant once per round (order: ``interleaved``); return the per-step timings
    (total, phases, page faults) of the rounds after the ``warmup`` first ones.

    sync: called before and after each step (``torch.cuda.synchronize`` on a GPU, so that a
    step's time is its GPU work and not the queueing of it)."""
    records: dict[str, list[dict[str, float]]] = {name: [] for name in steps}
    for r, name in interleaved(list(steps), rounds):
        timings: dict[str, float] = {}
        faults = minor_faults()
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        steps[name](timings)
        if sync is not None:
            sync()
        timings["total"] = time.perf_counter() - t0
        timings["page_faults"] = minor_faults() - faults
        if on_step is not None:
            on_step(r, name, timings["total"])
        if r >= warmup:
            records[name].append(timings)
    return records


# --- memory -----------------------------------------------------------------------------------


def gpu_peak_memory(steps: Mapping[str, Callable[[dict[str, float]], None]]
                    ) -> dict[str, dict[str, float]]:
    """Per variant, one more step after resetting CUDA's peak statistics: the peak of
    ``torch.cuda.max_memory_allocated()`` during it (everything allocated: model, AdamW state,
    engine buffers, activations) and that peak less what was allocated before it (MiB)."""
    peaks = {}
    for name, step in steps.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step({})
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        peaks[name] = {"peak_mib": peak / 2**20, "step_mib": (peak - before) / 2**20,
                       "allocated_before_mib": before / 2**20}
    return peaks


def proc_status_kb(key: str) -> int:
    """A field of /proc/self/status in kB (VmRSS, VmHWM, ...)."""
    text = Path("/proc/self/status").read_text(encoding="utf-8")
    match = re.search(rf"^{key}:\s+(\d+)\s+kB", text, flags=re.MULTILINE)
    if match is None:
        raise OSError(f"/proc/self/status has no {key} field")
    return int(match.group(1))


def reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
    except OSError:
        return False
    return proc_status_kb("VmHWM") <= proc_status_kb("VmRSS") + 1024
