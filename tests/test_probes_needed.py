"""benchmarks/probes_needed.py: regrouping a noise study's rounds into K-replicate probes."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from gradlab.calibration import pair_frame

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("probes_needed",
                                                  ROOT / "benchmarks" / "probes_needed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _study(rng, rounds=3, r=4, tasks=3, p=20):
    """Gramians [S, R*T, R*T] of random gradients, rows replicate-major, and the gradients."""
    g = rng.normal(size=(rounds, r * tasks, p)) + rng.normal(size=(1, 1, p))
    return np.einsum("srp,sqp->srq", g, g), g


def test_regroup_takes_the_gramian_of_consecutive_replicates():
    mod = _module()
    gram, g = _study(np.random.default_rng(0))
    probes = mod.regroup(gram, 3, 2)
    assert probes.shape == (6, 6, 6)
    # probe 1 = round 0, replicates 2 and 3 (rows 6..11), brute force from the gradients
    rows = g[0, 6:12]
    np.testing.assert_allclose(probes[1], rows @ rows.T)
    # probe 4 = round 2, replicates 0 and 1
    rows = g[2, 0:6]
    np.testing.assert_allclose(probes[4], rows @ rows.T)


def test_regroup_drops_leftover_replicates_and_pools_like_probes():
    mod = _module()
    gram, g = _study(np.random.default_rng(1), rounds=2, r=5)
    probes = mod.regroup(gram, 3, 2)  # 5 replicates: 2 probes per round, replicate 4 dropped
    assert probes.shape == (4, 6, 6)
    brute = np.stack([g[s, 6 * j:6 * j + 6] @ g[s, 6 * j:6 * j + 6].T
                      for s in range(2) for j in range(2)])
    a = pair_frame(probes, ["a", "b", "c"])
    b = pair_frame(brute, ["a", "b", "c"])
    np.testing.assert_allclose(a.estimate.to_numpy(), b.estimate.to_numpy(), equal_nan=True)


def test_script_prints_a_line_per_probe_count(tmp_path):
    gram, _ = _study(np.random.default_rng(2), rounds=2, r=4)
    np.savez(tmp_path / "gramians.npz", tasks=np.array(["sst", "para", "sts"]),
             block_names=np.array(["encoder"]), batch_sizes=np.array([16]),
             gramians_b16=gram[:, None])
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "probes_needed.py"),
                          str(tmp_path), "--block", "encoder"],
                         capture_output=True, text=True, check=True).stdout
    lines = [line for line in out.splitlines() if "batches/task" in line]
    assert [line.split()[0] for line in lines] == ["2", "3", "4"]
    assert "para-sts" in lines[-1]
