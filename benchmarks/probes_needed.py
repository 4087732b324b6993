"""How many replicate probes a run needs before its pooled expected cosines are determined.

Reads a `gradlab noise-study` folder (its gramians.npz: rounds x K replicate batches per task
at ONE fixed model), regroups the replicate batches into the probes a run with
``probe_replicates = --k`` would take (K*T rows each, batches in drawing order), and pools the
first n probes with `gradlab.calibration.pair_frame` for n = 2, 3, ...: the expected cosine
of every pair with its jackknife interval, or "undetermined". A run's own probes are spread
over training (the model moves between them), so this is the best case: at a fixed model.

    python benchmarks/probes_needed.py docs/measurements/noise_study_minilm_sum80_b16
    python benchmarks/probes_needed.py DIR --k 2 --batch-size 16 --block encoder
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gradlab.calibration import format_interval, pair_frame


def regroup(gramians: np.ndarray, tasks: int, k: int) -> np.ndarray:
    """[S, R*T, R*T] rounds of R replicates (replicate-major) -> [S*R//k, k*T, k*T] probes of
    k replicates each (a round's leftover replicates, R mod k, are dropped)."""
    rounds, rows, _ = gramians.shape
    r = rows // tasks
    probes = []
    for s in range(rounds):
        for start in range(0, r - k + 1, k):
            idx = [(start + a) * tasks + i for a in range(k) for i in range(tasks)]
            probes.append(gramians[s][np.ix_(idx, idx)])
    return np.stack(probes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a noise-study output folder")
    parser.add_argument("--k", type=int, default=2, help="replicates per probe (the run's K)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="which batch size of the study (default: its first)")
    parser.add_argument("--block", default="encoder",
                        help="'encoder' (all blocks summed) or one block name")
    parser.add_argument("--level", type=float, default=0.95)
    args = parser.parse_args()

    z = np.load(args.folder / "gramians.npz")
    tasks = [str(t) for t in z["tasks"]]
    b = args.batch_size or int(z["batch_sizes"][0])
    full = z[f"gramians_b{b}"]  # [S, B, K*T, K*T]
    blocks = [str(n) for n in z["block_names"]]
    g = full.sum(1) if args.block == "encoder" else full[:, blocks.index(args.block)]
    probes = regroup(g, len(tasks), args.k)
    print(f"{args.folder}: batch {b}, {len(probes)} probes of K = {args.k} "
          f"({args.k} batches per task each), block {args.block}")
    for n in range(2, len(probes) + 1):
        f = pair_frame(probes[:n], tasks, level=args.level)
        f = f[f.quantity == "expected_cos"]
        cells = [f"{r.pair} {format_interval(r._asdict())}" for r in f.itertuples()]
        print(f"{n:3d} probes ({n * args.k:3d} batches/task): " + "; ".join(cells))


if __name__ == "__main__":
    main()
