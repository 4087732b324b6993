"""The shared adapter to torchjd's Gramian weightings (MGDA, CAGrad, IMTL-G, Aligned-MTL,
UPGrad, DualProj), and the check of torchjd's optional solver packages (also used by Nash-MTL).

torchjd's ``*Weighting`` objects map a Gramian [T, T] to weights [T], which is exactly this
package's contract; the adapter only checks the input, hands torchjd a float64 CPU Gramian and
returns float64 weights on the Gramian's device.

The weights of MGDA, CAGrad, IMTL-G, Aligned-MTL, UPGrad and DualProj do not depend on the
scale of J, so the adapter passes the trace-normalised Gramian G / tr(G) (the zero matrix
stays zero). Same weights as torchjd on G wherever tr(G) >= 1e-4, and none of torchjd's
absolute thresholds bite for small gradients: on G itself, torchjd 0.18.0's UPGrad and
DualProj fall back to the mean and CAGrad returns zero weights once tr(G) < 1e-4.

CAGrad, UPGrad, DualProj and Nash-MTL solve an optimisation problem with torchjd's optional
solvers; constructing them without those raises ImportError naming the packages and the
``pip install "torchjd[...]"`` extra that provides them.
"""

from __future__ import annotations

import importlib

from ._base import Method, MethodInput, MethodOutput, _gramian64, _on_device_of


class _LazyAggregation:
    """``torchjd.aggregation``, imported on first use: gradlab and its torchjd-free methods
    (sum, mean, pcgrad ...) import where torchjd is not installed."""

    def __getattr__(self, name: str):
        return getattr(importlib.import_module("torchjd.aggregation"), name)


aggregation = _LazyAggregation()


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


def _check_requirements(method: Method) -> None:
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
