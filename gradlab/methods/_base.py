"""The contract every multi-task method follows: a Gramian (plus explicit state) -> task weights.

A method never calls autograd and never touches parameters. The engine computes the task
Gramian G = J Jᵀ [T, T] of the shared-parameter gradients J [T, P] (and its per-block parts
[B, T, T]); the method returns weights w and the engine writes the update d = wᵀJ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ProjectionEvent:
    """One PCGrad projection: task ``i``'s running gradient was projected off task ``j``'s.

    ``coefficient`` is c in g_i^PC <- g_i^PC - c g_j (c = g_i^PC·g_j / ‖g_j‖², negative when
    they conflict); ``cosine`` is cos(g_i^PC, g_j) just before the projection. ``block`` is
    the block name for layer-wise methods, None for the whole encoder.
    """

    i: int
    j: int
    coefficient: float
    cosine: float
    block: str | None = None


@dataclass
class MethodInput:
    """What a method sees at one optimizer step.

    gramian: [T, T] Gramian of the active tasks' shared gradients (float64 recommended).
    block_gramians: [B, T, T] per-block Gramians summing to ``gramian`` (or None).
    block_names: the B block names, in the encoder's order.
    losses: [T] the tasks' current losses (detached), or None.
    step: the optimizer step (0-based).
    """

    gramian: torch.Tensor
    block_gramians: torch.Tensor | None = None
    block_names: tuple[str, ...] = ()
    losses: torch.Tensor | None = None
    step: int = 0


@dataclass
class MethodOutput:
    """weights: [T] (one update wᵀJ) or [B, T] (block b's update is w_bᵀ J_b).

    projections: PCGrad-style events, empty for methods that do not project.
    extras: other per-step diagnostics, plain floats only (logged as scalars).
    """

    weights: torch.Tensor
    projections: list[ProjectionEvent] = field(default_factory=list)
    extras: dict[str, float] = field(default_factory=dict)


class Method:
    """Base class: subclasses implement ``__call__`` and, if stateful, ``state_dict``.

    ``blockwise`` is True for methods that return [B, T] weights. Block Gramians need no
    flag: the engine always computes them (the whole Gramian is their sum, and the monitor
    logs them), so every method may read ``MethodInput.block_gramians``.
    ``state_dict`` / ``load_state_dict`` hold only tensors and JSON-able values (saved in
    checkpoints with safetensors + JSON, never pickle).
    """

    name: str = "method"
    blockwise: bool = False
    #: whether it logs PCGrad-style projection events (else its projection rate is 0 by
    #: construction and no figure shows it)
    projects: bool = False

    def __call__(self, inp: MethodInput) -> MethodOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state (called before a run starts)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} is stateless but got state keys {sorted(state)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._repr_args().items())
        return f"{type(self).__name__}({args})"

    def _repr_args(self) -> dict[str, Any]:
        return {}


# --------------------------------------------------------------------------------------------
# Private helpers shared by the method modules (not part of the contract).
#
# Methods work on a float64 CPU copy of the [T, T] Gramians: they branch on T×T numbers
# (is g_i·g_j < 0?), and on a GPU every such branch would be a device synchronisation.


def _gramian64(inp: MethodInput, method: str) -> torch.Tensor:
    """``inp.gramian`` checked to be a finite [T, T] tensor (T >= 1), as float64 on the CPU."""
    gramian = inp.gramian
    if not isinstance(gramian, torch.Tensor):
        raise TypeError(f"{method}: gramian must be a torch.Tensor, got {type(gramian).__name__}")
    if gramian.ndim != 2 or gramian.shape[0] != gramian.shape[1] or gramian.shape[0] < 1:
        raise ValueError(
            f"{method}: gramian must have shape [T, T] with T >= 1, got {tuple(gramian.shape)}"
        )
    gramian = gramian.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(gramian).all():
        raise ValueError(f"{method}: gramian has non-finite entries: {gramian.tolist()}")
    return gramian


def _block_gramians64(inp: MethodInput, method: str) -> torch.Tensor:
    """``inp.block_gramians`` checked against ``gramian`` and ``block_names``: [B, T, T] float64."""
    num_tasks = inp.gramian.shape[-1]
    blocks = inp.block_gramians
    if blocks is None:
        raise ValueError(f"{method}: needs block_gramians [B, T, T], got None")
    if blocks.ndim != 3 or blocks.shape[1:] != (num_tasks, num_tasks) or blocks.shape[0] < 1:
        raise ValueError(
            f"{method}: block_gramians must have shape [B, {num_tasks}, {num_tasks}] with B >= 1 "
            f"(T from gramian), got {tuple(blocks.shape)}"
        )
    if len(inp.block_names) != blocks.shape[0]:
        raise ValueError(
            f"{method}: block_names must name the {blocks.shape[0]} blocks, got "
            f"{len(inp.block_names)} names {list(inp.block_names)}"
        )
    blocks = blocks.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(blocks).all():
        raise ValueError(f"{method}: block_gramians has non-finite entries")
    return blocks


def _losses64(inp: MethodInput, method: str) -> torch.Tensor:
    """``inp.losses`` checked to be a finite [T] tensor matching the Gramian, as float64."""
    num_tasks = inp.gramian.shape[-1]
    losses = inp.losses
    if losses is None:
        raise ValueError(f"{method}: needs the task losses [T], got losses=None")
    losses = torch.as_tensor(losses).detach().to(device="cpu", dtype=torch.float64)
    if losses.shape != (num_tasks,):
        raise ValueError(
            f"{method}: losses must have shape [{num_tasks}] (T from gramian), "
            f"got {tuple(losses.shape)}"
        )
    if not torch.isfinite(losses).all():
        raise ValueError(f"{method}: losses has non-finite entries: {losses.tolist()}")
    return losses


def _on_device_of(weights: torch.Tensor, gramian: torch.Tensor) -> torch.Tensor:
    """Float64 weights, moved to the device the engine's Gramian lives on."""
    return weights.to(device=gramian.device, dtype=torch.float64)


def _check_number(
    method: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    integer: bool = False,
) -> None:
    """Raise TypeError/ValueError naming ``name`` unless ``value`` is a number in range."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if integer else "a number"
        raise TypeError(f"{method}: {name} must be {kind}, got {value!r}")
    if value != value:  # NaN
        raise ValueError(f"{method}: {name} must be a number, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        bound = f"> {minimum}" if exclusive_minimum else f">= {minimum}"
        raise ValueError(f"{method}: {name} must be {bound}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{method}: {name} must be <= {maximum}, got {value!r}")


def _check_choice(method: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{method}: {name} must be one of {list(allowed)}, got {value!r}")


def _check_state_keys(
    method: str, state: dict[str, Any], required: set[str], optional: set[str] = frozenset()
) -> None:
    """Raise ValueError listing missing and unexpected keys of a state dict."""
    missing = sorted(required - set(state))
    unexpected = sorted(set(state) - required - optional)
    if missing or unexpected:
        raise ValueError(
            f"{method}: bad state dict: missing keys {missing}, unexpected keys {unexpected}"
        )


def _generator_from_state(method: str, state: Any) -> torch.Generator:
    """A CPU generator restored from a ``get_state()`` uint8 tensor."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        raise TypeError(f"{method}: state['generator'] must be a uint8 tensor, got {state!r}")
    generator = torch.Generator()
    generator.set_state(state.cpu())
    return generator


class SeededGenerator:
    """Mixin for a method whose only state is its own ``torch.Generator`` seeded with ``seed``.

    The generator's state is the method's checkpointed state, so a resumed run draws the
    same random choices (e.g. PCGrad's task orders) as the uninterrupted one.
    """

    name: str
    seed: int
    generator: torch.Generator

    def reset(self) -> None:
        self.generator.manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state_keys(self.name, state, required={"generator"})
        self.generator = _generator_from_state(self.name, state["generator"])
