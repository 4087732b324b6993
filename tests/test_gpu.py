"""The training step and the per-example Gramian on a CUDA device equal the CPU's (marker
``gpu``, skipped without CUDA). Nothing here needs the packaged MiniLM, torchjd or the task
data: a tiny random BERT without dropout and random token ids, so that the GPU check
(benchmarks/gpu_check.sh) runs them on a bare GPU machine."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_ENCODER

from gradlab.build import Parts, build_method, build_optimizer
from gradlab.engine import GradientEngine
from gradlab.model import MultitaskModel, block_name, load_encoder
from gradlab.per_example import example_gramians
from gradlab.schedules import get_schedule
from gradlab.step import TaskLoss, train_step

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

TASKS = ["sst", "para", "sts"]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _model() -> MultitaskModel:
    encoder = load_encoder("minilm", tiny={**TINY_ENCODER, **NO_DROPOUT}, seed=0)
    torch.manual_seed(0)
    return MultitaskModel(encoder, TASKS, dropout=0.0)


def _parts(model: MultitaskModel, device: str, precision: str = "fp32") -> Parts:
    """The parts train_step reads, for ``model`` moved to ``device`` (no data, no tokenizer)."""
    model = model.to(device).train()
    shared = model.shared_parameters()
    engine = GradientEngine([p for _, p in shared], [block_name(n) for n, _ in shared],
                            num_tasks=len(TASKS))
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.01)
    return Parts(tasks=list(TASKS), model=model, tokenizer=None,
                 special={"cls_id": 101, "sep_id": 102, "pad_id": 0}, train_sets={},
                 dev_sets={}, batchers={}, probe_batches={}, engine=engine,
                 optimizer=optimizer, scheduler=None, method_name="pcgrad",
                 method=build_method("pcgrad", seed=0), counterfactuals={},
                 schedule=get_schedule("joint", len(TASKS), 10), total_steps=10,
                 loss=TaskLoss(specs=model.task_specs, precision=precision), max_length=16,
                 max_grad_norm=1.0, device=device)


def _batches(model: MultitaskModel, batch_size: int = 4, seq_len: int = 12) -> dict:
    """Random token ids (padded: the last example of each input is 3 tokens shorter)."""
    generator = torch.Generator().manual_seed(0)

    def ids(suffix: str = "") -> dict[str, torch.Tensor]:
        input_ids = torch.randint(999, 30522, (batch_size, seq_len), generator=generator)
        input_ids[:, 0], input_ids[:, -1] = 101, 102
        mask = torch.ones(batch_size, seq_len, dtype=torch.long)
        mask[-1, -3:] = 0
        input_ids[-1, -3:] = 0
        return {f"input_ids{suffix}": input_ids, f"attention_mask{suffix}": mask,
                f"token_type_ids{suffix}": torch.zeros_like(input_ids)}

    labels = {"sst": torch.randint(0, 5, (batch_size,), generator=generator),
              "para": torch.randint(0, 2, (batch_size,), generator=generator).float(),
              "sts": 5.0 * torch.rand(batch_size, generator=generator)}
    batches = {}
    for task in TASKS:
        batch = ids() if model.layout(task) == "single" else {**ids("_a"), **ids("_b")}
        batches[task] = {**batch, "labels": labels[task]}
    return batches


def _on(batches: dict, device: str) -> dict:
    return {t: {k: v.to(device) for k, v in b.items()} for t, b in batches.items()}


def test_train_step_on_cuda_equals_cpu():
    model = _model()
    batches = _batches(model)
    cpu = _parts(copy.deepcopy(model), "cpu")
    gpu = _parts(copy.deepcopy(model), "cuda")
    on_cpu = train_step(cpu, TASKS, 0, batches=batches)
    on_gpu = train_step(gpu, TASKS, 0, batches=_on(batches, "cuda"))
    assert on_cpu.fault is None and on_gpu.fault is None
    torch.testing.assert_close(on_gpu.losses.cpu(), on_cpu.losses, rtol=1e-5, atol=1e-6)
    scale = on_cpu.block_gramians.abs().amax()
    torch.testing.assert_close(on_gpu.block_gramians.cpu(), on_cpu.block_gramians,
                               rtol=1e-4, atol=1e-5 * float(scale))
    torch.testing.assert_close(on_gpu.weights.cpu(), on_cpu.weights, rtol=1e-4, atol=1e-6)
    assert on_gpu.grad_norm == pytest.approx(on_cpu.grad_norm, rel=1e-4)
    for (name, p_cpu), p_gpu in zip(cpu.model.named_parameters(), gpu.model.parameters(),
                                    strict=True):
        if p_cpu.grad is None:
            assert p_gpu.grad is None, name
            continue
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-3,
                                   atol=1e-5 * float(p_cpu.grad.abs().max()) + 1e-9,
                                   msg=lambda m, name=name: f"{name}: {m}")
    cpu.optimizer.step()
    gpu.optimizer.step()
    second_cpu = train_step(cpu, TASKS, 1, batches=batches)
    second_gpu = train_step(gpu, TASKS, 1, batches=_on(batches, "cuda"))
    torch.testing.assert_close(second_gpu.losses.cpu(), second_cpu.losses, rtol=1e-4,
                               atol=1e-5)


def test_bf16_train_step_on_cuda_is_close_to_fp32():
    model = _model()
    batches = _on(_batches(model), "cuda")
    fp32 = train_step(_parts(copy.deepcopy(model), "cuda"), TASKS, 0, batches=batches)
    bf16 = train_step(_parts(copy.deepcopy(model), "cuda", "bf16"), TASKS, 0, batches=batches)
    assert bf16.fault is None
    torch.testing.assert_close(bf16.losses.cpu(), fp32.losses.cpu(), rtol=5e-2, atol=5e-2)
    cosine = torch.nn.functional.cosine_similarity(
        bf16.block_gramians.sum(0).flatten(), fp32.block_gramians.sum(0).flatten(), dim=0)
    assert float(cosine) > 0.95


def test_example_gramians_on_cuda_equal_cpu():
    model = _model()
    batches = _batches(model)
    names, on_cpu, losses_cpu = example_gramians(model, batches)
    names_gpu, on_gpu, losses_gpu = example_gramians(copy.deepcopy(model).cuda(),
                                                     _on(batches, "cuda"))
    assert names_gpu == names
    scale = torch.sqrt(torch.diagonal(on_cpu, dim1=-2, dim2=-1).clamp_min(1e-30))
    error = (on_gpu.cpu() - on_cpu).abs() / (scale.unsqueeze(-1) * scale.unsqueeze(-2))
    assert float(error.max()) < 1e-4
    torch.testing.assert_close(losses_gpu.cpu(), losses_cpu, rtol=1e-5, atol=1e-6)
