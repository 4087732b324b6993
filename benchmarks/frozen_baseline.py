"""The zero-training baseline of the demo model: STS dev Pearson r of the cosine of the frozen
encoder's mean-pooled sentence embeddings (issue 13, item 7).

No parameter is trained. The model is the demo's (configs/demo.yaml: the packaged MiniLM-L6,
mean pooling, max_length tokens per sentence) with the STS head "cosine", whose prediction
2.5 (1 + cos(u, v)) is an affine map of the cosine, so its Pearson r is the cosine's. It is
scored by `gradlab.evaluate` on the full STS dev file, as the demo scores its runs, so the
number is directly comparable with the demo table's "STS r".

    OMP_NUM_THREADS=1 python benchmarks/frozen_baseline.py             # ~1 min on this machine
    python benchmarks/frozen_baseline.py --max-length 128 --config configs/demo.yaml
    python benchmarks/frozen_baseline.py --quick                       # tiny random BERT
"""

from __future__ import annotations

import argparse
import time

import _common as common

from gradlab.build import model_from_config, split_from_config
from gradlab.config import load_config
from gradlab.data import special_token_ids
from gradlab.evaluate import evaluate

#: the number quoted in issue 13 (MiniLM-L6, cosine of mean-pooled embeddings, STS dev)
ISSUE_R = 0.838


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(common.REPO / "configs" / "demo.yaml"))
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens per sentence (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="tiny random BERT (a smoke test)")
    args = parser.parse_args()
    # the full dev file, as the demo's table (the config's dev_limit is for its curves)
    overrides = ["sts_head=cosine", "tasks=[sts]", "progress=false", "dev_limit=null"]
    if args.max_length is not None:
        overrides.append(f"max_length={args.max_length}")
    if args.quick:
        overrides += [f"tiny_encoder={common.QUICK_ENCODER}".replace("'", ""), "dev_limit=64"]
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    model, tokenizer = model_from_config(cfg)
    dev = split_from_config(cfg, "sts", "dev", tokenizer)
    metrics = evaluate(model, {"sts": dev}, special_ids=special_token_ids(tokenizer),
                       max_length=cfg.max_length, batch_size=cfg.eval_batch_size)
    r = metrics["sts"]["pearson"]
    print(f"encoder: {'tiny random BERT' if args.quick else cfg.encoder}, pooling: "
          f"{cfg.pooling}, max_length: {cfg.max_length}, STS dev rows: {len(dev.tokenized)}")
    print(f"zero-training cosine baseline: STS dev Pearson r = {r:.4f} "
          f"(Spearman {metrics['sts'].get('spearman', float('nan')):.4f}; issue 13 quotes "
          f"{ISSUE_R}) in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
