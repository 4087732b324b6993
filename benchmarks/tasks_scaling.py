"""Cost of the PCGrad engine step as the number of tasks grows: T = 2, 3, 5, 8.

The T tasks are synthetic copies of the single-sentence task (SST's spec: 5 classes, the
default linear head) with different random labels, each with its own fixed batch of
16 x 64 random token ids, so one step is T encoder passes of [16, 64] (MiniLM-L6). For each T,
a fresh model (same encoder weights) alternates (random order per round) between:

  summed  forward all T tasks, sum the losses, one backward, clip, AdamW
  pcgrad  the training loop's step with PCGrad (gradlab.step.train_step), the Monitor
          writing to a real run store

Reported per T: the two medians, their ratio, and the share of the PCGrad step spent in the
Gramian work (block_gramians + method + write_update), which must stay small.

Run: python benchmarks/tasks_scaling.py [--quick] [--repeats 7] [--tasks 2,3,5,8]
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path

import _common as bench

from gradlab.tasks import TASKS

GRAMIAN_PHASES = ("gramian", "method", "update")


def synthetic_tasks(count: int) -> dict[str, dict]:
    """aux_tasks entries syn0..syn{count-1}: single-sentence tasks with SST's classes, so the
    config, the model and the losses treat them as tasks (their files are never read: the
    benchmark's batches are random)."""
    sst = TASKS["sst"].reader
    return {f"syn{k}": {"train": "-", "dev": "-", "text_columns": list(sst.text_columns),
                        "label_column": sst.label_column, "label_kind": "class",
                        "num_classes": sst.num_classes, "label_range": list(sst.label_range)}
            for k in range(count)}


def main(argv: list[str] | None = None) -> int:
    parser = bench.base_parser(__doc__.split("\n", 1)[0], malloc_option=True)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per variant and T (default 7; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds (default 1)")
    parser.add_argument("--tasks", default="2,3,5,8", help="task counts (default 2,3,5,8)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    counts = [int(x) for x in args.tasks.split(",")]
    header = bench.start(args, "tasks_scaling")
    print("tasks: synthetic copies of the single-sentence task, one [16, 64] batch each; "
          f"{repeats} timed + {args.warmup} warmup rounds per T\n", flush=True)

    rows, results = [], {"counts": {}}
    for count in counts:
        synthetic = synthetic_tasks(count)
        cfg = bench.make_config(args.quick, tasks=list(synthetic), aux_tasks=synthetic)
        s = bench.build_setup(cfg)
        engine = bench.make_engine(s)
        with tempfile.TemporaryDirectory(prefix="gradlab-bench-T-") as tmp:
            pcgrad = bench.make_engine_step(s, "pcgrad", engine, instrumented=True,
                                            store_root=Path(tmp))
            steps = {"summed": lambda t, s=s: bench.summed_step(s, t), "pcgrad": pcgrad}
            records = bench.run_interleaved(steps, rounds=args.warmup + repeats,
                                            warmup=args.warmup)
            pcgrad.close()
        summed = bench.summarize([r["total"] for r in records["summed"]])
        pc = bench.summarize([r["total"] for r in records["pcgrad"]])
        gramian_work = [sum(r[k] for k in GRAMIAN_PHASES) for r in records["pcgrad"]]
        monitor = [r["monitor"] for r in records["pcgrad"]]
        gw = bench.summarize(gramian_work)
        row = {"T": count, "summed_s": summed["median"], "summed_iqr": summed["iqr"],
               "pcgrad_s": pc["median"], "pcgrad_iqr": pc["iqr"],
               "ratio": pc["median"] / summed["median"],
               "gramian_work_ms": 1e3 * gw["median"],
               "gramian_share_%": 100 * gw["median"] / pc["median"],
               "monitor_ms": 1e3 * bench.statistics.fmean(monitor),
               "faults_k_summed": bench.summarize(
                   [r["page_faults"] for r in records["summed"]])["median"] / 1e3,
               "faults_k_pcgrad": bench.summarize(
                   [r["page_faults"] for r in records["pcgrad"]])["median"] / 1e3,
               "J_MiB": engine.jacobian.numel() * engine.jacobian.element_size() / 2**20}
        rows.append(row)
        results["counts"][count] = {**row, "summed": summed, "pcgrad": pc,
                                    "phases": {k: bench.summarize([r[k] for r in
                                                                   records["pcgrad"]])
                                               for k in bench.ENGINE_PHASES}}
        print(f"  T={count}: summed {summed['median']:.3f} s, pcgrad {pc['median']:.3f} s, "
              f"ratio {row['ratio']:.3f}", flush=True)
        del s, engine, pcgrad, steps, records
        gc.collect()

    print("\nPCGrad engine step vs summed-loss step by number of tasks (medians; "
          "gramian_work = block_gramians + method + write_update; monitor_ms = mean; "
          "faults_k = minor page faults per step / 1000)")
    bench.print_table(rows, ["T", "summed_s", "summed_iqr", "pcgrad_s", "pcgrad_iqr", "ratio",
                             "gramian_work_ms", "gramian_share_%", "monitor_ms",
                             "faults_k_summed", "faults_k_pcgrad", "J_MiB"])
    bench.finish(header, results, save=not args.no_save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
