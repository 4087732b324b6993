"""Evaluation throughput (sentences per second) on the real dev sets, MiniLM-L6.

The dev sets are read and tokenized as a run does (gradlab.build.split_from_config with the
demo config, configs/demo.yaml: max_length 64, eval_batch_size 256). The model is the demo's
(MiniLM-L6, default heads; the heads are untrained, which does not change the cost).
Variants, once per round in a seeded random order:

  naive     file order, every batch padded to max_length, torch.no_grad()
  dynamic   file order, padded to each batch's longest sequence, torch.no_grad()
  gradlab   gradlab.evaluate.predict: length-bucketed batches (longest first), padding to
            the batch's longest, torch.inference_mode()

A sentence is one encoder input: an SST example counts 1, a PARA or STS example 2 (the pair
heads are bi-encoders). Predictions of the variants are compared (they differ only by
float round-off from padding).

Run: python benchmarks/eval_throughput.py [--quick] [--repeats 2] [--limit N]
"""

from __future__ import annotations

import time

import _common as bench
import numpy as np
import torch
import torch.nn.functional as F

from gradlab.build import model_from_config, split_from_config
from gradlab.config import load_config
from gradlab.data import bucketed_batches, collate
from gradlab.evaluate import predict
from gradlab.tasks import TASKS, predict_labels

DEMO_CONFIG = bench.REPO / "configs" / "demo.yaml"
VARIANTS = ("naive", "dynamic", "gradlab")


def main(argv: list[str] | None = None) -> int:
    parser = bench.base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed passes over the dev sets per variant (default 2; --quick: 1)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N dev examples per task (default: all; --quick: 64)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 2)
    limit = args.limit or (64 if args.quick else None)
    header = bench.start(args, "eval_throughput")

    overrides = {"progress": False, "dev_limit": limit}
    if args.quick:
        overrides["tiny_encoder"] = dict(bench.QUICK_ENCODER)
    cfg = load_config(DEMO_CONFIG, overrides)
    torch.manual_seed(cfg.seed)
    model, tokenizer = model_from_config(cfg)
    special = {"cls_id": tokenizer.cls_token_id, "sep_id": tokenizer.sep_token_id,
               "pad_id": tokenizer.pad_token_id}
    dev_sets = {t: split_from_config(cfg, t, "dev", tokenizer) for t in cfg.tasks}
    sentences = {t: len(d.tokenized) * (2 if model.layout(t) == "bi" else 1)
                 for t, d in dev_sets.items()}
    print(f"encoder: {'tiny random BERT' if args.quick else 'MiniLM-L6'}; config "
          f"{DEMO_CONFIG.relative_to(bench.REPO)}: max_length {cfg.max_length}, eval batch "
          f"{cfg.eval_batch_size}; dev examples: "
          + ", ".join(f"{t} {len(d.tokenized)}" for t, d in dev_sets.items())
          + f" ({sum(sentences.values())} sentences)"
          + (f", first {limit} per task" if limit else ""))
    print(f"{repeats} timed pass{'es' if repeats > 1 else ''} over the dev sets per variant "
          "...", flush=True)
    tokens = token_counts(model, dev_sets, cfg.max_length, cfg.eval_batch_size)
    print("encoder input tokens per pass (with padding): " + ", ".join(
        f"{v} {n / 1e3:.0f}k" for v, n in tokens.items()) + "\n")
    warm_up(model, dev_sets, special, cfg.max_length)

    def predict_task(variant: str, task: str) -> np.ndarray:
        if variant == "gradlab":
            return predict(model, dev_sets[task], special_ids=special,
                           max_length=cfg.max_length, batch_size=cfg.eval_batch_size)
        return naive_predict(model, dev_sets[task], special, cfg.max_length,
                             cfg.eval_batch_size, pad_to_max=variant == "naive")

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    per_task: dict[str, dict[str, list[float]]] = {v: {t: [] for t in dev_sets}
                                                   for v in VARIANTS}
    predictions = {}
    for r, variant in bench.interleaved(VARIANTS, repeats):
        task_times = {}
        t0 = time.perf_counter()
        out = {}
        for task in dev_sets:
            t1 = time.perf_counter()
            out[task] = predict_task(variant, task)
            task_times[task] = time.perf_counter() - t1
        elapsed = time.perf_counter() - t0
        predictions[variant] = out
        times[variant].append(elapsed)
        for task, seconds in task_times.items():
            per_task[variant][task].append(seconds)
        print(f"  pass {r + 1}: {variant} {elapsed:.2f} s", flush=True)

    total = sum(sentences.values())
    rows, results = [], {"sentences": sentences, "limit": limit, "variants": {}}
    base = None
    for variant in VARIANTS:
        st = bench.summarize(times[variant])
        rate = total / st["median"]
        base = base or rate
        row = {"variant": variant, "median_s": st["median"], "iqr_s": st["iqr"],
               "sentences_per_s": rate, "speedup": rate / base,
               "tokens_k": tokens[variant] / 1e3}
        for task in dev_sets:
            row[f"{task}_sent_per_s"] = sentences[task] / bench.statistics.median(
                per_task[variant][task])
        rows.append(row)
        results["variants"][variant] = {**row, "stats": st, "times": times[variant]}
    print()
    bench.print_table(rows, ["variant", "median_s", "iqr_s", "sentences_per_s", "speedup",
                             "tokens_k",
                             *(f"{t}_sent_per_s" for t in dev_sets)])
    agreement = compare(predictions, dev_sets)
    results["agreement_with_naive"] = agreement
    print("\npredictions vs naive: " + "; ".join(
        f"{v}: " + ", ".join(f"{t} {k} {x:.4g}" for t, (k, x) in a.items())
        for v, a in agreement.items()))
    bench.finish(header, results, save=not args.no_save)
    return 0


def token_counts(model, dev_sets, max_length: int, batch_size: int) -> dict[str, int]:
    """Encoder input positions (B x L summed over batches and inputs) of each variant."""
    counts = dict.fromkeys(VARIANTS, 0)
    for task, eval_set in dev_sets.items():
        tok = eval_set.tokenized
        layout = model.layout(task)
        columns = (0, 1) if layout == "bi" else (0,)
        n = len(tok)
        if layout == "cross":
            raise ValueError("the demo config uses bi-encoder pair heads")
        lengths = [np.minimum(tok.text_lengths(c) + 2, max_length) for c in columns]
        file_order = [np.arange(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
        bucketed, _ = bucketed_batches(tok, batch_size, layout=layout)
        for variant, batches in (("dynamic", file_order), ("gradlab", bucketed)):
            counts[variant] += sum(len(b) * int(length[b].max())
                                   for b in batches for length in lengths)
        counts["naive"] += n * len(columns) * max_length
    return counts


def warm_up(model, dev_sets, special: dict[str, int], max_length: int) -> None:
    """One small batch per task through both code paths (kernels, allocator), untimed."""
    model.eval()
    for task, eval_set in dev_sets.items():
        index = np.arange(min(32, len(eval_set.tokenized)))
        batch = collate(eval_set.tokenized, index, layout=model.layout(task),
                        max_length=max_length, **special)
        with torch.no_grad():
            model(task, pad_to(batch, max_length, special["pad_id"]))
        with torch.inference_mode():
            model(task, batch)


@torch.no_grad()
def naive_predict(model, eval_set, special: dict[str, int], max_length: int, batch_size: int,
                  *, pad_to_max: bool) -> np.ndarray:
    """File order, fixed-size batches; padded to max_length (naive) or to the batch's longest."""
    model.eval()
    layout = model.layout(eval_set.task)
    n = len(eval_set.tokenized)
    outputs = []
    for start in range(0, n, batch_size):
        index = np.arange(start, min(start + batch_size, n))
        batch = collate(eval_set.tokenized, index, layout=layout, max_length=max_length,
                        **special)
        if pad_to_max:
            batch = pad_to(batch, max_length, special["pad_id"])
        outputs.append(predict_labels(TASKS[eval_set.task], model(eval_set.task, batch)))
    return np.concatenate(outputs)


def pad_to(batch: dict[str, torch.Tensor], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every [B, L] input of a collated batch to [B, length]."""
    out = {}
    for key, value in batch.items():
        if key == "labels":
            out[key] = value
            continue
        fill = pad_id if key.startswith("input_ids") else 0
        out[key] = F.pad(value, (0, length - value.shape[1]), value=fill)
    return out


def compare(predictions, dev_sets) -> dict[str, dict[str, tuple[str, float]]]:
    """Per variant and task: agreement rate with naive (class tasks) or max |difference|."""
    out = {}
    for variant in VARIANTS[1:]:
        out[variant] = {}
        for task in dev_sets:
            a, b = predictions["naive"][task], predictions[variant][task]
            if TASKS[task].output == "regression":
                out[variant][task] = ("max|diff|", float(np.max(np.abs(a - b))))
            else:
                out[variant][task] = ("agreement", float(np.mean(a == b)))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
