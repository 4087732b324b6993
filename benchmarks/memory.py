"""Peak RSS increase of a summed-loss step vs a PCGrad engine step, one fresh process each.

Setting as in step_ratio.py: MiniLM-L6, default heads, tasks sst, para, sts,
batch 16 x 64 tokens per task (fixed random ids; pair tasks are bi-encoders: two [16, 64]
inputs). Each measurement runs in a fresh subprocess that builds the model, the optimizer
and the batches, creates AdamW's state up front (so that it counts for neither variant),
records VmRSS, resets the peak (VmHWM, via /proc/self/clear_refs) and then runs a few steps of
one variant. The PCGrad variant allocates the engine (J [T, P] and the update [P]) and the
Monitor with its run store inside the measured region, as a training run holds them.

Reported: increase = peak RSS during the steps - RSS before them. Issue 7's bound:
  increase(pcgrad) <= 1.10 x (increase(summed) + (T + 1) x P x 4 bytes)

Run: python benchmarks/memory.py [--quick] [--repeats 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as bench

VARIANTS = ("summed", "pcgrad")
MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = bench.base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="fresh processes per variant (default 2; --quick: 1)")
    parser.add_argument("--steps", type=int, default=3, help="steps per process (default 3)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from summed, engine_sum, pcgrad, "
                             f"pcgrad_noinstr (default {','.join(VARIANTS)})")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    repeats = args.repeats or (1 if args.quick else 2)
    variants = args.variants.split(",")
    header = bench.start(args, "memory")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(repeats):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            command = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                       "--threads", str(header["threads"])] + (["--quick"] if args.quick else [])
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"child {variant} failed with exit code {done.returncode}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            runs[variant].append(record)
            print(f"  {variant} run {r + 1}: +{record['increase_kb'] / 1024:.0f} MiB "
                  f"(peak {record['peak_kb'] / 1024:.0f} MiB)", flush=True)

    first = runs[variants[0]][0]
    num_params, num_tasks = first["num_params"], first["num_tasks"]
    buffers = (num_tasks + 1) * num_params * 4
    rows, results = [], {"num_params": num_params, "num_tasks": num_tasks,
                         "buffers_bytes": buffers, "variants": {}}
    for variant, recs in runs.items():
        inc = statistics.median(r["increase_kb"] for r in recs) * 1024
        row = {"variant": variant,
               "baseline_MiB": statistics.median(r["baseline_kb"] for r in recs) / 1024,
               "peak_MiB": statistics.median(r["peak_kb"] for r in recs) / 1024,
               "increase_MiB": inc / MIB, "runs": len(recs),
               "peak_reset": all(r["peak_reset"] for r in recs)}
        rows.append(row)
        results["variants"][variant] = {**row, "records": recs}
    print()
    print(f"P = {num_params:,} shared values, T = {num_tasks}: (T + 1) x P x 4 bytes = "
          f"{buffers / MIB:.0f} MiB")
    bench.print_table(rows, ["variant", "baseline_MiB", "peak_MiB", "increase_MiB", "runs",
                             "peak_reset"])
    if "summed" in results["variants"]:
        summed = results["variants"]["summed"]["increase_MiB"] * MIB
        bound = 1.10 * (summed + buffers)
        results["bound_bytes"] = bound
        print(f"\nbound (issue 7) = 1.10 x (increase(summed) + (T+1) x P x 4) = "
              f"{bound / MIB:.0f} MiB")
        for variant in variants:
            if variant == "summed":
                continue
            inc = results["variants"][variant]["increase_MiB"] * MIB
            ok = inc <= bound
            results["variants"][variant]["within_bound"] = ok
            print(f"{variant}: +{inc / MIB:.0f} MiB = {inc / bound:.2f} of the bound "
                  f"({'within' if ok else 'OVER'}); "
                  f"{(inc - summed) / MIB:+.0f} MiB vs summed")
    bench.finish(header, results, save=not args.no_save)
    return 0


def child(args) -> int:
    """One measurement: build, create AdamW state, reset the peak, run ``args.steps`` steps."""
    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    bench.quiet_transformers()
    cfg = bench.make_config(args.quick)
    s = bench.build_setup(cfg)
    _init_adamw_state(s)
    tmp = tempfile.TemporaryDirectory(prefix="gradlab-bench-mem-")
    gc.collect()
    baseline = bench.proc_status_kb("VmRSS")
    reset = bench.reset_peak_rss()
    times = []
    if args.child == "summed":
        for _ in range(args.steps):
            t0 = time.perf_counter()
            bench.summed_step(s)
            times.append(time.perf_counter() - t0)
    else:
        method = "sum" if args.child == "engine_sum" else "pcgrad"
        engine = bench.make_engine(s)  # J [T, P] and the update [P]: part of the step's cost
        step = bench.make_engine_step(s, method, engine,
                                      instrumented=args.child != "pcgrad_noinstr",
                                      store_root=Path(tmp.name))
        for _ in range(args.steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        step.close()
    peak = bench.proc_status_kb("VmHWM")
    tmp.cleanup()
    print(json.dumps({
        "variant": args.child, "baseline_kb": baseline, "peak_kb": peak,
        "increase_kb": peak - baseline, "peak_reset": reset, "steps": args.steps,
        "step_times": times, "num_params": s.num_shared, "num_tasks": len(s.tasks),
        "threads": threads,
    }))
    return 0


def _init_adamw_state(s: bench.Setup) -> None:
    """Create AdamW's moments for every parameter now, with lr 0 (no parameter changes)."""
    import torch

    params = [p for group in s.optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [group["lr"] for group in s.optimizer.param_groups]
    for group in s.optimizer.param_groups:
        group["lr"] = 0.0
    s.optimizer.step()
    for group, lr in zip(s.optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    s.optimizer.zero_grad(set_to_none=True)


if __name__ == "__main__":
    raise SystemExit(main())
