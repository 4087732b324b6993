"""``gradlab demo``: sum, round-robin and PCGrad side by side on the embedded default, with
the frozen-encoder baseline.

Same seed, data, batch size and per-task examples for all four: the demo counts ``steps``
per task (``step_budget=per_task``), so round-robin takes T times as many optimizer steps,
one task each, and every task sees the same batches as in the joint runs. The fourth run,
"frozen", is the summed-loss run with the encoder frozen (``freeze_encoder=true``: the heads
alone train, same batches and budget), so the table says what fine-tuning the encoder adds
and what each method adds on top of it.

During training each run is evaluated every ``eval_every`` batches per task on a fixed dev
subset (the config's ``dev_limit`` first rows of each dev file: the training curves); at the
end its last checkpoint is evaluated on the full dev sets. Prints a table of full-dev metrics
and wall time, and writes figures to figures/demo/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"

#: (run name, method, schedule, freeze_encoder) of the demo's trainings
DEMO_RUNS = (("sum", "sum", "joint", False), ("round_robin", "sum", "round_robin", False),
             ("pcgrad", "pcgrad", "joint", False), ("frozen", "sum", "joint", True))
#: how the table names each run
DEMO_LABELS = {"frozen": "frozen encoder (heads only)"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train sum, round-robin and PCGrad side by side, and the "
                                    "frozen-encoder baseline (main job)")
    p.add_argument("--config", type=Path, default=DEMO_CONFIG)
    p.add_argument("--runs-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--out", type=Path, default=Path("figures/demo"), help="figure folder")
    p.add_argument("--no-figures", action="store_true")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="keep the runs that finished, continue or redo the others")
    again.add_argument("--force", action="store_true",
                       help="delete the demo's runs under --runs-dir and train them anew")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config changes applied to all four runs (e.g. steps=50)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from gradlab import train
    from gradlab.config import load_config

    base = load_config(args.config if args.config.is_file() else None, args.overrides)
    t0 = time.perf_counter()
    handles, full_dev = [], []
    existing = [n for n, *_ in DEMO_RUNS if (args.runs_dir / n).exists()]
    if existing and not (args.resume or args.force):
        raise ValueError(f"runs {existing} exist in {args.runs_dir}; keep the finished ones "
                         "and redo the rest with `gradlab demo --resume`, or start over with "
                         "`gradlab demo --force`")  # fmt: skip
    for name, method, schedule, frozen in DEMO_RUNS:
        folder = args.runs_dir / name
        if args.force and folder.exists():
            shutil.rmtree(folder)
        # eval_every and probe_every count batches per task, as `steps` does: a one-task
        # schedule takes T optimizer steps per batch of each task, so its evaluations and
        # probes fall at the joint runs' points (and it probes as often as they do)
        scale = len(base.tasks) if schedule != "joint" else 1
        settings = {"method": method, "schedule": schedule, "step_budget": "per_task",
                    "eval_every": base.eval_every * scale,
                    "probe_every": base.probe_every * scale, "freeze_encoder": frozen}
        if frozen:  # no shared gradients: nothing to probe or take a Gramian of
            settings.update(probe_every=0, log_train_gramians=False)
        handle = _finished(folder, base, settings) if args.resume else None
        if handle is None:
            if folder.exists():  # unfinished: its checkpoints are not the demo's to trust
                shutil.rmtree(folder)
            handle = train(base, name=name, runs_dir=str(args.runs_dir), **settings)
        else:
            print(f"{name}: finished before, kept")
        handles.append(handle)
        full_dev.append(_full_dev_metrics(handle, base.dev_limit))
    rows = []
    for handle, (m, eval_time) in zip(handles, full_dev, strict=True):
        rows.append({
            "method": DEMO_LABELS.get(handle.name, handle.name),
            "steps": handle.config.optimizer_steps,
            "SST acc": m.get("sst", {}).get("accuracy"),
            "PARA acc": m.get("para", {}).get("accuracy"),
            "STS r": m.get("sts", {}).get("pearson"),
            "mean": m.get("overall", {}).get("mean"),
            "score": m.get("overall", {}).get("score"),
            "wall time (s)": round(handle.wall_time + eval_time, 1),
        })
    table = pd.DataFrame(rows)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.runs_dir / "results.csv", index=False)
    print()
    subset = f"the first {base.dev_limit} rows of each dev file" if base.dev_limit else "full dev"
    print(f"full dev sets at the end (curves during training: {subset})")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if not args.no_figures:
        from gradlab.cli.figures import write_demo_figures

        written = write_demo_figures([h.path for h in handles], args.out)
        print(f"\nwrote {len(written)} figure files to {args.out}/")
    print(f"total demo time: {time.perf_counter() - t0:.0f} s")
    return 0


def _full_dev_metrics(handle, dev_limit) -> tuple[dict, float]:
    """(metrics on the full dev sets, seconds) of the run's last checkpoint; the run's own
    final evaluation when it was on the full dev sets already or kept no checkpoint."""
    from gradlab.inference import evaluate_checkpoint

    last = handle.path / "checkpoints" / "last"
    if dev_limit is None or not last.is_dir():
        return handle.metrics, 0.0
    t0 = time.perf_counter()
    metrics = evaluate_checkpoint(last, ["dev_limit=null", "progress=false"])
    return metrics, time.perf_counter() - t0


def _finished(folder: Path, base, settings: dict):
    """The handle of a finished demo run in ``folder`` trained with this config, else None."""
    from gradlab import RunHandle
    from gradlab.config import load_config, to_dict
    from gradlab.run import load_run

    result = folder / "metrics.json"
    if not result.is_file() or load_run(folder).status != "finished":
        return None
    config = load_config(None, {**to_dict(base), **settings, "name": folder.name,
                                "runs_dir": str(folder.parent)})
    ran = load_run(folder).config
    keys = [k for k in ("steps", "seed", "method", "schedule", "batch_size", "lr", "encoder",
                        "train_limit", "dev_limit", "eval_every", "probe_every",
                        "freeze_encoder")
            if ran.get(k) != to_dict(config).get(k)]
    if keys:
        return None  # trained with other settings: redo it
    saved = json.loads(result.read_text())
    return RunHandle(folder, config, saved.get("metrics", {}), saved.get("wall_time", 0.0))
