"""Noise-calibrated conflict on real gradients: within-task cosines, expected cosines with
jackknife intervals, and noise scales of the demo model at initialisation (issue 13).

The model is the demo's (configs/demo.yaml: packaged MiniLM-L6, its heads at seed 0) in eval
mode (dropout off). Each of ``--windows`` probe windows draws ``--replicates`` K independent
batches of ``--batch-size`` examples per task from the training files (disjoint indices,
seeded), fills the gradient engine's J [K*T, P] (replicate-major rows a*T + i, one backward per
batch, exactly as the trainer's probe does) and keeps its per-block Gramians. The estimators
of `gradlab.calibration` then pool the windows (the parameters do not change between them, so
pooling windows is pooling more replicate batches; intervals: delete-one jackknife over
replicate batches, stratified by window).

    OMP_NUM_THREADS=1 python benchmarks/calibration_check.py        # ~3-5 min on this machine
    python benchmarks/calibration_check.py --quick                  # tiny random BERT, seconds
"""

from __future__ import annotations

import time
import zlib

import _common as common
import numpy as np
import torch

from gradlab.calibration import format_interval

#: the numbers quoted in issue 13 (MiniLM-L6, dropout off, batch 16, initialisation)
ISSUE_WITHIN_COS = {"sst": 0.09, "para": 0.09, "sts": 0.77}
ISSUE_EXPECTED_COS = {"sst-para": "-0.02", "sst-sts": "+0.07", "para-sts": "-0.10 [-0.11, -0.08]"}


def main() -> None:
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=4, help="K batches per task per window")
    parser.add_argument("--windows", type=int, default=4,
                        help="probe windows (fresh batches, same parameters) to pool")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per batch")
    parser.add_argument("--seed", type=int, default=0, help="model seed (heads) and data seed")
    parser.add_argument("--level", type=float, default=0.95, help="nominal interval level")
    parser.add_argument("--save-gramians", default=None,
                        help="write the block Gramians [S, B, K*T, K*T] to this .npz file")
    parser.add_argument("--from-gramians", default=None,
                        help="analyse block Gramians saved by --save-gramians (no model, no "
                             "gradients)")
    args = parser.parse_args()
    header = common.start(args, "calibration_check")
    if args.from_gramians:
        saved = np.load(args.from_gramians)
        tasks, b = [str(t) for t in saved["tasks"]], int(saved["batch_size"])
        blocks = saved["block_gramians"]
        print(f"block Gramians {blocks.shape} from {args.from_gramians}: tasks {tasks}, "
              f"batch {b}")
        report(args, header, blocks, [str(n) for n in saved["block_names"]], tasks, b,
               {"source": args.from_gramians})
        return

    from gradlab.build import model_from_config as build_model
    from gradlab.build import split_from_config as load_split
    from gradlab.config import load_config
    from gradlab.data import collate, special_token_ids
    from gradlab.engine import GradientEngine
    from gradlab.model import block_name
    from gradlab.tasks import task_loss

    t0 = time.perf_counter()
    overrides = {"seed": args.seed, "batch_size": args.batch_size}
    if args.quick:
        overrides.update(tiny_encoder=dict(common.QUICK_ENCODER), train_limit=2000)
    cfg = load_config(common.REPO / "configs" / "demo.yaml", overrides)
    tasks = list(cfg.tasks)
    T, K, S, b = len(tasks), args.replicates, args.windows, args.batch_size
    model, tokenizer = build_model(cfg)
    model.eval()  # dropout off, as in the trainer's probes
    special = special_token_ids(tokenizer)
    train = {t: load_split(cfg, t, "train", tokenizer) for t in tasks}
    shared = model.shared_parameters()
    engine = GradientEngine([p for _, p in shared], [block_name(n) for n, _ in shared],
                            num_tasks=K * T)
    head_params = [p for _, p in model.head_parameters()]
    # disjoint batches: one seeded permutation per task, cut into S*K batches of b
    order = {}
    for t in tasks:
        n = len(train[t].tokenized)
        if n < S * K * b:
            raise SystemExit(f"task {t!r} has {n} training examples, fewer than S*K*b = "
                             f"{S * K * b}")
        rng = np.random.default_rng([args.seed, zlib.crc32(t.encode())])
        order[t] = rng.permutation(n)[:S * K * b].reshape(S, K, b)
    t_setup = time.perf_counter() - t0
    print(f"model {cfg.encoder}{' (tiny random)' if args.quick else ''}: P = "
          f"{engine.num_params:,} shared values, {len(engine.blocks)} blocks; tasks {tasks}; "
          f"K = {K} batches of {b} per task per window, {S} windows; setup {t_setup:.1f} s")

    block_gramians, losses = [], np.zeros((S, K, T))
    t1 = time.perf_counter()
    for s in range(S):
        for a in range(K):
            for i, t in enumerate(tasks):
                batch = collate(train[t].tokenized, order[t][s, a], layout=model.layout(t),
                                max_length=cfg.max_length, **special)
                engine.bind_row(a * T + i)
                loss = task_loss(model.task_specs[t], model(t, batch).float(), batch["labels"])
                loss.backward()
                engine.check_bound(a * T + i)
                losses[s, a, i] = loss.item()
                for p in head_params:
                    p.grad = None
        block_gramians.append(engine.block_gramians(K * T).numpy())
        print(f"  window {s + 1}/{S}: {time.perf_counter() - t1:.1f} s", flush=True)
    t_grad = time.perf_counter() - t1
    blocks = np.stack(block_gramians)  # [S, B, K*T, K*T]
    if args.save_gramians:
        np.savez(args.save_gramians, block_gramians=blocks, block_names=engine.block_names,
                 tasks=tasks, batch_size=b)
    print(f"gradients: {t_grad:.1f} s = {t_grad / (S * K):.1f} s per replicate of all {T} "
          f"tasks (setup {t_setup:.1f} s); mean losses "
          + ", ".join(f"{t} {losses[..., i].mean():.3f}" for i, t in enumerate(tasks)))
    report(args, header, blocks, engine.block_names, tasks, b, {
        "encoder": cfg.encoder, "seed": args.seed, "gradient_s": t_grad, "setup_s": t_setup,
        "losses": losses.mean((0, 1)).tolist()}, t0=t0)


def report(args, header, blocks, block_names, tasks, b, info, t0=None) -> None:
    """Print and save the calibrated statistics of block Gramians [S, B, K*T, K*T]."""
    from gradlab import calibration

    t0 = time.perf_counter() if t0 is None else t0
    T = len(tasks)
    S, K = blocks.shape[0], blocks.shape[-1] // T
    G = blocks.sum(1)  # [S, K*T, K*T]
    tf = calibration.task_frame(G, tasks, batch_size=b, level=args.level)
    pf = calibration.pair_frame(G, tasks, level=args.level)
    pred = calibration.predicted_cosine_frame(G, tasks, batch_size=b, batch_sizes=[1, 4, 16, 64],
                                              level=args.level)
    # per window: the raw cosine a user sees on the first replicate (G[:T, :T] is one probe)
    first = G[:, :T, :T]
    nrm = np.sqrt(np.einsum("sii->si", first))
    raw_first = first / (nrm[:, :, None] * nrm[:, None, :])

    pct = f"{round(100 * args.level)}%"
    print(f"\nper task (pooled over {S} x {K} = {S * K} batches of {b}; {pct} jackknife "
          f"intervals over {tf['units'].iloc[0]})")
    rows = []
    for t in tasks:
        sel = tf[tf.task == t].set_index("quantity")
        rows.append({"task": t,
                     "within cos": format_interval(sel.loc["within_cos"]),
                     "issue": f"{ISSUE_WITHIN_COS.get(t, float('nan')):.2f}",
                     "signal share": format_interval(sel.loc["signal_share"]),
                     "B_noise (examples)": format_interval(sel.loc["b_noise"], "{:.0f}"),
                     "|mu|^2": format_interval(sel.loc["mu_sq"], "{:.3g}"),
                     "reason": sel.loc["b_noise", "reason"]})
    common.print_table(rows, list(rows[0]))
    print(f"\nper task pair (expected cos = cos(mu_i, mu_j), corrected for noise; raw = mean "
          f"cosine of two batch-{b} gradients; conflict = P(raw cos < 0), noise alone: 0.5)")
    rows = []
    for pair in pf.pair.unique():
        sel = pf[pf.pair == pair].set_index("quantity")
        i, j = (tasks.index(x) for x in pair.split("-"))
        rows.append({"pair": pair,
                     "expected cos": format_interval(sel.loc["expected_cos"]),
                     "issue": ISSUE_EXPECTED_COS.get(pair, ""),
                     "raw cos": format_interval(sel.loc["raw_cos"]),
                     "raw sd": f"{sel.loc['raw_cos_sd', 'estimate']:.3f}",
                     "first-replicate raw cos per window": " ".join(
                         f"{v:+.3f}" for v in raw_first[:, i, j]),
                     "conflict": format_interval(sel.loc["conflict_rate"], "{:.2f}"),
                     "reason": sel.loc["expected_cos", "reason"]})
    common.print_table(rows, list(rows[0]))
    # the same ratio with the undetermined flag ignored: NOT a valid interval where a |mu|^2
    # interval reaches 0 (the ratio's linearisation fails there); printed only to compare
    rho, rho_lo, rho_hi, _ = calibration.jackknife(G, T, calibration._expected_cosines,
                                                   level=args.level)
    print("expected cos with the undetermined flag ignored (for comparison only; the interval "
          "is not valid where a |mu|^2 interval reaches 0): " + "; ".join(
              f"{tasks[i]}-{tasks[j]} {rho[i, j]:+.3f} [{rho_lo[i, j]:+.3f}, {rho_hi[i, j]:+.3f}]"
              for i in range(T) for j in range(i + 1, T)))
    print("\npredicted raw cosine at batch size b' (from expected cos and B_noise; diagonal: "
          "within-task)")
    rows = []
    for pair in pred.pair.unique():
        sel = pred[pred.pair == pair].set_index("batch_size")
        rows.append({"pair": pair,
                     **{f"b'={bs}": format_interval(sel.loc[bs]) for bs in sel.index}})
    common.print_table(rows, list(rows[0]))
    # the per-layer view: expected cosines per block (point estimates only)
    print("\nexpected cos per block (point estimates; NaN: |mu|^2 estimate <= 0 in that block)")
    rho_blocks = calibration.expected_cosines(blocks.mean(0), T)  # pools windows by mean
    rows = [{"block": name, **{f"{tasks[i]}-{tasks[j]}": f"{rho_blocks[k, i, j]:+.3f}"
                               for i in range(T) for j in range(i + 1, T)}}
            for k, name in enumerate(block_names)]
    common.print_table(rows, list(rows[0]))
    wall = time.perf_counter() - t0
    print(f"\nwall time {wall:.1f} s")
    common.finish(header, {
        "config": {**info, "batch_size": b, "replicates": K, "windows": S,
                   "level": args.level, "quick": args.quick},
        "task_frame": tf.to_dict("records"), "pair_frame": pf.to_dict("records"),
        "predicted": pred.to_dict("records"), "raw_first": raw_first.tolist(),
        "gramians": G.tolist(), "wall_s": wall,
    }, save=not args.no_save)



if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
