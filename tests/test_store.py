"""gradlab.store: RunWriter round trip, batching, concurrent reading, crashes, errors."""

from __future__ import annotations

import doctest
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gradlab import store
from gradlab.methods._base import ProjectionEvent
from gradlab.run import load_run
from gradlab.store import RunWriter, StoreError, open_store_readonly, resolve_run_dir

REPO = Path(__file__).resolve().parents[1]
TASKS = ["sst", "para", "sts"]
BLOCKS = [("embeddings", 12), ("layer.0", 8), ("layer.1", 8)]
BLOCK_NAMES = [b for b, _ in BLOCKS]


def new_writer(run_dir: Path, **kwargs) -> RunWriter:
    options = dict(name=run_dir.name, config={"lr": 1e-5, "nested": {"a": [1, 2]}}, tasks=TASKS,
                   blocks=BLOCKS, method="pcgrad", seed=3, schedule="joint")
    options.update(kwargs)
    return RunWriter(run_dir, **options)


def block_gramians(rng: np.random.Generator, T: int = 3) -> np.ndarray:
    J = [rng.standard_normal((T, n)) for _, n in BLOCKS]
    return np.stack([j @ j.T for j in J])


def rows(path: Path, sql: str, params=()) -> list[tuple]:
    conn = open_store_readonly(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_module_docstring_example_runs():
    assert doctest.testmod(store).failed == 0


def test_round_trip(tmp_path):
    run_dir = tmp_path / "rt"
    rng = np.random.default_rng(0)
    Gb = block_gramians(rng)
    events = [ProjectionEvent(0, 1, -0.25, -0.1), ProjectionEvent(2, 0, -0.5, -0.3, "layer.0")]
    with new_writer(run_dir) as w:
        w.log_scalars(0, {"loss": 0.7}, task="sst")
        w.log_scalars(0, {"lr": 1e-5, "update_norm": float("nan")})
        w.log_gramians(0, "train", Gb, BLOCK_NAMES, TASKS)
        w.log_weights(0, "train", "pcgrad", np.array([1.0, 0.5, 0.25]), TASKS)
        w.log_weights(0, "train", "pcgrad_layerwise", np.arange(9.0).reshape(3, 3), TASKS,
                      block_names=BLOCK_NAMES)
        w.log_projections(0, events, TASKS)
        w.log_eval(0, "dev", "sst", {"accuracy": 0.4, "macro_f1": 0.3})
        w.log_counterfactual(0, "mgda", TASKS, np.ones(3), -np.ones(3))
        w.log_counterfactual(0, "mean", TASKS, np.ones(3), -np.ones(3), measured=[0.1, 0.2, 0.3])
        w.log_checkpoint(0, "last", tmp_path / "ckpt")
    path = run_dir / "run.sqlite"
    meta = dict(rows(path, "SELECT key, value FROM meta"))
    assert meta["schema_version"] == "1" and meta["status"] == "finished"
    assert meta["name"] == "rt" and meta["method"] == "pcgrad" and meta["seed"] == "3"
    assert json.loads(meta["tasks"]) == TASKS
    assert json.loads(meta["blocks"]) == [list(b) for b in BLOCKS]
    assert json.loads(meta["config"]) == {"lr": 1e-5, "nested": {"a": [1, 2]}}
    assert {"created_at", "ended_at", "schedule", "gradlab_version"} <= set(meta)
    assert rows(path, "SELECT step, name, task, value FROM scalars ORDER BY rowid") == [
        (0, "loss", "sst", 0.7), (0, "lr", "", 1e-5), (0, "update_norm", "", None)]
    stored = rows(path, "SELECT block, tasks, data FROM gramians ORDER BY rowid")
    assert [r[0] for r in stored] == [*BLOCK_NAMES, "encoder"]
    for (_, tasks, data), expected in zip(stored, [*Gb, Gb.sum(0)], strict=True):
        assert json.loads(tasks) == TASKS
        np.testing.assert_array_equal(np.frombuffer(data, "<f8").reshape(3, 3), expected)
    weights = rows(path, "SELECT method, block, task, value FROM weights ORDER BY rowid")
    assert weights[:3] == [("pcgrad", "", "sst", 1.0), ("pcgrad", "", "para", 0.5),
                           ("pcgrad", "", "sts", 0.25)]
    assert weights[3:6] == [("pcgrad_layerwise", "embeddings", t, float(k))
                            for k, t in enumerate(TASKS)]
    assert rows(path, "SELECT block, task_i, task_j, coefficient, cosine FROM projections") == [
        ("", "sst", "para", -0.25, -0.1), ("layer.0", "sts", "sst", -0.5, -0.3)]
    assert rows(path, "SELECT metric, value FROM evals") == [("accuracy", 0.4), ("macro_f1", 0.3)]
    cf = rows(path, "SELECT method, task, measured_delta FROM counterfactuals ORDER BY rowid")
    assert cf[0] == ("mgda", "sst", None)
    assert cf[3:] == [("mean", "sst", 0.1), ("mean", "para", 0.2), ("mean", "sts", 0.3)]
    assert rows(path, "SELECT step, kind, path FROM checkpoints") == [
        (0, "last", str(tmp_path / "ckpt"))]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_block_gramians_sum_to_encoder(tmp_path):
    rng = np.random.default_rng(1)
    logged = {}
    with new_writer(tmp_path / "sum") as w:
        for step in range(5):
            for source in ("train", "probe"):
                logged[(step, source)] = Gb = block_gramians(rng)
                w.log_gramians(step, source, Gb, BLOCK_NAMES, TASKS)
    data = rows(tmp_path / "sum", "SELECT step, source, block, data FROM gramians")
    found: dict = {}
    for step, source, block, blob in data:
        found.setdefault((step, source), {})[block] = np.frombuffer(blob, "<f8").reshape(3, 3)
    assert found.keys() == logged.keys()
    for key, blocks in found.items():
        parts = np.stack([blocks[b] for b in BLOCK_NAMES])
        np.testing.assert_array_equal(parts, logged[key])
        np.testing.assert_allclose(blocks["encoder"], parts.sum(0), rtol=1e-15)


def test_rows_are_invisible_until_commit(tmp_path):
    w = new_writer(tmp_path / "batch", commit_every=100, commit_seconds=1e9)
    for step in range(3):
        w.log_scalars(step, {"loss": 1.0}, task="sst")
    reader = open_store_readonly(tmp_path / "batch")
    try:
        assert reader.execute("SELECT COUNT(*) FROM scalars").fetchone()[0] == 0
        status = reader.execute("SELECT value FROM meta WHERE key='status'").fetchone()[0]
        assert status == "running"
        w.flush()
        assert reader.execute("SELECT COUNT(*) FROM scalars").fetchone()[0] == 3
    finally:
        reader.close()
        w.close()


def test_commits_whole_steps_every_commit_every_steps(tmp_path):
    w = new_writer(tmp_path / "every", commit_every=2, commit_seconds=1e9)
    committed = []
    for step in range(7):
        w.log_scalars(step, {"loss": 1.0}, task="sst")
        w.log_scalars(step, {"lr": 1.0})  # same step: never splits a step across commits
        committed.append(rows(tmp_path / "every", "SELECT COUNT(DISTINCT step) FROM scalars")[0][0])
    assert committed == [0, 0, 2, 2, 4, 4, 6]
    w.close()
    assert rows(tmp_path / "every", "SELECT COUNT(*) FROM scalars")[0][0] == 14


def test_commit_seconds(tmp_path):
    w = new_writer(tmp_path / "secs", commit_every=1000, commit_seconds=0.0)
    w.log_scalars(0, {"lr": 1.0})
    w.log_scalars(1, {"lr": 1.0})  # a new step after commit_seconds: step 0 is committed
    assert rows(tmp_path / "secs", "SELECT step FROM scalars") == [(0,)]
    w.close()


READER_SCRIPT = r"""
import sys
from gradlab.run import load_run
from gradlab.store import open_store_readonly

conn = open_store_readonly(sys.argv[1])
conn.execute("BEGIN")  # hold one read snapshot while the other process writes
before = conn.execute("SELECT COUNT(*) FROM scalars").fetchone()[0]
print("ready", before, flush=True)
sys.stdin.readline()
same_snapshot = conn.execute("SELECT COUNT(*) FROM scalars").fetchone()[0]
conn.execute("COMMIT")
after = conn.execute("SELECT COUNT(*) FROM scalars").fetchone()[0]
run = load_run(sys.argv[1])
print(same_snapshot, after, len(run.losses()), len(run.cosines(source="train")), run.status,
      flush=True)
"""


def test_reader_in_another_process_does_not_block_the_writer(tmp_path):
    run_dir = tmp_path / "live"
    rng = np.random.default_rng(2)
    w = new_writer(run_dir, commit_every=1, commit_seconds=1e9)
    for step in range(5):
        w.log_scalars(step, {"loss": 1.0}, task="sst")
        w.log_gramians(step, "train", block_gramians(rng), BLOCK_NAMES, TASKS)
    w.flush()
    reader = subprocess.Popen([sys.executable, "-c", READER_SCRIPT, str(run_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert reader.stdout.readline().split() == ["ready", "5"]
        slowest = 0.0
        for step in range(5, 105):
            w.log_scalars(step, {"loss": 1.0}, task="sst")
            w.log_gramians(step, "train", block_gramians(rng), BLOCK_NAMES, TASKS)
            start = time.perf_counter()
            w.flush()
            slowest = max(slowest, time.perf_counter() - start)
        assert slowest < 2.0  # the reader's open snapshot never makes a commit wait
        out, err = reader.communicate("go\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
        w.close()
    assert reader.returncode == 0, err
    assert out.split() == ["5", "105", "105", str(105 * 4 * 3), "running"]


WRITER_SCRIPT = r"""
import sys, time
import numpy as np
from pathlib import Path
from gradlab.store import RunWriter

blocks = [("layer.0", 4), ("layer.1", 4)]
w = RunWriter(Path(sys.argv[1]), name="killed", config={}, tasks=["sst", "para"], blocks=blocks,
              method="sum", seed=0, schedule="joint", commit_every=5, commit_seconds=1e9)
G = np.stack([np.eye(2), 2 * np.eye(2)])
step = 0
while True:
    w.log_scalars(step, {"loss": 1.0}, task="sst")
    w.log_gramians(step, "train", G, ["layer.0", "layer.1"], ["sst", "para"])
    w.log_weights(step, "train", "sum", np.ones(2), ["sst", "para"])
    w.log_scalars(step, {"lr": 0.1})
    if step % 15 == 14:
        w.flush()  # explicit flushes land on the commit boundary too
    step += 1
    time.sleep(0.002)
"""


def test_sigkill_leaves_a_consistent_store(tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(run_dir)],
                            stderr=subprocess.PIPE, env=subprocess_env())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            if (run_dir / "run.sqlite").exists():
                try:
                    if rows(run_dir, "SELECT COUNT(DISTINCT step) FROM scalars")[0][0] >= 23:
                        break
                except StoreError:
                    pass
            time.sleep(0.01)
        assert store.run_status(run_dir) == "running"  # the live writer holds the run lock
        time.sleep(0.013)  # land somewhere inside a batch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    run = load_run(run_dir)
    # A killed writer never records an end; the lock it held died with it.
    assert rows(run_dir, "SELECT value FROM meta WHERE key='status'") == [("running",)]
    assert run.status == "dead" and store.run_status(run_dir) == "dead"
    per_table = {
        "scalars": set(run.scalars()["step"]),
        "losses": set(run.losses()["step"]),
        "gramians": set(run.cosines(source="train")["step"]),
        "weights": set(run.weights()["step"]),
    }
    steps = per_table["scalars"]
    n = len(steps)
    assert n >= 20 and n % 5 == 0
    assert steps == set(range(n))  # the rows end at a committed step
    assert all(s == steps for s in per_table.values()), per_table
    assert len(run.scalars()) == 2 * n
    assert rows(run_dir, "SELECT COUNT(*) FROM gramians")[0][0] == 3 * n


def test_resume_and_truncate_after(tmp_path):
    run_dir = tmp_path / "resume"
    with new_writer(run_dir, commit_every=3) as w:
        for step in range(10):
            w.log_scalars(step, {"loss": 1.0}, task="sst")
            w.log_checkpoint(step, "periodic", f"ckpt/{step}")
    with pytest.raises(StoreError, match="already exists.*resume=True"):
        new_writer(run_dir)
    with pytest.raises(StoreError, match=r"cannot resume .*tasks \['sst', 'para', 'sts'\]"):
        new_writer(run_dir, tasks=["sst", "para"], resume=True)
    w = new_writer(run_dir, resume=True)
    assert rows(run_dir, "SELECT value FROM meta WHERE key='status'") == [("running",)]
    w.log_scalars(11, {"loss": 9.0}, task="sst")  # buffered rows past the point go too
    w.truncate_after(4)
    for step in range(5, 8):
        w.log_scalars(step, {"loss": 2.0}, task="sst")
    w.close()
    assert rows(run_dir, "SELECT step, value FROM scalars ORDER BY step") == [
        *[(s, 1.0) for s in range(5)], *[(s, 2.0) for s in range(5, 8)]]
    assert rows(run_dir, "SELECT MAX(step) FROM checkpoints") == [(4,)]
    meta = dict(rows(run_dir, "SELECT key, value FROM meta"))
    assert meta["truncated_after"] == "4" and meta["status"] == "finished" and "resumed_at" in meta
    with pytest.raises(StoreError, match="no run store"):
        new_writer(tmp_path / "never", resume=True)


@pytest.mark.parametrize("name", ["", " ", ".", "..", "a/b", "../x", "a\\b", "/abs", "x\0y"])
def test_resolve_run_dir_refuses_escaping_names(tmp_path, name):
    with pytest.raises(ValueError, match="invalid run name"):
        resolve_run_dir(tmp_path, name)


def test_resolve_run_dir(tmp_path):
    assert resolve_run_dir(tmp_path, "pcgrad-seed0") == tmp_path / "pcgrad-seed0"
    assert resolve_run_dir(str(tmp_path), "a..b") == tmp_path / "a..b"
    (tmp_path / "link").symlink_to(tmp_path.parent)  # a symlinked run folder leading out
    with pytest.raises(ValueError, match="outside"):
        resolve_run_dir(tmp_path, "link")
    with pytest.raises(TypeError):
        resolve_run_dir(tmp_path, 3)


def test_unwritable_folder_names_the_path(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match=r"cannot create run folder .*file\.txt/run") as info:
        new_writer(blocker / "run")
    assert info.value.path == blocker / "run"


def test_disk_full_names_the_path(tmp_path):
    w = new_writer(tmp_path / "full", commit_every=10_000)
    pages = w._conn.execute("PRAGMA page_count").fetchone()[0]
    w._conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # simulate a full disk
    rng = np.random.default_rng(3)
    for step in range(300):
        w.log_gramians(step, "train", block_gramians(rng), BLOCK_NAMES, TASKS)
    with pytest.raises(StoreError, match=r"could not write .*full/run\.sqlite.*full"):
        w.flush()
    w._conn.execute("PRAGMA max_page_count = 1000000")
    w.close()  # the buffered rows were kept and go in once there is room
    assert rows(tmp_path / "full", "SELECT COUNT(*) FROM gramians")[0][0] == 300 * 4


def test_open_store_readonly_errors(tmp_path):
    with pytest.raises(StoreError, match="no run store at .*nothing"):
        open_store_readonly(tmp_path / "nothing")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "run.sqlite").write_bytes(b"this is not a database" * 200)
    with pytest.raises(StoreError, match=r"corrupt/run\.sqlite is corrupt"):
        open_store_readonly(corrupt)
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t(x)")
    conn.close()
    with pytest.raises(StoreError, match=r"other\.sqlite is not a gradlab run store"):
        open_store_readonly(other)
    new_writer(tmp_path / "future").close()
    conn = sqlite3.connect(tmp_path / "future" / "run.sqlite")
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=r"future/run\.sqlite has run-store schema version '99'"):
        open_store_readonly(tmp_path / "future")
    with pytest.raises(StoreError, match="schema version"):
        new_writer(tmp_path / "future", resume=True)


def test_readonly_connection_cannot_write(tmp_path):
    new_writer(tmp_path / "ro").close()
    conn = open_store_readonly(tmp_path / "ro" / "run.sqlite")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM meta")
    conn.close()


def test_writer_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="commit_every"):
        new_writer(tmp_path / "a", commit_every=0)
    with pytest.raises(ValueError, match="tasks must be distinct"):
        new_writer(tmp_path / "b", tasks=["sst", "sst"])
    with pytest.raises(ValueError, match="blocks must be distinct.*encoder"):
        new_writer(tmp_path / "c", blocks=[("encoder", 3)])
    w = new_writer(tmp_path / "d")
    G = np.zeros((3, 3, 3))
    with pytest.raises(ValueError, match=r"source must be one of \['train', 'probe'\], got 'dev'"):
        w.log_gramians(0, "dev", G, BLOCK_NAMES, TASKS)
    with pytest.raises(ValueError, match="block_gramians must have shape"):
        w.log_gramians(0, "train", G[:, :2, :2], BLOCK_NAMES, TASKS)
    with pytest.raises(ValueError, match="block_names must name every block"):
        w.log_gramians(0, "train", G[:2], BLOCK_NAMES[:2], TASKS)
    with pytest.raises(ValueError, match="tasks must be distinct tasks of the run"):
        w.log_weights(0, "train", "sum", np.ones(3), ["sst", "para", "qqp"])
    with pytest.raises(ValueError, match="weights must have shape"):
        w.log_weights(0, "train", "sum", np.ones(2), TASKS)
    with pytest.raises(ValueError, match="indexes outside"):
        w.log_projections(0, [ProjectionEvent(0, 5, -1.0, -0.5)], TASKS)
    with pytest.raises(TypeError, match="step must be an integer"):
        w.log_scalars(1.5, {"lr": 1.0})
    with pytest.raises(ValueError, match="status must be one of"):
        w.close("done")
    w.close()
    w.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        w.log_scalars(0, {"lr": 1.0})
    assert rows(tmp_path / "d", "SELECT COUNT(*) FROM scalars") == [(0,)]


def test_context_manager_records_failure(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), new_writer(tmp_path / "fail") as w:
        w.log_scalars(0, {"lr": 1.0})
        raise RuntimeError("boom")
    assert rows(tmp_path / "fail", "SELECT value FROM meta WHERE key='status'") == [("failed",)]
    assert rows(tmp_path / "fail", "SELECT COUNT(*) FROM scalars") == [(1,)]


def test_replicate_gramians_round_trip_and_shape_checks(tmp_path):
    rng = np.random.default_rng(3)
    J = rng.normal(size=(3, 6, 5))  # 3 blocks, K*T = 2*3 rows
    G = np.einsum("bip,bjp->bij", J, J)
    with new_writer(tmp_path / "r") as w:
        with pytest.raises(ValueError, match=r"K\*T=6"):
            w.log_replicate_gramians(0, G[:, :3, :3], BLOCK_NAMES, ["sst", "para", "sts"], 2)
        with pytest.raises(ValueError, match="replicates"):
            w.log_replicate_gramians(0, G, BLOCK_NAMES, ["sst", "para", "sts"], 0)
        w.log_replicate_gramians(4, G, BLOCK_NAMES, ["sst", "para", "sts"], 2)
    series = {s.block: s for s in store.StoreReader(tmp_path / "r").replicate_gramians(
        [*BLOCK_NAMES, "encoder"])}
    assert series["encoder"].replicates == 2 and series["encoder"].steps.tolist() == [4]
    np.testing.assert_array_equal(series["layer.0"].G[0], G[1])
    np.testing.assert_allclose(series["encoder"].G[0], G.sum(0))


def test_a_store_without_the_replicate_table_reads_as_no_replicates(tmp_path):
    with new_writer(tmp_path / "old") as w:
        w.log_scalars(0, {"loss": 1.0}, task="sst")
    with sqlite3.connect(tmp_path / "old" / "run.sqlite") as conn:
        conn.execute("DROP TABLE replicate_gramians")  # as written before replicate probes
    assert store.StoreReader(tmp_path / "old").replicate_gramians(["encoder"]) == []
    assert load_run(tmp_path / "old").expected_cosines().empty
    with new_writer(tmp_path / "old", resume=True) as w:  # resuming adds the table
        w.log_replicate_gramians(1, np.zeros((len(BLOCKS), 3, 3)), BLOCK_NAMES,
                                 ["sst", "para", "sts"], 1)
    assert len(store.StoreReader(tmp_path / "old").replicate_gramians(["encoder"])) == 1
