"""Multi-task methods: the task Gramian (plus the method's own state) -> task weights.

Every method is a small object called with a :class:`MethodInput` (Gramian [T, T] of the
shared-parameter task gradients, per-block Gramians [B, T, T], losses [T], step) that returns
a :class:`MethodOutput`: weights [T] (the engine writes d = wᵀJ) or [B, T] for blockwise
methods (block b gets w_bᵀ J_b), PCGrad projection events, and scalar diagnostics. Methods
never call autograd and never touch parameters; weights are float64 on the Gramian's device.

``get_method(name, **kwargs)`` builds a method from its registry name; ``METHODS`` maps names
to classes. Each method lives in a private module named after it (``_pcgrad.py``,
``_nash_mtl.py`` ...); the torchjd-backed ones share the adapter in ``_torchjd.py``, and the
methods that learn values (GradNorm, Uncertainty) step them with ``torch.optim`` through
``_learned.py``. To add a method: a new module, its class in ``METHODS`` and ``__all__``, and
its entries in the property lists and pinned table of tests/test_methods_properties.py.

Stateful methods (pcgrad's and gradvac's task orders, gradvac's targets, the
loss-weighting methods' learned weights, nash_mtl, random) keep their state in
``state_dict()`` as tensors and plain numbers, so a resumed run continues exactly.

Example:
    >>> import torch
    >>> from gradlab.methods import MethodInput, get_method
    >>> method = get_method("pcgrad", reduction="mean")
    >>> method
    PCGrad(reduction='mean', seed=0)
    >>> G = torch.tensor([[1.0, -1.0], [-1.0, 2.0]], dtype=torch.float64)
    >>> method(MethodInput(gramian=G)).weights
    tensor([1.0000, 0.7500], dtype=torch.float64)
"""

from __future__ import annotations

import inspect
from typing import Any

from ._aligned_mtl import AlignedMTL
from ._base import Method, MethodInput, MethodOutput, ProjectionEvent
from ._cagrad import CAGrad
from ._dualproj import DualProj
from ._dwa import DWA
from ._gradnorm import GradNorm
from ._gradvac import GradVac
from ._imtl_g import IMTLG
from ._mean import Mean
from ._mgda import MGDA
from ._nash_mtl import NashMTL
from ._pcgrad import PCGrad
from ._pcgrad_layerwise import PCGradLayerwise
from ._random import Random
from ._sum import Sum
from ._uncertainty import Uncertainty
from ._upgrad import UPGrad

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Sum,
        Mean,
        PCGrad,
        PCGradLayerwise,
        MGDA,
        CAGrad,
        IMTLG,
        AlignedMTL,
        UPGrad,
        DualProj,
        NashMTL,
        Random,
        GradVac,
        Uncertainty,
        DWA,
        GradNorm,
    )
}


def get_method(name: str, **kwargs: Any) -> Method:
    """Build the method registered as ``name`` with keyword arguments ``kwargs``.

    Raises ValueError for an unknown name (listing the valid ones), TypeError for an argument
    the method does not take (listing the ones it does), and the method's own
    ValueError/TypeError for a bad value (naming the argument and the value).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid names: {sorted(METHODS)}")
    cls = METHODS[name]
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        found = ", ".join(f"{key}={kwargs[key]!r}" for key in unknown)
        raise TypeError(f"method {name!r} got unexpected arguments {found}; it takes {accepted}")
    return cls(**kwargs)


__all__ = [
    "METHODS",
    "MGDA",
    "DWA",
    "IMTLG",
    "AlignedMTL",
    "CAGrad",
    "DualProj",
    "GradNorm",
    "GradVac",
    "Mean",
    "Method",
    "MethodInput",
    "MethodOutput",
    "NashMTL",
    "PCGrad",
    "PCGradLayerwise",
    "ProjectionEvent",
    "Random",
    "Sum",
    "Uncertainty",
    "UPGrad",
    "get_method",
]
