"""The table of config keys that ``gradlab train --help`` and ``gradlab config --list`` print:
each key of `gradlab.config.TrainConfig` with its default and one line of meaning, read from
the comments beside (or just above) its field, so the table and the dataclass never drift."""

from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import MISSING, fields
from functools import cache

#: meaning of the keys whose field carries no comment of its own (or a terse one)
_MEANING = {
    "data_dir": "folder of the task data files; null: $GRADLAB_DATA, ./data, ../shared/data",
    "tasks": "tasks trained together (sst, para, sts, and any aux_tasks)",
    "counterfactual_methods": "methods whose weights are computed on each probe's Gramian "
                              "(what they would have done)",
    "eval_batch_size": "examples per batch when evaluating on dev",
    "head_dropout": "dropout before each task head",
    "weight_decay": "AdamW weight decay (heads, and the encoder unless encoder_weight_decay "
                    "is set)",
    "probe_batch_size": "examples per task in each probe batch (null: batch_size)",
    "encoder_weight_decay": "AdamW weight decay of the shared encoder (null: weight_decay)",
    "save_checkpoints": "write checkpoints (last, best, step-N); false: none at all",
}


@cache
def key_help() -> dict[str, tuple[str, str]]:
    """{key: (default as YAML shows it, one line of meaning)} for every config key, in the
    dataclass's order."""
    from gradlab.config import TrainConfig

    comments = _field_comments(TrainConfig)
    out = {}
    for f in fields(TrainConfig):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        out[f.name] = (_show(default), _MEANING.get(f.name) or comments.get(f.name, ""))
    return out


def key_table(width: int = 100) -> str:
    """The key table as text: ``key = default`` then its meaning, indented, wrapped."""
    lines = []
    for key, (default, meaning) in key_help().items():
        lines.append(f"  {key} = {default}")
        if meaning:
            lines += textwrap.wrap(meaning, width, initial_indent=" " * 6,
                                   subsequent_indent=" " * 6)
    return "\n".join(lines)


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "{}" if value == {} else str(value)


def _field_comments(cls) -> dict[str, str]:
    """{field: its comment}: the comment on the field's line, else the comment lines just
    above it (section rules ``# --- x ---`` excluded)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # installed without its .py sources: no comments to show
        return {}
    lines = source.splitlines()
    inline: dict[int, str] = {}  # line -> comment after code
    alone: dict[int, str] = {}  # line -> comment on a line of its own
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            text = tok.string.lstrip("#").strip()
            (alone if not lines[row - 1][:col].strip() else inline)[row] = text
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        own = [inline[r] for r in range(node.lineno, node.end_lineno + 1) if r in inline]
        if own:
            out[node.target.id] = " ".join(own)
            continue
        above, row = [], node.lineno - 1
        while row in alone and not re.match(r"-{3}", alone[row]):
            above.insert(0, alone[row])
            row -= 1
        if above:
            out[node.target.id] = " ".join(above)
    return out
