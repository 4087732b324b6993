"""SMART's adversarial smoothness loss on a tiny random BERT (no data files, no weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_ENCODER

from gradlab.model import MultitaskModel, load_encoder
from gradlab.regularizers import smart_loss, symmetric_kl
from gradlab.tasks import TASKS, task_loss

LAYOUTS = [("sst", "bi"), ("para", "bi"), ("sts", "cross"), ("sts", "cosine")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # a tiny model gains nothing from more threads and loses a lot on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(pair_head: str = "bi") -> MultitaskModel:
    torch.manual_seed(0)
    encoder = load_encoder("minilm", tiny=TINY_ENCODER, seed=0)
    return MultitaskModel(encoder, ["sst", "para", "sts"],
                          pair_heads={"para": "bi" if pair_head == "cosine" else pair_head,
                                      "sts": pair_head})


def _batch(model: MultitaskModel, task: str, B: int = 4, L: int = 7) -> dict:
    g = torch.Generator().manual_seed(1)

    def inputs(suffix: str) -> dict:
        ids = torch.randint(1000, 2000, (B, L), generator=g)
        mask = torch.ones(B, L, dtype=torch.long)
        mask[0, L - 2:] = 0  # one padded row
        ids[0, L - 2:] = 0
        return {"input_ids" + suffix: ids, "attention_mask" + suffix: mask,
                "token_type_ids" + suffix: torch.zeros(B, L, dtype=torch.long)}

    layout = model.layout(task)
    batch = inputs("_a") | inputs("_b") if layout == "bi" else inputs("")
    spec = TASKS[task]
    batch["labels"] = (torch.randint(0, 5, (B,), generator=g) if spec.output == "class"
                       else torch.rand(B, generator=g) * (5 if spec.output == "regression" else 1))
    if spec.output == "binary":
        batch["labels"] = batch["labels"].round()
    return batch


@pytest.mark.parametrize("task,pair_head", LAYOUTS)
def test_positive_and_gradient_reaches_the_encoder(task, pair_head):
    model = _model(pair_head).eval()  # dropout off: the change is the perturbation's alone
    batch = _batch(model, task)
    loss = smart_loss(model, task, batch, epsilon=1e-2, step_size=1e-2, noise_var=1e-3)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    for name, p in model.encoder.named_parameters():
        if name.startswith("encoder.layer.") and name.endswith("attention.self.query.weight"):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.encoder.get_input_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("task,pair_head", [("sst", "bi"), ("para", "bi"), ("sts", "cross")])
def test_zero_for_a_model_whose_output_ignores_its_input(task, pair_head):
    model = _model(pair_head)
    with torch.no_grad():
        for p in model.heads.parameters():
            p.zero_()  # every head outputs the constant 0
    loss = smart_loss(model, task, _batch(model, task), epsilon=1e-2, step_size=1e-2)
    assert loss.item() == 0.0


@pytest.mark.parametrize("task", ["sst", "para", "sts"])
def test_deterministic_for_a_seed_and_predictions_reuse(task):
    model = _model()  # train mode: dropout draws from the global RNG too
    batch = _batch(model, task)

    def run(**kwargs):
        torch.manual_seed(3)
        return smart_loss(model, task, batch, epsilon=1e-2, step_size=1e-2, **kwargs)

    assert run().item() == run().item()
    model.eval()
    with_generator = [smart_loss(model, task, batch, epsilon=1e-2, step_size=1e-2,
                                 generator=torch.Generator().manual_seed(5)).item()
                      for _ in range(2)]
    assert with_generator[0] == with_generator[1]
    reused = smart_loss(model, task, batch, epsilon=1e-2, step_size=1e-2,
                        predictions=model(task, batch), generator=torch.Generator().manual_seed(5))
    assert reused.item() == pytest.approx(with_generator[0], rel=1e-5)


def test_perturbation_stays_in_the_epsilon_ball_and_off_padding(monkeypatch):
    model = _model().eval()
    batch = _batch(model, "sst")
    clean = model.input_embeddings("sst", batch)["inputs_embeds"]
    seen = []
    original = model.forward_embeds

    def recording(task, batch, inputs_embeds):
        seen.append(inputs_embeds["inputs_embeds"].detach().clone())
        return original(task, batch, inputs_embeds)

    monkeypatch.setattr(model, "forward_embeds", recording)
    eps = 1e-3
    smart_loss(model, "sst", batch, epsilon=eps, step_size=1.0, steps=2)
    assert len(seen) == 1 + 2 + 1  # clean, two ascent steps, the final perturbed pass
    final = seen[-1] - clean
    assert final.abs().max().item() <= eps * (1 + 1e-4)
    assert final.abs().max().item() >= 0.99 * eps  # a step of 1.0 reaches the ball's edge
    assert torch.equal(final[0, -2:], torch.zeros_like(final[0, -2:]))  # padding untouched


def test_ascent_uses_autograd_grad_without_touching_param_grads():
    model = _model().eval()
    batch = _batch(model, "para")
    smart_loss(model, "para", batch, epsilon=1e-2, step_size=1e-2, steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_added_to_the_task_loss_in_one_backward():
    model = _model()
    batch = _batch(model, "sts")
    predictions = model("sts", batch)
    loss = task_loss(TASKS["sts"], predictions, batch["labels"]) + 0.5 * smart_loss(
        model, "sts", batch, predictions=predictions)
    loss.backward()
    assert torch.isfinite(loss)


def test_symmetric_kl_matches_hand_computation():
    p_logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    q_logits = torch.tensor([[0.0, 0.2, 0.1], [1.0, -1.0, 0.0]])
    P = torch.softmax(p_logits, -1).numpy()
    Q = torch.softmax(q_logits, -1).numpy()
    expected = np.mean(np.sum(P * np.log(P / Q) + Q * np.log(Q / P), axis=1))
    assert symmetric_kl(p_logits, q_logits).item() == pytest.approx(expected, rel=1e-5)
    assert symmetric_kl(p_logits, p_logits).item() == 0.0


@pytest.mark.parametrize("kwargs,name", [({"epsilon": -1.0}, "epsilon"), ({"steps": 1.5}, "steps"),
                                         ({"noise_var": "x"}, "noise_var")])
def test_bad_arguments_name_the_parameter(kwargs, name):
    model = _model()
    with pytest.raises(ValueError, match=name):
        smart_loss(model, "sst", _batch(model, "sst"), **kwargs)
    with pytest.raises(ValueError, match="task"):
        smart_loss(model, "qnli", {}, **kwargs)
