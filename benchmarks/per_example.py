"""Cost and accuracy of the per-example gradient Gramian (gradlab.per_example) on MiniLM-L6.

Setting (issue 16): MiniLM-L6 (the packaged encoder) with the trainer's default heads
(mean pooling, linear SST head, bi-encoder PARA and STS heads), N = 3 x --per-task real dev
examples (default 16 per task: N = 48), max_length 64, each task's examples padded to its
longest. Variants, every one once per round in a seeded random order, warmup discarded:

  summed       one ordinary training step on the same examples as batches of --per-task per
               task: forward all tasks, sum the mean losses, one backward, clip, AdamW
  per_example  example_gramians(..., strategy="auto"): one forward and one backward per
               task, per-block Gramians [B, N, N] (float64 on the CPU)
  <strategy>   the same with --strategies forced (e.g. "dense", "ghost")

Then, once, the reference: a loop of N batch-1 forward + backward passes into dense
per-example gradient rows (the word embeddings restricted to the ids that occur, which is
exact) and their Gramian in float64; its time and the per-block error of the per-example
Gramian against it, max |dG_ij| / sqrt(G_ii G_jj) (the error of a cosine), on the same
weights (before any timed step).

Run: OMP_NUM_THREADS=1 python benchmarks/per_example.py --threads 1 [--quick] [--repeats 5]
     [--per-task 16] [--device cuda] [--encoder-size minilm|base|tiny]
     [--strategies dense,ghost] [--no-reference]
"""

from __future__ import annotations

import sys
import time

import _common as bench
import numpy as np
import torch

from gradlab.data import collate, load_task, special_token_ids, tokenize_texts
from gradlab.model import block_name
from gradlab.per_example import example_gramians, sample_examples
from gradlab.tasks import TASKS, task_loss

parser = bench.base_parser(__doc__.split("\n")[0])
parser.add_argument("--repeats", type=int, default=None,
                    help="timed rounds (default 5; 2 with --quick)")
parser.add_argument("--warmup", type=int, default=1)
parser.add_argument("--per-task", type=int, default=16, help="examples per task")
parser.add_argument("--max-length", type=int, default=64)
bench.add_device_options(parser, precision=False)
parser.add_argument("--strategies", default="",
                    help="comma-separated forced strategies to time as well (dense, ghost)")
parser.add_argument("--no-reference", action="store_true",
                    help="skip the batch-1 loop (its time and the accuracy check)")


def main(argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    header = bench.start(args, "per_example")
    cfg = bench.make_config(args.quick, encoder_size=args.encoder_size,
                            batch_size=args.per_task, max_length=args.max_length,
                            device=args.device)
    s = bench.build_setup(cfg, seq_len=args.max_length)
    model = s.model
    batches, source = example_batches(s, args)
    s.batches = batches  # the summed step trains on the same examples
    n = sum(len(b["labels"]) for b in batches.values())
    shapes = "; ".join(f"{t}: " + ", ".join(f"{k[len('input_ids'):] or 'x'} "
                                            f"{list(v.shape)}" for k, v in b.items()
                                            if k.startswith("input_ids"))
                       for t, b in batches.items())
    print(f"encoder: {bench.encoder_label(args)}; P = {s.num_shared:,} shared values; "
          f"device {args.device}")
    print(f"N = {n} {source} ({args.per_task} per task); input shapes: {shapes}")

    results: dict = {"n": n, "per_task": args.per_task, "device": args.device,
                     "examples": source, "input_shapes": shapes, "num_shared": s.num_shared}
    if not args.no_reference:  # first: the timed steps below change the weights
        results["reference"] = reference_check(model, batches)
        ref = results["reference"]
        print(f"\nbatch-1 loop: {ref['seconds']:.2f} s; max cosine-scale error per block: "
              + ", ".join(f"{b} {e:.1e}" for b, e in ref["max_error"].items()))

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def timed(fn):
        def step(timings: dict) -> None:
            fn()
            sync()
        return step

    steps = {"summed": timed(lambda: bench.summed_step(s)),
             "per_example": timed(lambda: example_gramians(model, batches))}
    for strategy in filter(None, args.strategies.split(",")):
        steps[strategy] = timed(lambda st=strategy: example_gramians(model, batches,
                                                                     strategy=st))
    for fn in steps.values():  # trial round, untimed
        fn({})
    records = bench.run_interleaved(
        steps, rounds=args.warmup + repeats, warmup=args.warmup,
        on_step=lambda r, v, t: print(f"  round {r}: {v} {t:.3f} s", file=sys.stderr,
                                      flush=True))
    stats = {v: bench.summarize([r["total"] for r in recs]) for v, recs in records.items()}
    if args.device.startswith("cuda"):  # peak GPU memory of one call of each variant
        for variant, fn in steps.items():
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn({})
            stats[variant]["peak_gpu_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    base = stats["summed"]["median"]
    rows = [{"variant": v, "median_s": st["median"], "iqr_s": st["iqr"], "n": st["n"],
             "ratio": st["median"] / base} for v, st in stats.items()]
    if "reference" in results:
        rows.append({"variant": "batch1_loop (once)", "median_s": results["reference"]["seconds"],
                     "n": 1, "ratio": results["reference"]["seconds"] / base})
    print()
    for row in rows:
        row["peak_gpu_mib"] = stats.get(row["variant"], {}).get("peak_gpu_mib")
    bench.print_table(rows, ["variant", "median_s", "iqr_s", "n", "ratio", "peak_gpu_mib"])
    results["timings"] = stats
    results["ratios"] = {r["variant"]: r["ratio"] for r in rows}
    bench.finish(header, results, save=not args.no_save)
    return 0


def example_batches(s: bench.Setup, args) -> tuple[dict, str]:
    """--per-task real dev examples per task, collated per task (padded to each task's
    longest); where the task data cannot be found, random token ids of --max-length."""
    from gradlab.data import resolve_data_dir

    try:
        resolve_data_dir()
        missing = None if s.tokenizer is not None else \
            "no tokenizer (the packaged MiniLM is not installed)"
    except FileNotFoundError:
        missing = "no task data folder (set GRADLAB_DATA)"
    if missing is not None:
        print(f"NOTE: {missing}: random token ids, no padding")
        batches = bench.random_batches(s.model, s.tasks, batch_size=args.per_task,
                                       seq_len=args.max_length, special=s.special,
                                       vocab_size=s.model.encoder.config.vocab_size, seed=0)
        return {t: {k: v.to(args.device) for k, v in b.items()} for t, b in batches.items()}, \
            "random-token examples"
    special = special_token_ids(s.tokenizer)
    batches = {}
    for t in s.tasks:
        data = sample_examples(load_task(t, "dev"), args.per_task, seed=0)
        batch = collate(tokenize_texts(data, s.tokenizer), np.arange(len(data)),
                        layout=s.model.layout(t), max_length=args.max_length, **special)
        batches[t] = {k: v.to(args.device) for k, v in batch.items()}
    return batches, "real dev examples"


def reference_check(model, batches) -> dict:
    """Time the batch-1 loop into dense rows; compare its per-block Gramians with ours."""
    names, ours, _ = example_gramians(model, batches)
    t0 = time.perf_counter()
    expected = batch_one_gramians(model, batches, names)
    seconds = time.perf_counter() - t0
    scale = torch.sqrt(torch.diagonal(expected, dim1=-2, dim2=-1).clamp_min(0))
    denom = (scale.unsqueeze(-1) * scale.unsqueeze(-2)).clamp_min(1e-30)
    error = ((ours - expected).abs() / denom).amax((1, 2))
    total = expected.sum(0)
    total_scale = torch.sqrt(torch.diagonal(total).clamp_min(0))
    total_error = float(((ours.sum(0) - total).abs()
                         / (total_scale[:, None] * total_scale[None]).clamp_min(1e-30)).max())
    return {"seconds": seconds, "blocks": list(names),
            "max_error": {**{b: float(e) for b, e in zip(names, error, strict=True)},
                          "encoder": total_error}}


def batch_one_gramians(model, batches, names) -> torch.Tensor:
    """Per-block Gramians [B, N, N] float64 of dense per-example gradient rows (batch-1 loop).

    The word-embedding gradient of a batch is zero outside the ids it holds, so its rows keep
    only the columns of the ids that occur in any example (exact, and 20x smaller)."""
    named = model.shared_parameters()
    word = model.encoder.get_input_embeddings().weight
    used = torch.unique(torch.cat([v.flatten() for b in batches.values()
                                   for k, v in b.items() if k.startswith("input_ids")]))
    model.eval()
    rows = []
    for task, batch in batches.items():
        for i in range(len(batch["labels"])):
            one = {k: v[i:i + 1] for k, v in batch.items()}
            for key in [k for k in one if k.startswith("attention_mask")]:  # drop padding
                width = int(one[key].sum())
                suffix = key[len("attention_mask"):]
                for k in ("input_ids", "attention_mask", "token_type_ids"):
                    one[k + suffix] = one[k + suffix][:, :width]
            loss = task_loss(TASKS[task], model(task, one), one["labels"])
            grads = torch.autograd.grad(loss, [p for _, p in named])
            parts = {b: [] for b in names}
            for (name, p), g in zip(named, grads, strict=True):
                parts[block_name(name)].append((g[used] if p is word else g).reshape(-1))
            rows.append({b: torch.cat(v) for b, v in parts.items()})
    model.train()
    out = torch.zeros(len(names), len(rows), len(rows), dtype=torch.float64)
    for k, b in enumerate(names):
        dense = torch.stack([r[b] for r in rows])
        for a in range(0, dense.shape[1], 1 << 20):
            chunk = dense[:, a:a + (1 << 20)].double()
            out[k] += (chunk @ chunk.T).cpu()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
