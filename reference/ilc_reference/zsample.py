"""The surrogate z used at decode (numpy only: the decoder must not need torch).

z = 0 is the default; a seeded N(0, T^2) sample is reproducible on every machine because
numpy's PCG64 + standard_normal are platform independent. The seed and T live in the bitstream.
"""
from __future__ import annotations

import numpy as np


def surrogate_z(shape: tuple[int, ...], seed: int | None = None, temperature: float = 0.0) -> np.ndarray:
    if seed is None or temperature == 0.0:
        return np.zeros(shape, dtype=np.float32)
    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(temperature)).astype(np.float32)
