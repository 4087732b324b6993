"""What would method M have done here? Any method's task weights on a logged Gramian.

Every Gramian-based method maps G [T, T] to task weights w [T] (the update is wᵀJ), so a
logged Gramian is enough to replay any of them after the run: the arrow diagram draws the
replayed updates, and the first-order change of each task loss is −lr·(G w)_i.

    >>> import numpy as np
    >>> method_weights("sum", np.eye(2)).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["method_weights", "logged_weights"]


def method_weights(name: str, gramian, step: int = 0) -> np.ndarray:
    """Weights [T] of method ``name`` (a `gradlab.methods` registry name, default
    arguments) on the Gramian G [T, T] at ``step``."""
    import torch

    from gradlab.methods import METHODS, MethodInput, get_method

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; methods: {sorted(METHODS)}")
    G = np.asarray(gramian, dtype=float)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"gramian must have shape [T, T], got {G.shape}")
    method = get_method(name)
    if getattr(method, "blockwise", False):
        raise ValueError(
            f"method {name!r} weights each block separately; its update is not a "
            f"combination of the whole-encoder task gradients, so it has no arrow here"
        )
    out = method(MethodInput(gramian=torch.tensor(G, dtype=torch.float64), step=int(step or 0)))
    w = np.asarray(out.weights.detach().cpu().numpy(), dtype=float)
    if w.shape != (G.shape[0],):
        raise ValueError(f"method {name!r} returned weights of shape {w.shape}, expected [T]")
    return w


def logged_weights(run, step: int, tasks: list[str]) -> np.ndarray | None:
    """The run's applied whole-update weights [T] at ``step`` in ``tasks`` order (None if the
    run logged blockwise weights or none at this step)."""
    w = run.weights(source="train")
    w = w[(w["step"] == step) & (w["block"] == "")]
    if w.empty:
        return None
    by_task = dict(zip(w["task"], w["value"], strict=True))
    return np.array([by_task.get(t, 0.0) for t in tasks], dtype=float)
