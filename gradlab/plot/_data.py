"""From what the user passes (a Run, Runs or a tidy DataFrame) to the rows a plot draws.

Nothing here computes a statistic: frames come from the Run accessors (which use
gradlab.stats); this module only selects rows and refuses selections that match nothing,
naming what was asked for and what exists.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from gradlab.plot import _theme
from gradlab.run import IDENTITY as run_identity
from gradlab.significance import variant

IDENTITY = list(run_identity)  # the columns naming a run in every Run frame


def get_frame(data, accessor: str, columns: Sequence[str], **kwargs) -> pd.DataFrame:
    """The frame of ``data.<accessor>(**kwargs)``, or ``data`` itself when it is a DataFrame.

    Adds the column ``variant``: the method, or the schedule for round-robin/sequential runs
    (runs of one variant are treated as seeds of one another).
    """
    if isinstance(data, pd.DataFrame):
        missing = [c for c in [*IDENTITY, *columns] if c not in data.columns]
        if missing:
            raise ValueError(
                f"the DataFrame lacks columns {missing}; this plot needs the frame of "
                f"Run.{accessor}() with columns {[*IDENTITY, *columns]}, got {list(data.columns)}"
            )
        df = data.copy()
    elif callable(getattr(data, accessor, None)):
        df = getattr(data, accessor)(**kwargs)
    else:
        raise TypeError(
            f"data must be a Run, Runs or a DataFrame from Run.{accessor}(), "
            f"got {type(data).__name__}"
        )
    if df.empty:
        raise ValueError(f"no rows from {accessor}() in {describe(data)}")
    df = df.reset_index(drop=True)
    # One name per (method, schedule); pairs, not joined strings (pandas < 2.2 drops "\x00").
    pairs = list(zip(df["method"].astype(str), df["schedule"], strict=True))
    names = {pair: variant(*pair) for pair in dict.fromkeys(pairs)}
    df["variant"] = [names[pair] for pair in pairs]
    return df


def describe(data) -> str:
    if isinstance(data, pd.DataFrame):
        runs = sorted(data["run"].astype(str).unique()) if "run" in data else []
        return f"the DataFrame (runs {runs})"
    if hasattr(data, "runs"):
        return f"runs {[r.name for r in data.runs]}"
    return f"run {getattr(data, 'name', data)!r}"


def select(df: pd.DataFrame, column: str, value, what: str | None = None) -> pd.DataFrame:
    """Rows where ``column == value``; a ValueError naming the values present otherwise."""
    out = df[df[column] == value]
    if out.empty:
        present = sorted(df[column].dropna().astype(str).unique())
        raise ValueError(f"{what or column} {value!r} not in the data; present: {present}")
    return out


def select_source(df: pd.DataFrame, source: str | None) -> tuple[pd.DataFrame, str]:
    """Rows of one gradient source; None picks "train" if every run logged it, else "probe".

    Comparing a round-robin run (probe Gramians only) with joint runs is only fair on the
    probe batches, so None never mixes sources.
    """
    if source is not None:
        if source not in ("train", "probe"):
            raise ValueError(f"source must be 'train', 'probe' or None, got {source!r}")
        return select(df, "source", source, "source"), source
    runs = set(df["run"].unique())
    for candidate in ("train", "probe"):
        rows = df["source"] == candidate
        if set(df.loc[rows, "run"].unique()) == runs:
            return df[rows], candidate
    have = df.groupby("run")["source"].unique().apply(sorted).to_dict()
    raise ValueError(f"no gradient source logged by every run; sources per run: {have}")


def select_block(df: pd.DataFrame, block: str) -> pd.DataFrame:
    return select(df, "block", block, "block")


def resolve_pairs(df: pd.DataFrame, pair, column: str = "pair") -> list[str]:
    """Pair names present in ``df`` for ``pair`` (None = all, "a-b", ("a", "b"), a list).

    An unordered pair may be given in either order; for ordered pairs ("a→b", also "a->b")
    an unordered "a-b" means both directions.
    """
    present = order_pairs(df[column].dropna().unique())
    if pair is None:
        return present
    wanted = [pair] if isinstance(pair, str | tuple) else list(pair)
    out = []
    for p in wanted:
        matches = _match_pair(p, present)
        if not matches:
            raise ValueError(f"pair {p!r} not in the data; pairs present: {present}")
        out += [m for m in matches if m not in out]
    return out


def _match_pair(p, present: list[str]) -> list[str]:
    if isinstance(p, tuple):
        if len(p) != 2:
            raise ValueError(f"a pair is two task names, got {p!r}")
        a, b = p
        ordered = False
    elif isinstance(p, str):
        q = p.replace("->", "→")
        ordered = "→" in q
        sep = "→" if ordered else "-"
        if sep not in q:
            raise ValueError(f"pair {p!r} is not of the form 'a-b' or 'a→b'")
        a, b = q.split(sep, 1)
    else:
        raise ValueError(f"pair must be a string 'a-b' or a tuple of two tasks, got {p!r}")
    if ordered:
        return [x for x in present if x == f"{a}→{b}"]
    return [x for x in present if x in (f"{a}-{b}", f"{b}-{a}", f"{a}→{b}", f"{b}→{a}")]


TASK_ORDER = ("sst", "para", "sts")


def order_tasks(tasks) -> list[str]:
    """Tasks in the project's order (sst, para, sts), unknown ones after, as first seen."""
    tasks = list(dict.fromkeys(str(t) for t in tasks))
    known = [t for t in TASK_ORDER if t in tasks]
    return (
        known
        + [t for t in tasks if t not in known and t != "overall"]
        + (["overall"] if "overall" in tasks else [])
    )


def order_pairs(pairs) -> list[str]:
    """Pairs ordered by their tasks' order; for ordered pairs a→b right before b→a."""
    pairs = list(dict.fromkeys(str(p) for p in pairs))
    tasks = order_tasks(t for p in pairs for t in _theme.split_pair(p))
    rank = {t: k for k, t in enumerate(tasks)}

    def key(p):
        a, b = _theme.split_pair(p)
        lo, hi = sorted((rank[a], rank[b]))
        return (lo, hi, rank[a] > rank[b])

    return sorted(pairs, key=key)


def order_blocks(blocks, encoder_order: Sequence[str] | None = None) -> list[str]:
    """Blocks in the encoder's order: embeddings, layer.0 ... layer.N-1, pooler, encoder."""
    blocks = list(dict.fromkeys(str(b) for b in blocks))
    if encoder_order:
        rank = {b: k for k, b in enumerate(encoder_order)}
        return sorted(blocks, key=lambda b: (rank.get(b, len(rank)), _block_key(b)))
    return sorted(blocks, key=_block_key)


def _block_key(block: str):
    if block == "embeddings":
        return (0, 0, "")
    if block.startswith("layer.") and block[6:].isdigit():
        return (1, int(block[6:]), "")
    if block == "pooler":
        return (2, 0, "")
    if block == "encoder":
        return (4, 0, "")
    return (3, 0, block)


def order_variants(variants) -> list[str]:
    """Methods in a fixed order (the theme's), so legends list them alike in every figure."""
    variants = list(dict.fromkeys(str(v) for v in variants))
    known = list(_theme.METHOD_COLORS)

    def key(v):
        base = v.split(" (")[0]
        return (known.index(base) if base in known else len(known), v)

    return sorted(variants, key=key)


def encoder_blocks(data) -> list[str] | None:
    """The encoder's block order from a Run / Runs, None for a DataFrame."""
    runs = getattr(data, "runs", None)
    if isinstance(runs, list | tuple) and runs:
        data = runs[0]
    blocks = getattr(data, "blocks", None)
    return list(blocks) if isinstance(blocks, list | tuple) else None


def smooth(df: pd.DataFrame, window: int | None, by: Sequence[str], value: str = "value"):
    """Trailing mean of ``value`` over the last ``window`` steps per group (stats.rolling_rate)."""
    if window is None or window <= 1:
        return df
    if not isinstance(window, int | np.integer):
        raise ValueError(f"smooth must be a whole number of steps or None, got {window!r}")
    from gradlab import stats

    df = df.sort_values([*by, "step"]).copy()
    df[value] = df.groupby(list(by), sort=False)[value].transform(
        lambda x: stats.rolling_rate(
            x.to_numpy(dtype=float), int(window), steps=df.loc[x.index, "step"].to_numpy()
        )
    )
    return df
