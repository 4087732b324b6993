"""Nash-MTL: the Nash bargaining solution between tasks (via torchjd, with an exact fallback)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from ._base import (
    Method,
    MethodInput,
    MethodOutput,
    _check_number,
    _check_state_keys,
    _gramian64,
    _on_device_of,
)
from ._nash_bargaining import nash_bargaining_weights, nash_residual
from ._torchjd import _check_requirements, aggregation


class NashMTL(Method):
    """Nash-MTL: the Nash bargaining solution between tasks, w solving Gw = 1/w.

    `Multi-Task Learning as a Bargaining Game <https://arxiv.org/abs/2202.01017>`_ (Navon et
    al., 2022), Algorithm 1, via torchjd's ``NashMTL`` (a sequence of convex problems solved
    with cvxpy and ECOS). torchjd offers it only as an aggregator of J; it uses J through
    J Jᵀ and ‖wᵀJ‖ only, so the adapter hands it a [T, T] factor F of the Gramian
    (F Fᵀ = G, from its eigendecomposition), which gives the same weights. Stateful: the
    last solution warm-starts the next. When every gradient is zero, torchjd would divide by
    ‖G‖ = 0, so the adapter returns the last weights instead (any weights give d = 0 then);
    for T = 1, where torchjd cannot build its problem, it returns the solution w = 1 (clipped
    to ``max_norm``). Needs cvxpy and ecos.

    Failed solves (torchjd 0.18.0, as the official code): the linearised problem can be
    unbounded or inaccurate, e.g. when the task gradients' norms differ by orders of
    magnitude; torchjd then keeps its last iterate (at the first step: w = 1, the plain
    sum), and a sequence of "solved" problems can stall or run out of iterations far from
    the solution. A solve counts as failed when its status is not optimal or its residual
    max_i |α_i (Gα)_i - 1| exceeds ``NASH_TOL`` = 1e-2. On such steps
    ``extras["solver_failed"]`` is 1.0 and, with ``fallback=True``
    (default), the adapter uses `nash_bargaining_weights` instead: the exact solution of the
    same problem by Newton's method (``extras["fallback"]`` 1.0), which also
    becomes the next warm start. ``fallback=False`` keeps torchjd's answer as it is.

    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device). State: the
    last solution ``alpha`` [T] and torchjd's call counter ``step``.

    Args:
        max_norm: weights are scaled down so that ‖wᵀJ‖ <= max_norm (0 disables; torchjd's
            default 1.0 mirrors the official code's gradient clipping).
        update_weights_every: solve only every this many calls, reusing the weights between.
        optim_niter: at most this many convex solves per update.
        fallback: on a failed solve use the exact Newton solution (see above).

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, NashMTL
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> NashMTL(max_norm=0.0)(MethodInput(gramian=J @ J.T)).weights.round(decimals=3)
        tensor([0.5910, 0.4070], dtype=torch.float64)
    """

    name = "nash_mtl"
    requires = ("cvxpy", "ecos")
    extra = "nash-mtl"

    def __init__(
        self, max_norm: float = 1.0, update_weights_every: int = 1, optim_niter: int = 20,
        fallback: bool = True,
    ) -> None:
        if not isinstance(fallback, bool):
            raise TypeError(f"{self.name}: fallback must be true or false, got {fallback!r}")
        _check_number(self.name, "max_norm", max_norm, minimum=0.0)
        _check_number(
            self.name, "update_weights_every", update_weights_every, minimum=1, integer=True
        )
        _check_number(self.name, "optim_niter", optim_niter, minimum=1, integer=True)
        _check_requirements(self)
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.fallback = fallback
        self._aggregator: aggregation.NashMTL | None = None  # built once T is known

    def __call__(self, inp: MethodInput) -> MethodOutput:
        gramian = _gramian64(inp, self.name)
        num_tasks = gramian.shape[0]
        if self._aggregator is None:
            self._aggregator = self._new_aggregator(num_tasks)
        elif self._aggregator.n_tasks != num_tasks:
            raise ValueError(
                f"{self.name}: state was built for T={self._aggregator.n_tasks} tasks, got "
                f"T={num_tasks}; call reset() first"
            )
        weighting = self._aggregator.weighting
        failed = used_fallback = False
        if num_tasks == 1:
            weights = self._single_task_weights(gramian)
        elif gramian.diagonal().sum() > 0:
            solves = weighting.step % self.update_weights_every == 0
            # cvxpy warns on every first solve that this problem is not DPP (no speed-up), and
            # numpy warns when it evaluates 1/(Gα) at a zero gradient; failures are in extras.
            raised = False
            with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                warnings.filterwarnings("ignore", message=".*not DPP.*")
                try:
                    weights = weighting(_gramian_factor(gramian))
                except ValueError:  # cvxpy < 1.7 refuses the parameters of a zero gradient
                    raised = True
                    weights = torch.as_tensor(np.asarray(weighting.prvs_alpha, np.float64))
            # On a failed solve (often "unbounded") torchjd keeps its last good iterate; a
            # "solved" sequence can also stop far from Gα = 1/α (stalled or out of steps).
            failed = solves and (raised or weighting.prob.status not in _SOLVED
                                 or nash_residual(gramian, weighting.prvs_alpha) > NASH_TOL)
            if failed and self.fallback:
                exact = self._exact_weights(gramian)
                used_fallback = exact is not None
                weights = exact if exact is not None else weights
        else:
            weights = torch.as_tensor(np.asarray(weighting.prvs_alpha, dtype=np.float64))
        extras = {"solver_failed": float(failed)}
        if self.fallback:
            extras["fallback"] = float(used_fallback)
        return MethodOutput(weights=_on_device_of(weights, inp.gramian), extras=extras)

    def _exact_weights(self, gramian: torch.Tensor) -> torch.Tensor | None:
        """Newton's solution of the problem torchjd solves (α_i (Gα)_i = 1; torchjd
        normalises G only for its solver's sake), clipped like torchjd; it also becomes
        torchjd's warm start. None when it does not exist (see `nash_bargaining_weights`)."""
        gramian = gramian.detach().cpu()  # a [T, T] solve: on the CPU, as torchjd's
        alpha = nash_bargaining_weights(gramian)
        if alpha is None:
            return None
        if (alpha > 0).all():
            self._aggregator.weighting.prvs_alpha = alpha.numpy().copy()
        norm = float(alpha @ gramian @ alpha) ** 0.5  # ‖αᵀJ‖
        if 0 < self.max_norm < norm:
            alpha = alpha * (self.max_norm / norm)
        return alpha

    def _single_task_weights(self, gramian: torch.Tensor) -> torch.Tensor:
        """torchjd 0.18.0 cannot build its cvxpy problem for T = 1 (scalar operands). The
        bargaining solution on the normalised Gramian is then w = 1, clipped like torchjd's."""
        norm = float(gramian[0, 0].clamp_min(0.0).sqrt())
        scale = self.max_norm / norm if 0 < self.max_norm < norm else 1.0
        return torch.tensor([scale], dtype=torch.float64)

    def _new_aggregator(self, num_tasks: int) -> aggregation.NashMTL:
        return aggregation.NashMTL(
            n_tasks=num_tasks,
            max_norm=self.max_norm,
            update_weights_every=self.update_weights_every,
            optim_niter=self.optim_niter,
        )

    def reset(self) -> None:
        self._aggregator = None

    def state_dict(self) -> dict[str, Any]:
        if self._aggregator is None:
            return {}
        weighting = self._aggregator.weighting
        alpha = np.asarray(weighting.prvs_alpha, dtype=np.float64)
        return {"alpha": torch.from_numpy(alpha.copy()), "step": int(weighting.step)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset()
        if not state:
            return
        _check_state_keys(self.name, state, required={"alpha", "step"})
        alpha = state["alpha"].to("cpu", torch.float64)
        if alpha.ndim != 1:
            raise ValueError(f"{self.name}: state['alpha'] must be [T], got {list(alpha.shape)}")
        self._aggregator = self._new_aggregator(alpha.shape[0])
        weighting = self._aggregator.weighting
        weighting.prvs_alpha = alpha.numpy().copy()
        weighting.step = float(state["step"])
        if weighting.step > 0:
            # torchjd builds its cvxpy problem on its first call only (step 0); a resumed
            # aggregator is past that call, so build it here (private API of torchjd 0.18.0).
            weighting._init_optim_problem()

    def _repr_args(self) -> dict[str, Any]:
        return {
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "optim_niter": self.optim_niter,
            "fallback": self.fallback,
        }


_SOLVED = ("optimal", "optimal_inaccurate")
NASH_TOL = 1e-2  # max_i |α_i (Gα)_i - 1| above this: the solve did not reach the solution


def _gramian_factor(gramian: torch.Tensor) -> torch.Tensor:
    """A [T, T] matrix F with F Fᵀ = G (round-off negative eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gramian)
    return eigenvectors * eigenvalues.clamp_min(0.0).sqrt()
