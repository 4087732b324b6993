"""Loss terms added to a task's loss: SMART's smoothness-inducing adversarial regularizer.

SMART (Jiang et al. 2020, https://arxiv.org/abs/1911.03437, Algorithm 1) perturbs the input
token embeddings x inside an ℓ∞ ball of radius ε, moves the perturbation towards where the
model's predictions change most (projected, normalised gradient ascent), and penalises the
change:

    R(θ) = ℓ_s(f(x; θ), f(x + δ; θ)),  δ ← Π_{‖δ‖∞ ≤ ε}(δ + η g / ‖g‖∞),  δ₀ ~ N(0, σ²I)

with ℓ_s the symmetric KL divergence for classification (a binary logit is a two-class
softmax of [0, z]) and the squared error for regression. The trainer adds ``w · R`` to the
task's loss before its backward, so the term lands in that task's row of J.

Example (run by the tests):
    >>> loss = smart_loss(model, "sst", batch, epsilon=1e-5, step_size=1e-3)  # doctest: +SKIP
    >>> (task_loss(TASKS["sst"], model("sst", batch), batch["labels"]) + 1.0 * loss).backward()
    ... # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradlab.model import MultitaskModel

__all__ = ["smart_loss", "symmetric_kl"]


def smart_loss(
    model: MultitaskModel,
    task: str,
    batch: dict[str, torch.Tensor],
    *,
    epsilon: float = 1e-5,
    step_size: float = 1e-3,
    noise_var: float = 1e-5,
    steps: int = 1,
    predictions: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SMART's adversarial smoothness loss of one task's batch (a scalar, mean over B).

    epsilon: radius ε of the ℓ∞ ball the perturbation of each token embedding stays in.
    step_size: η of each normalised ascent step (the gradient is divided by its ℓ∞ norm
    per example). noise_var: σ, the standard deviation of the initial Gaussian perturbation
    (the reference implementation's ``adv_noise_var``, used there as a standard deviation).
    steps: ascent steps T_x̃ (0: random perturbation only). predictions: the model's clean
    outputs on ``batch`` if already computed (saves a forward pass; they must carry the
    graph). generator: draws the initial noise (default: torch's global RNG).

    The ascent steps differentiate with respect to the perturbation only
    (``torch.autograd.grad``, no graph kept, no ``.grad`` written); the returned loss
    carries gradients to every parameter through the clean and the perturbed forward.
    """
    _check_args(model, task, epsilon, step_size, noise_var, steps)
    embeds = model.input_embeddings(task, batch)  # {key: [B, L, H]}
    masks = {k: batch["attention_mask" + k.removeprefix("inputs_embeds")] for k in embeds}
    clean = model.forward_embeds(task, batch, embeds) if predictions is None else predictions
    output = model.task_specs[task].output

    noise = {}
    for key, x in embeds.items():
        device = x.device if generator is None else generator.device
        draw = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=device)
        noise[key] = draw.to(x.device) * noise_var * _token_mask(masks[key], x)
    for _ in range(steps):
        for delta in noise.values():
            delta.requires_grad_(True)
        perturbed = model.forward_embeds(
            task, batch, {k: embeds[k].detach() + noise[k] for k in embeds})
        divergence = _smoothness(output, clean.detach(), perturbed)
        grads = torch.autograd.grad(divergence, list(noise.values()))
        # ‖g‖∞ per example, over all its tokens (and both sentences of a pair)
        scale = torch.stack([g.abs().amax(dim=(-2, -1)) for g in grads]).amax(0)  # [B]
        scale = scale.view(-1, 1, 1)
        for (key, delta), g in zip(list(noise.items()), grads, strict=True):
            direction = torch.where(scale > 0, g / scale.clamp_min(torch.finfo(g.dtype).tiny),
                                    torch.zeros_like(g))
            noise[key] = (delta.detach() + step_size * direction).clamp(-epsilon, epsilon)
    perturbed = model.forward_embeds(task, batch, {k: embeds[k] + noise[k].detach()
                                                   for k in embeds})
    return _smoothness(output, clean, perturbed)


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(P‖Q) + KL(Q‖P) of two categorical predictions [B, C] (logits), mean over B.

    As in SMART's reference implementation, each direction treats its target distribution
    as a constant, so the gradient pulls each prediction towards the other.
    """
    log_p = F.log_softmax(logits_p.float(), dim=-1)
    log_q = F.log_softmax(logits_q.float(), dim=-1)
    return (F.kl_div(log_q, log_p.detach(), reduction="batchmean", log_target=True)
            + F.kl_div(log_p, log_q.detach(), reduction="batchmean", log_target=True))


def _smoothness(output: str, clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """ℓ_s: symmetric KL (class [B, C]; binary [B] as logits [0, z]) or squared error [B]."""
    if output == "class":
        return symmetric_kl(clean, perturbed)
    if output == "binary":
        zeros = torch.zeros_like(clean)
        return symmetric_kl(torch.stack([zeros, clean], -1),
                            torch.stack([torch.zeros_like(perturbed), perturbed], -1))
    return F.mse_loss(perturbed.float(), clean.float())


def _token_mask(attention_mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[B, L, 1]: perturb real tokens only, never padding."""
    return attention_mask.unsqueeze(-1).to(x.dtype)


def _check_args(model, task, epsilon, step_size, noise_var, steps) -> None:
    problems = []
    if task not in getattr(model, "tasks", []):
        problems.append(f"task={task!r} is not one of the model's tasks "
                        f"{getattr(model, 'tasks', None)}")
    for name, value in (("epsilon", epsilon), ("step_size", step_size),
                        ("noise_var", noise_var)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            problems.append(f"{name}={value!r} must be a number >= 0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        problems.append(f"steps={steps!r} must be an integer >= 0")
    if problems:
        raise ValueError("smart_loss: " + "; ".join(problems))
