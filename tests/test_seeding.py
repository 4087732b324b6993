"""derive_seed: the one seed derivation of batch orders, probe batches, EDA and methods."""

from __future__ import annotations

import pytest

from gradlab.seeding import derive_seed


def test_derive_seed_is_pinned_and_stable_across_processes():
    # sha256 of "0/sst/0": TaskBatcher's epoch-0 order of SST for seed 0 (as before issue 12)
    assert derive_seed(0, "sst", 0) == 1298367510977440811
    assert derive_seed(3, "probe", "sts") == 3978306300394044490
    assert 0 <= derive_seed(2**40, "x") < 2**63


def test_derive_seed_separates_streams():
    seeds = {derive_seed(0, "sst", 0), derive_seed(0, "sst", 1), derive_seed(1, "sst", 0),
             derive_seed(0, "sts", 0), derive_seed(0, "probe", "sst"), derive_seed(0, "sst"),
             derive_seed(0, "eda", "sst"), derive_seed(0, "counterfactual", "pcgrad")}
    assert len(seeds) == 8
    assert derive_seed(0, 1) == derive_seed(0, "1")  # keys are text: ints and names alike


@pytest.mark.parametrize("keys,error", [((1.5,), TypeError), ((True,), TypeError),
                                        (("a/b",), ValueError), ((None,), TypeError)])
def test_derive_seed_refuses_ambiguous_keys(keys, error):
    with pytest.raises(error, match="derive_seed: "):
        derive_seed(0, *keys)
