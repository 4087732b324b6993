"""Dynamic Weight Average: weights from the ratio of each task's last two losses."""

from __future__ import annotations

from typing import Any

import torch

from ._base import (
    Method,
    MethodInput,
    MethodOutput,
    _check_number,
    _check_state_keys,
    _gramian64,
    _losses64,
    _on_device_of,
)

# Floor on the older loss in r_i = L_i(t-1) / L_i(t-2), so a zero loss gives no inf or NaN.
_TINY_LOSS = 1e-12


class DWA(Method):
    """DWA: w_i = T softmax_i(r_i / temperature) with r_i = L_i(t-1) / L_i(t-2).

    `End-to-End Multi-Task Learning with Attention <https://arxiv.org/abs/1803.10704>`_
    (Liu et al., 2019), Eq. 7. A task whose loss fell more slowly gets more weight; w = 1 while
    fewer than two earlier loss vectors exist. The paper uses epoch-mean losses; this sees one
    loss vector per call (the caller may pass smoothed losses).

    Input gramian [T, T] (only its size is used) and losses [T] (positive); output weights [T]
    summing to T (float64, on the Gramian's device). State: ``loss_history`` [k, T] with the
    last k <= 2 loss vectors, oldest first.

    Args:
        temperature: softmax temperature (paper: 2); larger is closer to equal weights.

    Example:
        >>> import torch
        >>> from gradlab.methods import DWA, MethodInput
        >>> method = DWA()
        >>> for losses in ([1.0, 1.0], [1.0, 0.5], [1.0, 0.5]):
        ...     out = method(MethodInput(gramian=torch.eye(2), losses=torch.tensor(losses)))
        >>> out.weights  # r = [1, 0.5]: the task whose loss halved gets less weight
        tensor([1.1244, 0.8756], dtype=torch.float64)
    """

    name = "dwa"

    def __init__(self, temperature: float = 2.0) -> None:
        _check_number(self.name, "temperature", temperature, minimum=0.0, exclusive_minimum=True)
        self.temperature = temperature
        self.loss_history: torch.Tensor | None = None  # [k, T], k <= 2

    def __call__(self, inp: MethodInput) -> MethodOutput:
        num_tasks = _gramian64(inp, self.name).shape[0]
        losses = _losses64(inp, self.name)
        history = self.loss_history
        if history is not None and history.shape[1] != num_tasks:
            raise ValueError(
                f"{self.name}: state was built for T={history.shape[1]} tasks, got "
                f"T={num_tasks}; call reset() first"
            )
        if history is None or history.shape[0] < 2:
            weights = torch.ones(num_tasks, dtype=torch.float64)
        else:
            ratios = history[1] / history[0].clamp_min(_TINY_LOSS)
            weights = num_tasks * torch.softmax(ratios / self.temperature, dim=0)
        previous = history[-1:] if history is not None else losses[:0].reshape(0, num_tasks)
        self.loss_history = torch.cat([previous, losses[None]])
        return MethodOutput(weights=_on_device_of(weights, inp.gramian))

    def reset(self) -> None:
        self.loss_history = None

    def state_dict(self) -> dict[str, Any]:
        return {} if self.loss_history is None else {"loss_history": self.loss_history.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if not state:
            return
        _check_state_keys(self.name, state, required={"loss_history"})
        history = state["loss_history"].to("cpu", torch.float64).clone()
        if history.ndim != 2 or not 1 <= history.shape[0] <= 2:
            raise ValueError(
                f"{self.name}: state['loss_history'] must have shape [k, T] with k in (1, 2), "
                f"got {list(history.shape)}"
            )
        self.loss_history = history

    def _repr_args(self) -> dict[str, Any]:
        return {"temperature": self.temperature}
