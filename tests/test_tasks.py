"""gradlab.tasks: task tables built per run, losses and metrics against pinned values and
brute force (scipy, sklearn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from gradlab.data import DEFAULT_FILES, DEFAULT_READERS
from gradlab.tasks import (
    TASKS,
    TaskSpec,
    TaskTableError,
    overall_metrics,
    pearson_loss,
    task_loss,
    task_metrics,
    task_table,
)


def aux(kind: str = "binary", **changes) -> dict:
    options = {"train": "a-train.tsv", "dev": "a-dev.tsv", "text_columns": ["sentence"],
               "label_column": "label", "label_kind": kind, "label_range": [0, 1]}
    if kind == "class":
        options["num_classes"] = 2
    options.update(changes)
    return options


# --- task tables ------------------------------------------------------------------------------


def test_default_table_has_the_builtin_heads_losses_and_files():
    table = task_table(["sst", "para", "sts"])
    assert list(table) == ["sst", "para", "sts"]
    assert [t.head for t in table.values()] == ["linear", "bi", "bi"]
    assert [t.loss for t in table.values()] == ["cross_entropy", "bce", "mse"]
    for name, spec in table.items():
        assert spec.reader == DEFAULT_READERS[name] and spec.files == DEFAULT_FILES[name]
        assert spec == TASKS[name]


def test_heads_and_losses_follow_the_arguments():
    table = task_table(["sts", "sst", "para"], single_head="mlp", pair_head="cosine",
                       regression_loss="pearson")
    assert list(table) == ["sts", "sst", "para"]  # the run's order
    assert (table["sst"].head, table["para"].head, table["sts"].head) == ("mlp", "bi", "cosine")
    assert table["sts"].loss == "pearson" and table["para"].loss == "bce"
    table = task_table(["para", "sts"], pair_head="cross", sts_head="bi")
    assert (table["para"].head, table["sts"].head) == ("cross", "bi")


def test_aux_tasks_live_in_their_own_table_only():
    binary = task_table(["sst", "cola"], aux_tasks={"cola": aux()}, single_head="mlp")
    graded = task_table(["cola"], aux_tasks={"cola": aux("regression", label_range=[0, 5],
                                                         text_columns=["s1", "s2"])},
                        regression_loss="pearson")
    assert (binary["cola"].output, binary["cola"].kind, binary["cola"].head) == \
        ("binary", "single", "mlp")
    assert binary["cola"].loss == "bce" and binary["cola"].files == ("a-train.tsv", "a-dev.tsv")
    assert binary["cola"].reader.id_column == "id" and binary["cola"].label == "COLA"
    assert (graded["cola"].output, graded["cola"].kind, graded["cola"].head) == \
        ("regression", "pair", "bi")
    assert graded["cola"].loss == "pearson" and graded["cola"].primary == "pearson"
    assert "cola" not in TASKS and "cola" not in DEFAULT_READERS and "cola" not in DEFAULT_FILES
    with pytest.raises(TypeError):
        TASKS["cola"] = binary["cola"]  # the built-in table is read-only


def test_task_files_change_one_run_files_and_columns():
    table = task_table(["para"], task_files={"para": {"train": "/x/qqp.tsv",
                                                      "text_columns": ["q1", "q2"]}})
    assert table["para"].files == ("/x/qqp.tsv", DEFAULT_FILES["para"][1])
    assert table["para"].reader.text_columns == ("q1", "q2")
    assert table["para"].file("train") == "/x/qqp.tsv"
    assert TASKS["para"].reader.text_columns == ("sentence1", "sentence2")


def test_every_problem_is_listed_with_its_key_and_value():
    with pytest.raises(TaskTableError) as err:
        task_table(["sst", "nli", "sst", "cola", "sts"], single_head="deep", pair_head="siamese",
                   regression_loss="l1",
                   aux_tasks={"cola": aux(label_kind="ordinal"), "sts": aux(),
                              "wnli": {"train": "w.tsv"}},
                   task_files={"sst": {"colums": ["x"]}, "mnli": {"train": "m.tsv"}})
    problems = err.value.problems
    expected = [
        "single_head='deep' is not one of ['linear', 'mlp']",
        "pair_head='siamese' is not one of ['bi', 'cross', 'cosine']",
        "regression_loss='l1' is not one of ['mse', 'pearson']",
        "aux_tasks['cola']: label_kind='ordinal' is not one of",
        "aux_tasks: 'sts' is a built-in task",
        "aux_tasks['wnli']: unknown keys [], missing keys ['dev', 'text_columns',",
        "tasks: unknown task 'nli'",
        "tasks=['sst', 'nli', 'sst', 'cola', 'sts'] lists a task twice",
        "task_files['sst']: unknown key(s) ['colums']",
        "task_files: unknown task 'mnli'",
    ]
    assert len(problems) == len(expected), problems
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), (problem, start)


def test_para_cosine_head_is_refused_only_when_para_trains():
    with pytest.raises(TaskTableError, match="para_head='cosine' is for STS only"):
        task_table(["para"], para_head="cosine")
    assert task_table(["sts"], para_head="cosine")["sts"].head == "bi"


def test_task_spec_checks_head_and_loss():
    with pytest.raises(ValueError, match=r"head='cross' is not one of \['linear', 'mlp'\]"):
        TaskSpec("x", "X", "single", "class", 3, "accuracy", head="cross")
    with pytest.raises(ValueError, match=r"loss='mse' is not one of \['bce'\]"):
        TaskSpec("x", "X", "pair", "binary", 1, "accuracy", loss="mse")


# --- losses -----------------------------------------------------------------------------------


def test_pearson_loss_pinned_values():
    p = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # centred p = [-1.5, -0.5, 0.5, 1.5], y = [-1.5, 0.5, -0.5, 1.5]: r = 4 / 5
    assert pearson_loss(p, torch.tensor([1.0, 3.0, 2.0, 4.0])).item() == pytest.approx(0.2)
    assert pearson_loss(p, 2 * p + 1).item() == pytest.approx(0.0, abs=1e-7)
    assert pearson_loss(p, -p).item() == pytest.approx(2.0)
    constant = torch.full((4,), 3.0, requires_grad=True)
    loss = pearson_loss(constant, torch.tensor([1.0, 3.0, 2.0, 4.0]))
    loss.backward()
    assert loss.item() == 1.0 and torch.isfinite(constant.grad).all()


def test_pearson_loss_is_one_minus_scipy_r():
    rng = np.random.default_rng(0)
    for _ in range(5):
        p, y = rng.normal(size=32), rng.uniform(0, 5, size=32)
        expected = 1 - scipy_stats.pearsonr(p, y)[0]
        got = pearson_loss(torch.tensor(p), torch.tensor(y)).item()
        assert got == pytest.approx(expected, abs=1e-12)


def test_task_loss_follows_the_spec():
    p, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    mse, pearson = task_table(["sts"])["sts"], task_table(["sts"], regression_loss="pearson")
    assert task_loss(mse, p, y).item() == pytest.approx(0.5)  # (0 + 1 + 1 + 0) / 4
    assert task_loss(pearson["sts"], p, y).item() == pytest.approx(0.2)
    logits = torch.tensor([0.0, 0.0])
    assert task_loss(TASKS["para"], logits, torch.tensor([0.0, 1.0])).item() == \
        pytest.approx(math.log(2))
    assert task_loss(TASKS["sst"], torch.zeros(2, 5), torch.tensor([0, 4])).item() == \
        pytest.approx(math.log(5))


# --- metrics ----------------------------------------------------------------------------------


def test_class_metrics_pinned():
    metrics = task_metrics(TASKS["sst"], np.array([0, 1, 2, 2, 4]), np.array([0, 1, 1, 2, 3]))
    # per-class F1: 0 -> 1, 1 -> 2/3 (P 1, R 1/2), 2 -> 2/3 (P 1/2, R 1), 3 -> 0, 4 -> 0
    assert metrics == {"accuracy": pytest.approx(0.6), "macro_f1": pytest.approx(7 / 15)}


def test_binary_metrics_pinned():
    metrics = task_metrics(TASKS["para"], np.array([1, 0, 1, 1]),
                           np.array([1.0, 0.0, 0.0, 1.0], dtype=np.float32))
    # tp 2, fp 1, fn 0: precision 2/3, recall 1
    assert metrics == {"accuracy": pytest.approx(0.75), "f1": pytest.approx(0.8)}


def test_regression_metrics_pinned_and_undefined_for_constants():
    metrics = task_metrics(TASKS["sts"], np.array([1.0, 2.0, 3.0, 4.0]),
                           np.array([1.0, 3.0, 2.0, 4.0]))
    assert metrics == {"pearson": pytest.approx(0.8), "spearman": pytest.approx(0.8)}
    constant = task_metrics(TASKS["sts"], np.full(4, 2.0), np.array([1.0, 3.0, 2.0, 4.0]))
    assert all(math.isnan(v) for v in constant.values()) and set(constant) == {"pearson",
                                                                                "spearman"}


def test_overall_metrics_pinned():
    per_task = {"sst": {"accuracy": 0.5}, "para": {"accuracy": 0.8}, "sts": {"pearson": 0.6}}
    assert overall_metrics(per_task) == {"mean": pytest.approx(1.9 / 3),
                                         "score": pytest.approx((0.5 + 0.8 + 0.8) / 3)}
    with_aux = {**per_task, "cola": {"accuracy": 0.3, "f1": 0.1}}
    table = task_table(["sst", "para", "sts", "cola"], aux_tasks={"cola": aux()})
    assert overall_metrics(with_aux, table)["mean"] == pytest.approx(2.2 / 4)
    assert overall_metrics(with_aux)["mean"] == pytest.approx(1.9 / 3)  # built-ins only
    assert overall_metrics({"sst": {"accuracy": 0.5}, "sts": {"pearson": 0.6}}) == \
        {"mean": pytest.approx(0.55)}  # no score without all three
    assert overall_metrics({}) == {}


def test_task_names_must_be_strings():
    with pytest.raises(TaskTableError, match=r"tasks=\[\['sst'\]\] must be a list of task "
                                              r"names"):
        task_table([["sst"]])
    with pytest.raises(TaskTableError, match="tasks='sst' must be a non-empty list"):
        task_table("sst")


def test_module_examples_run():
    import doctest

    from gradlab import tasks

    assert doctest.testmod(tasks).failed == 0
