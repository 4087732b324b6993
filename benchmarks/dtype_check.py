"""bfloat16 storage of J (config ``gradient_dtype``): its error on real gradients, step time
and peak memory against float32 storage.

Parts (``--parts``, default all three):

- accuracy: the packaged MiniLM-L6 (a tiny random BERT with --quick), real training batches
  of sst, para and sts from the task data (``GRADLAB_DATA``; batch 16 x 64 tokens, the
  demo's), ``--replicates`` K batches per task, eval mode. The same K*T (task, batch) pairs
  fill a float32 engine and a bfloat16 one through ``gradlab.step.task_gradients``; reported:
  the error of every pairwise cosine and every norm, per block and over the whole encoder
  (max and median), the summed update's cosine with float32's, the share of gradient values
  float16 would flush to zero or keep only as subnormals, and the bytes of J.
- speed: one process, a random BERT built from a config (``--encoder-size``, default base:
  BERT-base's shape; tiny with --quick), tasks sst, para, sts, fixed random batches 16 x 64
  (as step_ratio.py): ``summed``, ``pcgrad`` (float32 J) and ``pcgrad_bf16`` (bfloat16 J),
  each ``gradlab.step.train_step`` + AdamW + the Monitor, interleaved in a seeded order per
  round after one untimed summed step (AdamW's state) and ``--warmup`` rounds; medians,
  ratios to ``summed`` and the paired ratios (BERT-base on 1 CPU thread: minutes a step).
- memory: a fresh process per variant (as memory.py): AdamW state created first, then VmRSS,
  peak reset (VmHWM via /proc/self/clear_refs), the engine allocated and ``--steps`` steps run;
  increase = peak - RSS before. Compared with the engine's buffers: (T+1) x P x 4 bytes
  for float32, T x P x 2 + P x 4 for bfloat16 (the update stays float32).

Run: python benchmarks/dtype_check.py [--quick] [--parts accuracy,speed,memory] [--threads 1]
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
import torch

VARIANTS = ("summed", "pcgrad", "pcgrad_bf16")
PARTS = ("accuracy", "speed", "memory")
MIB = 2**20


def main(argv: list[str] | None = None) -> int:
    parser = bench.base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated, from {', '.join(PARTS)} (default: all)")
    parser.add_argument("--encoder-size", choices=sorted(bench.ENCODER_SIZES), default=None,
                        help="speed and memory: random BERT shape (default base; --quick: tiny)")
    parser.add_argument("--replicates", type=int, default=4,
                        help="accuracy: batches per task (default 4: 12 gradients, 66 pairs)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="speed: timed rounds (default 2; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="speed: discarded rounds (default 0: one untimed summed step "
                             "creates AdamW's state, the rest is allocated up front)")
    parser.add_argument("--steps", type=int, default=1, help="memory: steps per process")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.encoder_size = args.encoder_size or ("tiny" if args.quick else "base")
    if args.child:
        return memory_child(args)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; allowed {list(PARTS)}")
    header = bench.start(args, "dtype_check")
    results = {}
    if "accuracy" in parts:
        results["accuracy"] = accuracy(args)
    if "speed" in parts:
        results["speed"] = speed(args)
    if "memory" in parts:
        results["memory"] = memory(args, header["threads"])
    bench.finish(header, results, save=not args.no_save)
    return 0


# --- accuracy on real gradients ---------------------------------------------------------------


def accuracy(args: argparse.Namespace) -> dict:
    """Cosine and norm errors of bfloat16 storage against float32, on real task batches."""
    from gradlab.build import build_parts
    from gradlab.config import load_config
    from gradlab.step import TaskLoss, task_gradients

    values = {"encoder": "minilm", "batch_size": 16, "max_length": 64, "seed": 0,
              "train_limit": 4000, "dev_limit": 16, "progress": False}
    if args.quick:
        values["tiny_encoder"] = dict(bench.QUICK_ENCODER)
    parts = build_parts(load_config(None, values))
    model = parts.model
    model.eval()  # no dropout: both engines see the same gradients
    batches = [(t, parts.batch(t, next(parts.batchers[t])))
               for _ in range(args.replicates) for t in parts.tasks]
    n = len(batches)
    print(f"accuracy: {bench.encoder_label(args) if args.quick else 'MiniLM-L6'}, real batches "
          f"16 x 64 of {parts.tasks}, {args.replicates} per task: {n} gradients, "
          f"{n * (n - 1) // 2} pairs")
    found = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        engine = _engine(model, n, dtype)
        t0 = time.perf_counter()
        grads = task_gradients(model, batches, engine, loss=TaskLoss(specs=model.task_specs),
                               smart=False)
        if grads.fault is not None:
            raise FloatingPointError(grads.fault)
        engine.write_update(torch.ones(n, dtype=torch.float64), n)
        found[name] = {"engine": engine, "gramians": grads.block_gramians,
                       "update": engine.update.clone(), "seconds": time.perf_counter() - t0}
    wide, narrow = found["float32"]["engine"], found["bfloat16"]["engine"]
    rounded_once = bool(torch.equal(narrow.jacobian, wide.jacobian.bfloat16()))
    names = [*wide.block_names, "all"]
    g32 = _with_total(found["float32"]["gramians"])
    g16 = _with_total(found["bfloat16"]["gramians"])
    iu = torch.triu_indices(n, n, offset=1)
    rows = []
    for k, block in enumerate(names):
        c32, c16 = _cosines(g32[k])[iu[0], iu[1]], _cosines(g16[k])[iu[0], iu[1]]
        n32, n16 = g32[k].diagonal().sqrt(), g16[k].diagonal().sqrt()
        cos_err, norm_err = (c16 - c32).abs(), (n16 / n32 - 1).abs()
        rows.append({"block": block, "median_abs_cos": float(c32.abs().median()),
                     "cos_err_max": float(cos_err.max()),
                     "cos_err_median": float(cos_err.median()),
                     "norm_relerr_max": float(norm_err.max()),
                     "norm_relerr_median": float(norm_err.median())})
    update_cos = float(torch.nn.functional.cosine_similarity(
        found["float32"]["update"].double(), found["bfloat16"]["update"].double(), dim=0))
    jac = wide.jacobian
    nonzero = jac[jac != 0].abs()
    fp16 = {"nonzero_values": int(nonzero.numel()),
            "flush_to_zero_share": float((nonzero < 2.0**-25).double().mean()),
            "subnormal_share": float((nonzero < 2.0**-14).double().mean())}
    P, T = wide.num_params, len(parts.tasks)
    memory = {"P": P, "T": T, "J_float32_MiB": T * P * 4 / MIB, "J_bfloat16_MiB": T * P * 2 / MIB,
              "buffers_float32_MiB": (T + 1) * P * 4 / MIB,
              "buffers_bfloat16_MiB": (T * 2 + 4) * P / MIB}
    print()
    shown = [{k: f"{v:.2e}" if isinstance(v, float) else v for k, v in row.items()}
             for row in rows]
    bench.print_table(shown, ["block", "median_abs_cos", "cos_err_max", "cos_err_median",
                              "norm_relerr_max", "norm_relerr_median"])
    print(f"\nbfloat16 rows == float32 rows rounded once: {rounded_once}")
    print(f"cosine of the summed update (bfloat16 J vs float32 J): {update_cos:.8f}")
    print(f"float16 would flush {fp16['flush_to_zero_share']:.2%} of the nonzero gradient values "
          f"to 0 (< 2^-25) and keep {fp16['subnormal_share']:.2%} as subnormals (< 2^-14)")
    print(f"P = {P:,}, T = {T}: J float32 {memory['J_float32_MiB']:.0f} MiB, bfloat16 "
          f"{memory['J_bfloat16_MiB']:.0f} MiB; J + update: float32 "
          f"{memory['buffers_float32_MiB']:.0f} MiB, bfloat16 "
          f"{memory['buffers_bfloat16_MiB']:.0f} MiB")
    print(f"task_gradients + update: float32 {found['float32']['seconds']:.1f} s, bfloat16 "
          f"{found['bfloat16']['seconds']:.1f} s ({n} backward passes each)\n")
    return {"gradients": n, "pairs": n * (n - 1) // 2, "blocks": rows,
            "rounded_once": rounded_once, "update_cosine": update_cos, "float16": fp16,
            "memory": memory,
            "seconds": {k: v["seconds"] for k, v in found.items()}}


def _engine(model, rows: int, dtype: torch.dtype):
    from gradlab.engine import GradientEngine
    from gradlab.model import block_name

    shared = model.shared_parameters()
    return GradientEngine([p for _, p in shared], [block_name(n) for n, _ in shared], rows,
                          dtype=dtype)


def _with_total(gramians: torch.Tensor) -> torch.Tensor:
    """[B, n, n] -> [B + 1, n, n]: the blocks and their sum (the whole encoder)."""
    return torch.cat([gramians, gramians.sum(0, keepdim=True)])


def _cosines(gramian: torch.Tensor) -> torch.Tensor:
    d = gramian.diagonal().sqrt()
    return gramian / (d[:, None] * d[None, :])


# --- step time ----------------------------------------------------------------------------------


def speed(args: argparse.Namespace) -> dict:
    """summed, pcgrad (float32 J), pcgrad_bf16 interleaved in one process."""
    repeats = args.repeats or (1 if args.quick else 2)
    s = _setup(args)
    print(f"speed: {bench.encoder_label(args)}, P = {s.num_shared:,} shared values, "
          f"{bench.batch_shape_note(s.model, s.tasks, 16, 64)}; "
          f"1 untimed step, {args.warmup} warmup + {repeats} timed rounds")
    tmp = tempfile.TemporaryDirectory(prefix="gradlab-bench-dtype-")
    steps = {"summed": lambda timings: bench.summed_step(s, timings)}
    engines = {"pcgrad": torch.float32, "pcgrad_bf16": torch.bfloat16}
    for name, dtype in engines.items():
        steps[name] = bench.make_engine_step(s, "pcgrad", _engine(s.model, len(s.tasks), dtype),
                                             instrumented=True, store_root=Path(tmp.name),
                                             run_name=name)

    t0 = time.perf_counter()
    steps["summed"]({})  # untimed: AdamW's state (the engines' buffers exist already)
    print(f"  untimed first step (summed): {time.perf_counter() - t0:.2f} s", flush=True)

    def on_step(r: int, name: str, seconds: float) -> None:
        print(f"  round {r}: {name} {seconds:.2f} s", flush=True)

    records = bench.run_interleaved(steps, rounds=args.warmup + repeats, warmup=args.warmup,
                                    on_step=on_step)
    for name in engines:
        steps[name].close()
    tmp.cleanup()
    base = statistics.median(r["total"] for r in records["summed"])
    rows = []
    for name, recs in records.items():
        stats = bench.summarize([r["total"] for r in recs])
        paired = statistics.median(a["total"] / b["total"]
                                   for a, b in zip(recs, records["summed"], strict=True))
        rows.append({"variant": name, "median_s": stats["median"], "iqr_s": stats["iqr"],
                     "ratio": stats["median"] / base, "paired": paired,
                     "gramian_ms": 1e3 * statistics.median(r.get("gramian", 0.0) for r in recs),
                     "update_ms": 1e3 * statistics.median(r.get("update", 0.0) for r in recs)})
    print()
    bench.print_table(rows, ["variant", "median_s", "iqr_s", "ratio", "paired", "gramian_ms",
                             "update_ms"])
    print()
    return {"P": s.num_shared, "repeats": repeats, "warmup": args.warmup, "rows": rows,
            "records": records}


def _setup(args: argparse.Namespace):
    cfg = bench.make_config(args.quick, encoder_size=args.encoder_size, batch_size=16)
    return bench.build_setup(cfg, seq_len=64)


# --- peak memory ----------------------------------------------------------------------------------


def memory(args: argparse.Namespace, threads: int) -> dict:
    """One fresh process per variant: the peak RSS increase of engine allocation + steps."""
    runs = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                   "--threads", str(threads), "--encoder-size", args.encoder_size]
        done = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"child {variant} failed with exit code {done.returncode}")
        runs[variant] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  memory {variant}: +{runs[variant]['increase_kb'] / 1024:.0f} MiB", flush=True)
    P, T = runs["summed"]["num_params"], runs["summed"]["num_tasks"]
    summed = runs["summed"]["increase_kb"] * 1024
    rows = []
    for variant, rec in runs.items():
        inc = rec["increase_kb"] * 1024
        buffers = rec.get("buffer_bytes", 0)
        # the bound: the summed step's increase plus this engine's J and update
        bound = summed + buffers if variant != "summed" else None
        rows.append({"variant": variant, "increase_MiB": inc / MIB,
                     "over_summed_MiB": (inc - summed) / MIB, "buffers_MiB": buffers / MIB,
                     "bound_MiB": None if bound is None else bound / MIB,
                     "of_bound": None if bound is None else inc / bound,
                     "peak_reset": rec["peak_reset"]})
    print()
    print(f"P = {P:,}, T = {T}: (T+1) x P x 4 = {(T + 1) * P * 4 / MIB:.0f} MiB; "
          f"T x P x 2 + P x 4 = {(2 * T + 4) * P / MIB:.0f} MiB")
    bench.print_table(rows, ["variant", "increase_MiB", "over_summed_MiB", "buffers_MiB",
                             "bound_MiB", "of_bound", "peak_reset"])
    return {"P": P, "T": T, "steps": args.steps, "rows": rows, "records": runs}


def memory_child(args: argparse.Namespace) -> int:
    """One measurement (memory.py's): build, AdamW state, reset the peak, engine + steps."""
    from memory import _init_adamw_state

    torch.set_num_threads(args.threads or torch.get_num_threads())
    bench.quiet_transformers()
    s = _setup(args)
    _init_adamw_state(s)
    tmp = tempfile.TemporaryDirectory(prefix="gradlab-bench-dtype-mem-")
    gc.collect()
    baseline = bench.proc_status_kb("VmRSS")
    reset = bench.reset_peak_rss()
    buffer_bytes = 0
    if args.child == "summed":
        for _ in range(args.steps):
            bench.summed_step(s)
    else:
        dtype = torch.bfloat16 if args.child == "pcgrad_bf16" else torch.float32
        engine = _engine(s.model, len(s.tasks), dtype)  # inside the measured region
        buffer_bytes = engine.buffer_bytes
        step = bench.make_engine_step(s, "pcgrad", engine, instrumented=True,
                                      store_root=Path(tmp.name))
        for _ in range(args.steps):
            step()
        step.close()
    peak = bench.proc_status_kb("VmHWM")
    tmp.cleanup()
    print(json.dumps({"variant": args.child, "baseline_kb": baseline, "peak_kb": peak,
                      "increase_kb": peak - baseline, "peak_reset": reset,
                      "buffer_bytes": buffer_bytes, "num_params": s.num_shared,
                      "num_tasks": len(s.tasks)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
