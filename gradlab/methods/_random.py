"""Random loss weighting: fresh softmax-of-Gaussian weights at every step (via torchjd)."""

from __future__ import annotations

from typing import Any

import torch

from ._base import (
    Method,
    MethodInput,
    MethodOutput,
    SeededGenerator,
    _check_number,
    _gramian64,
    _on_device_of,
)
from ._torchjd import aggregation


class Random(SeededGenerator, Method):
    """Random loss weighting: fresh weights softmax(z), z ~ N(0, I), at every step.

    `Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning
    <https://arxiv.org/abs/2111.10603>`_ (Lin et al., 2022), via torchjd's
    ``RandomWeighting``. torchjd draws from the global RNG; the adapter runs it on its own
    stream (seeded with ``seed``, saved in the state) so that the trainer's random numbers
    (dropout, batch order) are the same whichever method runs.
    Input gramian [T, T] (only its size is used); output weights [T], positive, summing to 1
    (float64, on the Gramian's device).

    Args:
        seed: seed of the method's random stream.

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, Random
        >>> weights = Random(seed=0)(MethodInput(gramian=torch.eye(3))).weights
        >>> bool((weights > 0).all()), round(float(weights.sum()), 6)
        (True, 1.0)
    """

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        _check_number(self.name, "seed", seed, minimum=0, integer=True)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._weighting = aggregation.RandomWeighting()

    def __call__(self, inp: MethodInput) -> MethodOutput:
        gramian = _gramian64(inp, self.name)
        with torch.random.fork_rng(devices=[]):  # restores the global CPU RNG on exit
            torch.set_rng_state(self.generator.get_state())
            weights = self._weighting(gramian)
            self.generator.set_state(torch.get_rng_state())
        return MethodOutput(weights=_on_device_of(weights, inp.gramian))

    def _repr_args(self) -> dict[str, Any]:
        return {"seed": self.seed}
