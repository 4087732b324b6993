"""The monitor writes raw facts of steps and probes to a real run store; Run reads them back."""

from __future__ import annotations

import numpy as np
import torch

from gradlab.methods import MethodOutput, ProjectionEvent
from gradlab.monitor import Monitor
from gradlab.run import load_run
from gradlab.store import RunWriter

TASKS = ["sst", "para", "sts"]
BLOCKS = ["embeddings", "layer.0"]


def monitor_for(tmp_path) -> Monitor:
    writer = RunWriter(tmp_path / "run", name="run", config={}, tasks=TASKS,
                       blocks=[(b, 10) for b in BLOCKS], method="pcgrad", seed=0,
                       schedule="joint")
    return Monitor(writer, TASKS, BLOCKS)


def gramians(T: int, seed: int = 0) -> torch.Tensor:
    J = torch.randn(len(BLOCKS), T, 5, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(seed))
    return J @ J.transpose(1, 2)  # [B, T, T]


def test_train_step_logs_weights_of_every_task_losses_gramians_and_projections(tmp_path):
    monitor = monitor_for(tmp_path)
    G = gramians(3)
    event = ProjectionEvent(i=0, j=2, coefficient=-0.25, cosine=-0.5)
    output = MethodOutput(weights=torch.tensor([1.0, 0.5, 1.25], dtype=torch.float64),
                          projections=[event], extras={"gradnorm_loss": 0.125})
    monitor.train_step(0, TASKS, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
                       output.weights, output, G, lr=1e-3, grad_norm=4.0, step_time=0.5)
    # a round-robin step: only PARA, no Gramian logged, weights 0 for the others
    monitor.train_step(1, ["para"], torch.tensor([2.5], dtype=torch.float64),
                       torch.ones(1, dtype=torch.float64), None, None, lr=1e-3,
                       grad_norm=1.0, step_time=0.5)
    monitor.writer.close(status="finished")
    run = load_run(tmp_path / "run")
    w = run.weights().pivot_table(index="step", columns="task", values="value")
    assert w.loc[0, ["sst", "para", "sts"]].tolist() == [1.0, 0.5, 1.25]
    assert w.loc[1, ["sst", "para", "sts"]].tolist() == [0.0, 1.0, 0.0]
    assert run.losses()[["step", "task", "value"]].values.tolist() == [
        [0, "sst", 1.0], [0, "para", 2.0], [0, "sts", 3.0], [1, "para", 2.5]]
    tasks, logged = run.gramian(0, source="train", block="layer.0")
    assert tasks == TASKS and np.allclose(logged, G[1].numpy())
    assert run.gramian_series(source="train")[0].tolist() == [0]  # none at the RR step
    assert len(run.projections()) == 1
    assert run.scalars("gradnorm_loss")["value"].tolist() == [0.125]
    assert run.scalars("grad_norm")["value"].tolist() == [4.0, 1.0]


def test_probe_logs_gramians_losses_and_counterfactuals(tmp_path):
    monitor = monitor_for(tmp_path)
    G = gramians(3, seed=1)
    w = torch.ones(3, dtype=torch.float64)
    predicted = -1e-3 * G.sum(0) @ w
    monitor.probe(4, G, torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64),
                  {"sum": (w, predicted, None)})
    monitor.writer.close(status="finished")
    run = load_run(tmp_path / "run")
    tasks, logged = run.gramian(4, source="probe", block="embeddings")
    assert tasks == TASKS and np.allclose(logged, G[0].numpy())
    cf = run.counterfactuals()
    assert cf["counterfactual"].unique().tolist() == ["sum"]
    assert np.allclose(cf["predicted_delta"], predicted.numpy())
    assert cf["measured_delta"].isna().all()
    assert run.scalars("probe_loss")["value"].tolist() == [0.5, 0.6, 0.7]
