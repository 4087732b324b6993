"""Step time of every engine method relative to the classic summed-loss step, in one process.

Setting (issues 2, 3 and 7): MiniLM-L6 (the packaged encoder) with the default heads
(gradlab.build), tasks sst, para, sts, batch 16 x 64 tokens per task. The batches are fixed
random token ids, every sequence exactly 64 tokens (no padding); the pair tasks are bi-encoders, so
each of their batches is two [16, 64] inputs (5 encoder passes of [16, 64] per step). Every
variant steps the same model on the same batches; every round runs each variant once, in a
seeded random order, and the warmup rounds are discarded.

Variants:
  summed          forward all tasks, sum the losses, one backward, clip, AdamW (plain .grad,
                  optimizer.zero_grad() with PyTorch's default set_to_none=True)
  summed_keepgrad the same with zero_grad(set_to_none=False) (reference: .grad kept and
                  zeroed in place instead of reallocated each step)
  engine_sum      the training loop's step with method "sum": the public
                  gradlab.step.train_step (bind_row + backward per task, block Gramians,
                  method, write_update, clip), AdamW and scheduler steps, and the Monitor
                  writing train Gramians, weights and projection events to a real run store
  <method>        the same for every other method of gradlab.methods.METHODS that can be
                  built here (methods whose optional solver packages are missing are listed
                  as skipped)
  pcgrad_noinstr  pcgrad without the Monitor: pcgrad / pcgrad_noinstr is the
                  instrumentation overhead (issue 3 target <= 1.03)
  probe           one probe (gradlab.probe.probe: all task gradients on probe batches
                  in eval mode, counterfactual methods sum/mean/pcgrad; logged to the store)

On a GPU (--device cuda) every step is timed between torch.cuda.synchronize() calls (the
phases inside a step are host-side times between the step's own synchronisations), and one
more step per variant measures its peak torch.cuda.max_memory_allocated(), printed beside the
engine's buffers' bound (T+1)*P*bytes (J [T, P] and the update [P]). --encoder-size minilm /
base: a random BERT of MiniLM-L6's / BERT-base's shape built from a config (no package or
download); --precision bf16: every forward pass (summed and engine) under bf16 autocast.

Run: python benchmarks/step_ratio.py [--quick] [--repeats 7] [--methods pcgrad,mgda]
     [--device cuda] [--encoder-size minilm|base|tiny] [--precision fp32|bf16]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import _common as bench
import torch

from gradlab.methods import METHODS

#: how each method computes its weights from the Gramian; "solver" ones solve an
#: optimisation problem at every step and are exempt from the 1.10 target (issue 7).
METHOD_KIND = {
    "sum": "closed form",
    "mean": "closed form",
    "pcgrad": "closed form (T^2 projections)",
    "pcgrad_layerwise": "closed form, per block",
    "mgda": "solver: Frank-Wolfe iterations (min-norm QP)",
    "cagrad": "solver: cvxpy + Clarabel (SOCP)",
    "imtl_g": "closed form (pseudo-inverse)",
    "aligned_mtl": "closed form (eigendecomposition)",
    "upgrad": "solver: T quadprog QPs",
    "dualproj": "solver: one quadprog QP",
    "nash_mtl": "solver: cvxpy + ECOS (sequence of convex problems)",
    "random": "loss weighting (random)",
    "gradvac": "closed form, per block (EMA targets)",
    "uncertainty": "loss weighting (learned)",
    "dwa": "loss weighting (loss ratios)",
    "gradnorm": "loss weighting (last block's Gramian)",
}

OTHER_KIND = {"summed": "baseline", "summed_keepgrad": "summed, zero_grad(set_to_none=False)",
              "pcgrad_noinstr": "pcgrad without Monitor",
              "probe": "probe (no optimizer step)"}


def target_of(variant: str) -> float | None:
    if variant == "pcgrad":
        return 1.05  # issue 7 (issue 2: 1.10)
    if variant in OTHER_KIND:
        return None
    name = "sum" if variant == "engine_sum" else variant
    return None if METHOD_KIND.get(name, "").startswith("solver") else 1.10


def main(argv: list[str] | None = None) -> int:
    parser = bench.base_parser(__doc__.split("\n", 1)[0], malloc_option=True)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps per variant (default 7; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds after the trial round (default 1)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated methods (default: every method in METHODS)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--no-probe", action="store_true", help="skip the probe variant")
    bench.add_device_options(parser)
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here")
    repeats = args.repeats or (3 if args.quick else 7)
    header = bench.start(args, "step_ratio")

    cfg = bench.make_config(args.quick, encoder_size=args.encoder_size,
                            batch_size=args.batch_size, probe_batch_size=args.batch_size,
                            max_length=args.seq_len, device=args.device,
                            precision=args.precision)
    s = bench.build_setup(cfg, seq_len=args.seq_len)
    engine = bench.make_engine(s)
    print(f"encoder: {bench.encoder_label(args)}; P = {engine.num_params:,} shared values in "
          f"{len(engine.blocks)} blocks; "
          f"J buffer {engine.jacobian.numel() * 4 / 2**20:.0f} MiB")
    if (args.device, args.precision) != ("cpu", "fp32"):
        print(f"device: {args.device}; precision: {args.precision}"
              + (" (forward passes under bf16 autocast)" if args.precision == "bf16" else ""))
    print(f"batches: {bench.batch_shape_note(s.model, s.tasks, args.batch_size, args.seq_len)}")

    names = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {sorted(METHODS)}")

    tmp = tempfile.TemporaryDirectory(prefix="gradlab-bench-")
    store_root = Path(tmp.name)
    steps = {"summed": lambda t: bench.summed_step(s, t),
             "summed_keepgrad": lambda t: bench.summed_step(s, t, set_to_none=False)}
    skipped, engine_steps = {}, {}
    for name in names:
        variant = "engine_sum" if name == "sum" else name
        try:
            engine_steps[variant] = bench.make_engine_step(s, name, engine, instrumented=True,
                                                           store_root=store_root)
        except ImportError as err:
            skipped[variant] = str(err).split(";")[0]
    if "pcgrad" in engine_steps:
        engine_steps["pcgrad_noinstr"] = bench.make_engine_step(s, "pcgrad", engine,
                                                                instrumented=False,
                                                                store_root=None)
    steps.update(engine_steps)
    probe = None if args.no_probe else make_probe(s, engine, store_root, args.seq_len)
    if probe is not None:
        steps["probe"] = probe

    # Trial round: every variant once (untimed); a variant that fails here is reported.
    for variant in list(steps):
        try:
            steps[variant]({})
        except Exception as err:  # report it and go on with the other variants
            skipped[variant] = f"failed: {type(err).__name__}: {err}"
            del steps[variant]
    print(f"variants: {', '.join(steps)}")
    for variant, reason in skipped.items():
        print(f"skipped {variant}: {reason}")
    print(f"{repeats} timed + {args.warmup} warmup rounds of {len(steps)} variants ...",
          flush=True)

    def progress(r: int, variant: str, seconds: float) -> None:
        warm = " (warmup)" if r < args.warmup else ""
        print(f"  round {r}{warm}: {variant} {seconds:.3f} s", file=sys.stderr, flush=True)

    records = bench.run_interleaved(steps, rounds=args.warmup + repeats, warmup=args.warmup,
                                    on_step=None if args.quick else progress,
                                    sync=s.sync if s.device_type == "cuda" else None)
    gpu_memory = bench.gpu_peak_memory(steps) if s.device_type == "cuda" else None
    for step in engine_steps.values():
        step.close()
    if probe is not None:
        probe.close()
    tmp.cleanup()

    results = report(records, skipped, args, engine)
    if gpu_memory is not None:
        results["gpu_memory"] = report_gpu_memory(gpu_memory, engine, s)
    bench.finish(header, results, save=not args.no_save)
    return 0


def report_gpu_memory(peaks: dict, engine, s: bench.Setup) -> dict:
    """Peak GPU memory per variant beside the engine buffers' bound (T+1)*P*bytes."""
    bytes_per = engine.jacobian.element_size()
    bound_mib = (engine.num_tasks + 1) * engine.num_params * bytes_per / 2**20
    base = peaks["summed"]["peak_mib"]
    rows = [{"variant": v, "peak_mib": p["peak_mib"], "step_mib": p["step_mib"],
             "over_summed_mib": p["peak_mib"] - base} for v, p in peaks.items()]
    print(f"\npeak GPU memory per variant (one step after reset_peak_memory_stats; peak = "
          f"max_memory_allocated, everything held; step = peak less what was allocated "
          f"before the step); engine buffers bound (T+1)*P*bytes = ({engine.num_tasks}+1) x "
          f"{engine.num_params:,} x {bytes_per} = {bound_mib:.0f} MiB")
    bench.print_table(rows, ["variant", "peak_mib", "step_mib", "over_summed_mib"])
    return {"variants": peaks, "bound_mib": bound_mib, "num_tasks": engine.num_tasks,
            "num_params": engine.num_params, "bytes": bytes_per,
            "device_name": torch.cuda.get_device_name(torch.device(s.cfg.device))}


def make_probe(s: bench.Setup, engine, store_root: Path, seq_len: int):
    """A callable doing what the training loop does on a probe step: ``gradlab.probe.probe``
    (all task gradients on the probe batches, eval mode, counterfactual weights) and
    the Monitor logging it to a real run store."""
    import dataclasses

    from gradlab.monitor import Monitor
    from gradlab.probe import probe
    from gradlab.store import RunWriter

    parts = dataclasses.replace(s.parts, engine=engine,
                                probe_replicates=s.cfg.probe_replicates)  # K batches per task
    writer = RunWriter(store_root / "probe", name="probe", config={}, tasks=s.tasks,
                       blocks=[(b.name, b.numel) for b in engine.blocks], method="pcgrad",
                       seed=s.cfg.seed, schedule="joint")
    monitor = Monitor(writer, s.tasks, engine.block_names)
    state = {"step": 0}

    def probe_step(timings: dict[str, float]) -> None:
        result = probe(parts, state["step"], s.scheduler.get_last_lr()[0])
        if result.fault is not None:
            raise FloatingPointError(f"probe: {result.fault}")
        monitor.probe(state["step"], result.block_gramians, result.losses,
                      result.counterfactuals, replicate_gramians=result.replicate_gramians)
        state["step"] += 1

    probe_step.close = writer.close  # type: ignore[attr-defined]
    probe_step.counterfactuals = list(parts.counterfactuals)  # type: ignore[attr-defined]
    return probe_step


def demo_probe_every() -> int:
    """probe_every of configs/demo.yaml (the demo's amortised probe cost is reported too)."""
    from gradlab.config import load_config

    try:
        return load_config(bench.REPO / "configs" / "demo.yaml").probe_every or 10
    except Exception:  # a broken demo config must not spoil the benchmark's report
        return 10


def report(records, skipped, args, engine) -> dict:
    stats = {v: bench.summarize([r["total"] for r in recs]) for v, recs in records.items()}
    base = stats["summed"]["median"]
    summed_times = [r["total"] for r in records["summed"]]
    rows, results = [], {"variants": {}, "skipped": skipped}
    for variant, st in stats.items():
        recs = records[variant]
        paired = sorted(r["total"] / b for r, b in zip(recs, summed_times, strict=False))
        phases = {k: bench.summarize([r[k] for r in recs]) for k in recs[0] if k != "total"} \
            if recs else {}
        name = "sum" if variant == "engine_sum" else variant
        target = target_of(variant)
        ratio = st["median"] / base
        row = {
            "variant": variant,
            "kind": OTHER_KIND.get(variant) or METHOD_KIND.get(name, ""),
            "median_s": st["median"], "iqr_s": st["iqr"], "ratio": ratio,
            "paired_ratio": bench.statistics.median(paired) if paired else None,
            "faults_k": phases["page_faults"]["median"] / 1e3 if recs else None,
            "method_ms": 1e3 * phases["method"]["median"] if "method" in phases else None,
            "monitor_ms": 1e3 * phases["monitor"]["mean"] if "monitor" in phases else None,
            "target": f"<= {target:.2f}" if target else "-",
            "ok": ("yes" if ratio <= target else "NO") if target else "-",
        }
        rows.append(row)
        results["variants"][variant] = {**row, "stats": st, "phases": phases,
                                        "times": [r["total"] for r in recs]}
    print()
    print(f"step time per variant ({len(summed_times)} timed steps each; ratio = median / "
          f"median of summed; paired = median of per-round ratios; faults_k = minor page "
          f"faults per step / 1000, median; monitor_ms = mean)")
    bench.print_table(rows, ["variant", "kind", "median_s", "iqr_s", "ratio", "paired_ratio",
                             "faults_k", "method_ms", "monitor_ms", "target", "ok"])

    if "pcgrad" in stats and "pcgrad_noinstr" in stats:
        overhead = stats["pcgrad"]["median"] / stats["pcgrad_noinstr"]["median"]
        monitor_share = (results["variants"]["pcgrad"]["phases"]["monitor"]["mean"]
                         / stats["pcgrad_noinstr"]["median"])
        results["instrumentation"] = {"ratio": overhead, "monitor_share": monitor_share}
        print(f"\ninstrumentation overhead (issue 3, target <= 1.03): pcgrad / pcgrad_noinstr "
              f"= {overhead:.3f}; Monitor phase alone (mean, incl. store commits) = "
              f"{100 * monitor_share:.2f}% of a pcgrad_noinstr step")
    if "pcgrad" in records and records["pcgrad"]:
        ph = results["variants"]["pcgrad"]["phases"]
        total = stats["pcgrad"]["median"]
        print("pcgrad step phases (median ms, share of median step): " + ", ".join(
            f"{k} {1e3 * v['median']:.1f} ({100 * v['median'] / total:.1f}%)"
            for k, v in ph.items() if k in bench.ENGINE_PHASES))
    if "probe" in stats:
        probe_ratio = stats["probe"]["median"] / base
        amortised = {n: probe_ratio / n for n in sorted({10, 25, 50, demo_probe_every()})}
        results["probe"] = {"ratio_to_summed": probe_ratio, "amortised": amortised}
        print(f"\nprobe (all {engine.num_tasks} task gradients on "
              f"probe batches, eval mode, counterfactuals sum/mean/pcgrad): "
              f"{stats['probe']['median']:.3f} s = {probe_ratio:.2f} summed steps")
        print("amortised probe overhead per training step (demo config: probe_every="
              f"{demo_probe_every()}): " + ", ".join(
            f"probe_every={n}: +{100 * a:.1f}%" for n, a in amortised.items()))
    return results


if __name__ == "__main__":
    raise SystemExit(main())
