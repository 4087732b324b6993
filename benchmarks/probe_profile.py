"""Where a replicate probe's time goes, beside the engine's summed-loss step (issue 13).

One process, the packaged MiniLM-L6 (a tiny random BERT with --quick), tasks sst, para and
sts, fixed random batches (``--batch-size`` x ``--seq-len`` tokens per task, the demo's
16 x 64 by default), as step_ratio.py builds them. Each round times, phase by phase:

- probe: what ``gradlab.probe.probe`` does for K = ``--replicates`` (eval mode): per (task,
  replicate) pass ``bind`` (zero the J row, point .grad at it), ``forward`` (the loss) and
  ``backward``; then the [K*T, K*T] block Gramians (``gramian``);
- step: what ``gradlab.step.train_step`` + the optimizer do for the summed loss (train mode,
  dropout as configured): per task ``bind``, ``forward``, ``backward``; ``gramian`` [T, T],
  ``update`` (wᵀJ), ``optimizer`` (AdamW).

It reports the medians per phase, the probe's total over the step's total, the share of each
in forward+backward passes, and (``--ops``) the probe's top operators from torch.profiler: the
question is whether anything besides the passes themselves could be cut. ``--probe-batch-size``
times the probe on smaller batches (the estimators take any batch size).

``--real-data``: real batches instead of the fixed random ones, as a run gets them: the parts
come from ``gradlab.build.build_parts`` (the task files' training sets, tokenized, at
``--seq-len`` = max_length), each round's step takes the next training batch of every task
from the run's own batchers and each round's probe the K*T probe batches of step 25 x round
(`gradlab.probe.probe_inputs`), each padded to its longest sentence as in training. Sentences
are shorter than 64 tokens and vary, so both the step and the probe cost less than on the
random batches, and their ratio is the one a real run pays.

Run: python benchmarks/probe_profile.py [--quick] [--threads 2] [--repeats 5] [--ops]
[--real-data]
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import _common as bench
import torch

PROBE_PHASES = ("bind", "forward", "backward", "gramian")
STEP_PHASES = ("bind", "forward", "backward", "gramian", "update", "optimizer")


def main(argv: list[str] | None = None) -> int:
    parser = bench.base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds after one untimed round (default 5; --quick: 2)")
    parser.add_argument("--replicates", type=int, default=2, help="K (default 2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--probe-batch-size", type=int, default=None,
                        help="examples per probe batch (default: --batch-size)")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--ops", action="store_true",
                        help="also profile one probe's operators (torch.profiler)")
    parser.add_argument("--real-data", action="store_true",
                        help="the task files' training batches (padded to their longest) "
                             "instead of fixed random batches of --seq-len tokens")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    probe_b = args.probe_batch_size or args.batch_size
    header = bench.start(args, "probe_profile")

    cfg = bench.make_config(args.quick, batch_size=args.batch_size, probe_batch_size=probe_b,
                            max_length=args.seq_len, probe_replicates=args.replicates)
    if args.real_data:
        parts, batches_of_round = _real_parts(cfg)
        tasks, engine = parts.tasks, parts.engine
        shape = f"training files, max_length {args.seq_len}, padded to each batch's longest"
    else:
        s = bench.build_setup(cfg, seq_len=args.seq_len)
        engine = bench.make_engine(s)
        parts = dataclasses.replace(s.parts, engine=engine, probe_replicates=args.replicates)
        tasks = s.tasks
        probe_batches = [(task, _rows(batch, probe_b)) for a in range(args.replicates)
                         for task, batch in s.batches.items()]
        step_batches = list(s.batches.items())
        shape = f"fixed random batches of {args.seq_len} tokens"
    print(f"encoder: {bench.encoder_label(args)}; P = {engine.num_params:,}; K = "
          f"{args.replicates}; step batches of {args.batch_size}, probe batches of {probe_b} "
          f"per task ({shape})")

    times: dict[str, list[float]] = defaultdict(list)
    for r in range(repeats + 1):
        if args.real_data:
            step_batches, probe_batches = batches_of_round(r)
        probe_t = _probe(parts, probe_batches)
        step_t = _step(parts, step_batches)
        if r == 0:
            continue  # untimed: AdamW's state, the probe engine, allocator warm-up
        for k, v in probe_t.items():
            times["probe." + k].append(v)
        for k, v in step_t.items():
            times["step." + k].append(v)
        print(f"  round {r}: probe {probe_t['total']:.3f} s, step {step_t['total']:.3f} s",
              flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for kind, phases in (("probe", PROBE_PHASES), ("step", STEP_PHASES)):
        total = med[f"{kind}.total"]
        for phase in (*phases, "total"):
            key = f"{kind}.{phase}"
            rows.append({"what": kind, "phase": phase, "median_s": round(med[key], 4),
                         "share": f"{100 * med[key] / total:.1f}%"})
    print(f"\nmedians of {repeats} rounds (per phase: summed over the passes of one probe or "
          "step)")
    bench.print_table(rows, ["what", "phase", "median_s", "share"])
    passes_p = args.replicates * len(tasks)
    fb_probe = (med["probe.forward"] + med["probe.backward"]) / passes_p
    fb_step = (med["step.forward"] + med["step.backward"]) / len(tasks)
    ratio = med["probe.total"] / med["step.total"]
    paired = statistics.median(p / q for p, q in zip(times["probe.total"], times["step.total"],
                                                    strict=True))
    print(f"\nprobe / engine summed step: {ratio:.3f} by medians ({paired:.3f} paired)")
    print(f"one forward+backward pass: probe (eval) {fb_probe:.3f} s, step (train mode) "
          f"{fb_step:.3f} s; the probe's {passes_p} passes alone are "
          f"{passes_p * fb_probe / med['step.total']:.3f} steps")
    results = {"medians": med, "ratio_to_engine_step": ratio, "paired_ratio": paired,
               "pass_probe_s": fb_probe,
               "pass_step_s": fb_step, "replicates": args.replicates,
               "probe_batch_size": probe_b, "batch_size": args.batch_size,
               "real_data": args.real_data,
               "amortised_at_25": ratio / 25}
    print(f"amortised at probe_every = 25: +{100 * ratio / 25:.1f}% of the step time "
          "(probe / (25 x step))")
    if args.ops:
        results["ops"] = _ops(parts, probe_batches)
    bench.finish(header, results, save=not args.no_save)
    return 0


def _real_parts(cfg):
    """A run's parts on the task files (``build_parts``) and, per round r, its batches: the
    step's (the next training batch of each task) and the probe's (step 25 x (r + 1))."""
    from gradlab.build import build_parts
    from gradlab.probe import probe_inputs

    parts = build_parts(cfg)

    def batches_of_round(r: int):
        step = [(task, parts.batch(task, next(parts.batchers[task]))) for task in parts.tasks]
        return step, probe_inputs(parts, 25 * (r + 1))

    return parts, batches_of_round


def _rows(batch: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The first n examples of a batch (all its tensors have the examples first)."""
    return {k: v[:n] for k, v in batch.items()}


def _timer(times: dict[str, float]) -> Callable:
    def timed(phase: str, fn: Callable):
        t = time.perf_counter()
        out = fn()
        times[phase] = times.get(phase, 0.0) + time.perf_counter() - t
        return out
    return timed


def _probe(parts, batches) -> dict[str, float]:
    """gradlab.probe.probe's work, phase by phase (its engine: ``probe_engine``)."""
    from gradlab.probe import probe_engine

    times: dict[str, float] = {}
    timed, model = _timer(times), parts.model
    start = time.perf_counter()
    model.eval()
    engine = probe_engine(parts)
    for row, (task, batch) in enumerate(batches):
        timed("bind", lambda row=row: engine.bind_row(row))
        loss, _ = timed("forward", lambda t=task, b=batch: parts.loss(model, t, b, smart=False))
        timed("backward", loss.backward)
    timed("gramian", lambda: engine.block_gramians(len(batches)))
    for p in parts.head_params:
        p.grad = None
    model.train()
    times["total"] = time.perf_counter() - start
    return times


def _step(parts, batches) -> dict[str, float]:
    """gradlab.step.train_step's work for the summed loss, then AdamW, phase by phase."""
    times: dict[str, float] = {}
    timed, model, engine = _timer(times), parts.model, parts.engine
    start = time.perf_counter()
    parts.optimizer.zero_grad(set_to_none=True)
    for row, (task, batch) in enumerate(batches):
        timed("bind", lambda row=row: engine.bind_row(row))
        loss, _ = timed("forward", lambda t=task, b=batch: parts.loss(model, t, b))
        timed("backward", loss.backward)
    timed("gramian", lambda: engine.block_gramians(len(batches)))
    weights = torch.ones(len(batches), dtype=torch.float64)
    timed("update", lambda: engine.write_update(weights, len(batches)))
    timed("optimizer", parts.optimizer.step)
    times["total"] = time.perf_counter() - start
    return times


def _ops(parts, batches, top: int = 8) -> list[dict]:
    """The probe's operators by self CPU time (one probe under torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _probe(parts, batches)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key[:48], "self_ms": round(e.self_cpu_time_total / 1000, 1),
             "share": f"{100 * e.self_cpu_time_total / total:.1f}%", "calls": e.count}
            for e in events[:top]]
    print(f"\nthe probe's top {top} operators by self CPU time (torch.profiler, one probe)")
    bench.print_table(rows, ["op", "self_ms", "share", "calls"])
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
