"""One seed derivation for every seeded stream of a run (batch orders, probe batches, EDA).

    >>> from gradlab.seeding import derive_seed
    >>> derive_seed(0, "sst", 0) == derive_seed(0, "sst", 0) != derive_seed(0, "sst", 1)
    True
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from a run's ``seed`` and the keys naming one stream.

    Stable across processes and Python versions (sha256 of ``"seed/key1/key2..."``, unlike
    ``hash()``), so a resumed run or another machine draws the same numbers. Keys are ints or
    names without "/" (so that two different key lists never give the same text).
    """
    for key in (seed, *keys):
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise TypeError(f"derive_seed: keys must be ints or strings, found {key!r}")
        if isinstance(key, str) and "/" in key:
            raise ValueError(f"derive_seed: a key must not contain '/', found {key!r}")
    text = "/".join(str(key) for key in (seed, *keys))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


__all__ = ["derive_seed"]
