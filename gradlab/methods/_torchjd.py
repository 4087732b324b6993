"""Adapters to torchjd's Gramian weightings: MGDA, CAGrad, IMTL-G, Aligned-MTL, UPGrad,
DualProj, Nash-MTL and Random.

torchjd's ``*Weighting`` objects map a Gramian [T, T] to weights [T], which is exactly this
package's contract; the adapters only check the input, hand torchjd a float64 CPU Gramian and
return float64 weights on the Gramian's device.

The weights of MGDA, CAGrad, IMTL-G, Aligned-MTL, UPGrad and DualProj do not depend on the
scale of J, so their adapters pass the trace-normalised Gramian G / tr(G) (the zero matrix
stays zero). Same weights as torchjd on G wherever tr(G) >= 1e-4, and none of torchjd's
absolute thresholds bite for small gradients: on G itself, torchjd 0.18.0's UPGrad and
DualProj fall back to the mean and CAGrad returns zero weights once tr(G) < 1e-4.

CAGrad, UPGrad, DualProj and Nash-MTL solve an optimisation problem with torchjd's optional
solvers; constructing them without those raises ImportError naming the packages and the
``pip install "torchjd[...]"`` extra that provides them.
"""

from __future__ import annotations

import importlib
import math
import warnings
from typing import Any

import numpy as np
import torch
from torchjd import aggregation

from ._base import (
    Method,
    MethodInput,
    MethodOutput,
    SeededGenerator,
    _check_choice,
    _check_number,
    _check_state_keys,
    _gramian64,
    _on_device_of,
)


class _TorchJDWeighting(Method):
    """Adapter base: float64, trace-normalised Gramian -> torchjd weighting -> weights [T]."""

    requires: tuple[str, ...] = ()  # modules torchjd needs for this method beyond torch
    extra: str = ""  # the torchjd extra that installs them

    def __init__(self) -> None:
        _check_requirements(self)
        self._weighting = self._make_weighting()

    def _make_weighting(self) -> aggregation.Weighting:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, inp: MethodInput) -> MethodOutput:
        gramian = _gramian64(inp, self.name)
        trace = gramian.diagonal().sum()
        if trace > 0:
            gramian = gramian / trace
        weights = self._weighting(gramian)
        return MethodOutput(weights=_on_device_of(weights, inp.gramian))


def _check_requirements(method: _TorchJDWeighting | NashMTL) -> None:
    """ImportError naming the missing optional packages (imported, not only looked up: a
    package that is present but broken would otherwise fail deep inside torchjd)."""
    problems = []
    for module in method.requires:
        try:
            importlib.import_module(module)
        except ImportError as error:
            problems.append(f"{module} ({error})")
    if problems:
        raise ImportError(
            f"method {method.name!r} needs torchjd's optional solver packages "
            f"{list(method.requires)}; not importable: {', '.join(problems)}. "
            f'Install them with: pip install "torchjd[{method.extra}]==0.18.0"'
        )


class MGDA(_TorchJDWeighting):
    """MGDA: the minimum-norm point of the convex hull of the task gradients.

    `Multi-Task Learning as Multi-Objective Optimization <https://arxiv.org/abs/1810.04650>`_
    (Sener & Koltun, 2018), Frank-Wolfe solver of their Algorithm 2, via torchjd's
    ``MGDAWeighting``. Weights [T] on the simplex (sum 1) minimising ‖wᵀJ‖ = √(wᵀGw).
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Args:
        epsilon: Frank-Wolfe stops when its step size falls below this.
        max_iters: at most this many Frank-Wolfe iterations.

    Example:
        >>> import torch
        >>> from gradlab.methods import MGDA, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> MGDA()(MethodInput(gramian=J @ J.T)).weights
        tensor([0.6000, 0.4000], dtype=torch.float64)
    """

    name = "mgda"

    def __init__(self, epsilon: float = 0.001, max_iters: int = 100) -> None:
        _check_number(self.name, "epsilon", epsilon, minimum=0.0, exclusive_minimum=True)
        _check_number(self.name, "max_iters", max_iters, minimum=1, integer=True)
        self.epsilon = epsilon
        self.max_iters = max_iters
        super().__init__()

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.MGDAWeighting(epsilon=self.epsilon, max_iters=self.max_iters)

    def _repr_args(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "max_iters": self.max_iters}


class CAGrad(_TorchJDWeighting):
    """CAGrad: maximise the worst task's improvement within a ball around the mean gradient.

    `Conflict-Averse Gradient Descent for Multi-task Learning
    <https://arxiv.org/abs/2110.14048>`_ (Liu et al., 2021), Algorithm 1, via torchjd's
    ``CAGradWeighting`` (a cvxpy problem solved with Clarabel). Needs cvxpy and clarabel.
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Args:
        c: radius of the ball, relative to the mean gradient's norm (c = 0 is the mean).

    Example:
        >>> import torch
        >>> from gradlab.methods import CAGrad, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> CAGrad(c=0.5)(MethodInput(gramian=J @ J.T)).weights.round(decimals=3)
        tensor([0.7040, 0.5000], dtype=torch.float64)
    """

    name = "cagrad"
    requires = ("cvxpy", "clarabel")
    extra = "cagrad"

    def __init__(self, c: float = 0.5) -> None:
        _check_number(self.name, "c", c, minimum=0.0)
        self.c = c
        super().__init__()

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.CAGradWeighting(c=self.c)

    def _repr_args(self) -> dict[str, Any]:
        return {"c": self.c}


class IMTLG(_TorchJDWeighting):
    """IMTL-G: the update has equal projections on every task's unit gradient.

    `Towards Impartial Multi-task Learning <https://openreview.net/forum?id=IMPnRXEWpvr>`_
    (Liu et al., 2021), in the form of `Jacobian Descent for Multi-Objective Optimization
    <https://arxiv.org/abs/2406.16232>`_ that allows linearly dependent gradients, via
    torchjd's ``IMTLGWeighting``: w ∝ G⁺ diag(G)^½, summing to 1. Closed form, no solver.
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Example:
        >>> import torch
        >>> from gradlab.methods import IMTLG, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> IMTLG()(MethodInput(gramian=J @ J.T)).weights
        tensor([0.5923, 0.4077], dtype=torch.float64)
    """

    name = "imtl_g"

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.IMTLGWeighting()


class AlignedMTL(_TorchJDWeighting):
    """Aligned-MTL: align the principal components of the task gradients, then average.

    `Independent Component Alignment for Multi-Task Learning
    <https://arxiv.org/abs/2305.19000>`_ (Senushkin et al., 2023), Algorithm 1, via torchjd's
    ``AlignedMTLWeighting`` (an eigendecomposition of G; no solver).
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Args:
        scale_mode: eigenvalue that sets the scale: "min" (paper), "median" or "rmse".

    Example:
        >>> import torch
        >>> from gradlab.methods import AlignedMTL, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> AlignedMTL()(MethodInput(gramian=J @ J.T)).weights
        tensor([0.5591, 0.4083], dtype=torch.float64)
    """

    name = "aligned_mtl"

    def __init__(self, scale_mode: str = "min") -> None:
        _check_choice(self.name, "scale_mode", scale_mode, ("min", "median", "rmse"))
        self.scale_mode = scale_mode
        super().__init__()

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.AlignedMTLWeighting(scale_mode=self.scale_mode)

    def _repr_args(self) -> dict[str, Any]:
        return {"scale_mode": self.scale_mode}


class UPGrad(_TorchJDWeighting):
    """UPGrad: project every task gradient onto the dual cone of all of them, then average.

    `Jacobian Descent for Multi-Objective Optimization <https://arxiv.org/abs/2406.16232>`_
    (Quinton & Rey, 2024), via torchjd's ``UPGradWeighting`` (T quadratic programs solved with
    quadprog). The update never conflicts with any task. Needs qpsolvers and quadprog.
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Example:
        >>> import torch
        >>> from gradlab.methods import MethodInput, UPGrad
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> UPGrad()(MethodInput(gramian=J @ J.T)).weights.round(decimals=4)
        tensor([1.1109, 0.7894], dtype=torch.float64)
    """

    name = "upgrad"
    requires = ("qpsolvers", "quadprog")
    extra = "quadprog-projector"

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.UPGradWeighting()


class DualProj(_TorchJDWeighting):
    """DualProj: project the mean gradient onto the dual cone of the task gradients.

    The projection of Eq. 11 of `Gradient Episodic Memory for Continual Learning
    <https://arxiv.org/abs/1706.08840>`_ (Lopez-Paz & Ranzato, 2017) applied to the mean
    gradient, via torchjd's ``DualProjWeighting`` (one quadratic program solved with
    quadprog). Needs qpsolvers and quadprog.
    Input gramian [T, T]; output weights [T] (float64, on the Gramian's device).

    Example:
        >>> import torch
        >>> from gradlab.methods import DualProj, MethodInput
        >>> J = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=torch.float64)
        >>> DualProj()(MethodInput(gramian=J @ J.T)).weights.round(decimals=4)
        tensor([0.6109, 0.5000], dtype=torch.float64)
    """

    name = "dualproj"
    requires = ("qpsolvers", "quadprog")
    extra = "quadprog-projector"

    def _make_weighting(self) -> aggregation.Weighting:
        return aggregation.DualProjWeighting()


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
                                 or _nash_residual(gramian, weighting.prvs_alpha) > NASH_TOL)
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


def _nash_residual(gramian: torch.Tensor, alpha) -> float:
    """max_i |α_i (Gα)_i - 1|, scale-free (inf for an α with a zero or negative entry)."""
    a = torch.as_tensor(np.asarray(alpha, dtype=np.float64))
    if not (a > 0).all():
        return math.inf
    return float((a * (gramian.detach().cpu() @ a) - 1.0).abs().max())


def nash_bargaining_weights(gramian: torch.Tensor, *, tol: float = 1e-20,
                            max_iter: int = 100) -> torch.Tensor | None:
    """The Nash bargaining weights α > 0 with α_i (Gα)_i = 1 for every task i, exactly.

    Nash-MTL's solution (Navon et al., 2022, eq. 2: Gα = 1/α) is the unique minimiser of
    the strictly convex f(α) = ½ αᵀGα - Σ log α_i over α > 0, found here by damped Newton
    steps. The problem is first rescaled to unit diagonal (α = β / √G_ii, a correlation
    matrix C with Cβ = 1/β), so gradients whose norms differ by orders of magnitude are no
    harder than equal ones. Tasks with a zero gradient take no part and get weight 0.

    Input gramian [T, T] (symmetric PSD); output weights [T] (float64, CPU), or None when no
    solution exists: the gradients' convex hull contains 0 (the minimum norm is 0, a Pareto
    stationary point, where no direction helps every task), detected as f unbounded below.
    Converges when the Newton decrement λ² = ∇fᵀH⁻¹∇f falls below ``tol``.

    Example:
        >>> import torch
        >>> G = torch.tensor([[4.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> nash_bargaining_weights(G)  # orthogonal gradients: α_i = 1 / ‖g_i‖
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    G = torch.as_tensor(gramian, dtype=torch.float64).detach().cpu()
    G = (G + G.T) / 2
    diag = G.diagonal().clamp_min(0.0)
    active = diag > diag.max() * 1e-20 if diag.max() > 0 else torch.zeros_like(diag, dtype=bool)
    weights = torch.zeros_like(diag)
    if not active.any():
        return None
    d = diag[active].sqrt()
    C = G[active][:, active] / d[:, None] / d[None, :]
    beta = torch.ones(len(d), dtype=torch.float64)  # the solution for orthogonal gradients

    def f(b: torch.Tensor) -> float:
        return float(0.5 * b @ C @ b - torch.log(b).sum())

    value = f(beta)
    for _ in range(max_iter):
        grad = C @ beta - 1.0 / beta
        hessian = C + torch.diag(1.0 / beta**2)
        try:
            step = torch.linalg.solve(hessian, -grad)
        except torch.linalg.LinAlgError:  # C singular and β far out: f unbounded below
            return None
        decrement = float(-(grad @ step))
        if decrement < tol:
            weights[active] = beta / d
            return weights
        t = 1.0
        while True:  # backtracking: stay positive, decrease f enough (Armijo)
            trial = beta + t * step
            if (trial > 0).all():
                trial_value = f(trial)
                if trial_value <= value - 0.25 * t * decrement:
                    break
            t /= 2
            if t < 1e-12:
                return None
        beta, value = trial, trial_value
        if not np.isfinite(value) or float(beta.max()) > 1e12:  # f unbounded below
            return None
    return None


def _gramian_factor(gramian: torch.Tensor) -> torch.Tensor:
    """A [T, T] matrix F with F Fᵀ = G (round-off negative eigenvalues clipped to 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(gramian)
    return eigenvectors * eigenvalues.clamp_min(0.0).sqrt()


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
