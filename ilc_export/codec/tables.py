"""The codec's integer tables (numpy only; never imports torch).

Everything that selects a CDF during entropy coding lives here as integers, derived
once from the float model by :mod:`ilc_export.export.tables_build` and stored in the
checkpoint's safetensors file under keys prefixed ``tables.``:

================================  =========  ==========================================
key                               dtype      meaning
================================  =========  ==========================================
tables.version                    int32 (1)  table layout version (TABLES_VERSION)
tables.precision                  int32 (1)  P: every CDF row ends at 2**P (16)
tables.prior.cdf                  int32 (Nh, Lw+1)  factorized prior CDF per channel
tables.prior.lo                   int32 (Nh)  smallest value of w_hat per channel
tables.prior.len                  int32 (Nh)  number of values (w_hat in [lo, lo+len-1])
tables.gauss.cdf                  int32 (S, Lg+1)   Gaussian CDF per scale index
tables.gauss.radius               int32 (S)  R: values -R..R coded directly, rest escaped
tables.hs.weight0/1/2             int32 (Co, Ci, 3, 3)  integer conv weights
tables.hs.bias0/1/2               int64 (Co)  integer biases (accumulator scale)
tables.hs.shift                   int32 (2)  right shifts after layers 0 and 1
tables.hs.act_max                 int64 (2)  clip bound of the unsigned activations
tables.hs.thresholds              int64 (S-1)  scale index = #{i : v_int >= T_i}
tables.hs.log2_scale              int32 (1)  s with v_int ~= log(sigma) * 2**s (info)
================================  =========  ==========================================

A CDF row ``c`` holds ``len+1`` strictly increasing entries from 0 to 2**P, padded
with 2**P; every symbol has probability >= 1/2**P. Gaussian symbol layout for a scale
with radius R: index 0 = escape below (value < -R), 1 + R + v for v in -R..R,
2R + 2 = escape above (value > R).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.model_id import TABLE_PREFIX
from .errors import TablesError
#: Layout version of the tables; bump when the meaning of a key changes.
TABLES_VERSION = 1
#: Integers held in float64 are exact below this bound.
EXACT_FLOAT64 = 2**53

_REQUIRED = (
    "version", "precision", "prior.cdf", "prior.lo", "prior.len", "gauss.cdf", "gauss.radius",
    "hs.weight0", "hs.weight1", "hs.weight2", "hs.bias0", "hs.bias1", "hs.bias2",
    "hs.shift", "hs.act_max", "hs.thresholds", "hs.log2_scale",
)

def _missing_tables_message(path) -> str:
    return (f"{path}: checkpoint has no codec tables; run `ilc-export tables --ckpt {path}` "
            "to derive them from the float model")


@dataclass
class CodecTables:
    """Integer tables of one model. Arrays only; see the module doc for the keys."""

    precision: int
    prior_cdf: np.ndarray  # int32 (Nh, Lw+1)
    prior_lo: np.ndarray  # int32 (Nh,)
    prior_len: np.ndarray  # int32 (Nh,)
    gauss_cdf: np.ndarray  # int32 (S, Lg+1)
    gauss_radius: np.ndarray  # int32 (S,)
    weights: tuple[np.ndarray, np.ndarray, np.ndarray]  # int32 (Co, Ci, 3, 3)
    biases: tuple[np.ndarray, np.ndarray, np.ndarray]  # int64 (Co,)
    shifts: np.ndarray  # int32 (2,)
    act_max: np.ndarray  # int64 (2,)
    thresholds: np.ndarray  # int64 (S-1,)
    log2_scale: int
    version: int = TABLES_VERSION

    # shapes -----------------------------------------------------------------
    @property
    def hyper_channels(self) -> int:
        return int(self.prior_lo.shape[0])

    @property
    def latent_channels(self) -> int:
        return int(self.weights[2].shape[0])

    @property
    def num_scales(self) -> int:
        return int(self.gauss_radius.shape[0])

    @property
    def w_bound(self) -> int:
        """Largest |w_hat| the prior tables allow (the integer net's input bound)."""
        lo = self.prior_lo.astype(np.int64)
        hi = lo + self.prior_len - 1
        return int(max(np.abs(lo).max(), np.abs(hi).max()))

    def prior_pmf(self, c: int) -> np.ndarray:
        n = int(self.prior_len[c])
        return np.diff(self.prior_cdf[c, : n + 1].astype(np.int64))

    def gauss_pmf(self, k: int) -> np.ndarray:
        n = 2 * int(self.gauss_radius[k]) + 3
        return np.diff(self.gauss_cdf[k, : n + 1].astype(np.int64))

    # (de)serialisation --------------------------------------------------------
    def to_tensors(self) -> dict[str, np.ndarray]:
        p = TABLE_PREFIX
        out = {
            p + "version": np.array([self.version], np.int32),
            p + "precision": np.array([self.precision], np.int32),
            p + "prior.cdf": self.prior_cdf.astype(np.int32),
            p + "prior.lo": self.prior_lo.astype(np.int32),
            p + "prior.len": self.prior_len.astype(np.int32),
            p + "gauss.cdf": self.gauss_cdf.astype(np.int32),
            p + "gauss.radius": self.gauss_radius.astype(np.int32),
            p + "hs.shift": self.shifts.astype(np.int32),
            p + "hs.act_max": self.act_max.astype(np.int64),
            p + "hs.thresholds": self.thresholds.astype(np.int64),
            p + "hs.log2_scale": np.array([self.log2_scale], np.int32),
        }
        for i in range(3):
            out[p + f"hs.weight{i}"] = self.weights[i].astype(np.int32)
            out[p + f"hs.bias{i}"] = self.biases[i].astype(np.int64)
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], source: str = "tables") -> CodecTables:
        """Build from a dict holding ``tables.*`` keys (other keys are ignored); validates."""
        t = {k[len(TABLE_PREFIX):]: v for k, v in tensors.items() if k.startswith(TABLE_PREFIX)}
        if not t:
            raise TablesError(_missing_tables_message(source))
        missing = [k for k in _REQUIRED if k not in t]
        if missing:
            raise TablesError(f"{source}: codec tables incomplete, missing {', '.join(TABLE_PREFIX + m for m in missing)}; "
                              "rebuild them with `ilc-export tables`")
        version = int(np.asarray(t["version"]).reshape(-1)[0])
        if version != TABLES_VERSION:
            raise TablesError(f"{source}: codec tables version {version} is not supported (this code reads version {TABLES_VERSION})")
        tab = cls(
            precision=int(np.asarray(t["precision"]).reshape(-1)[0]),
            prior_cdf=np.asarray(t["prior.cdf"]),
            prior_lo=np.asarray(t["prior.lo"]),
            prior_len=np.asarray(t["prior.len"]),
            gauss_cdf=np.asarray(t["gauss.cdf"]),
            gauss_radius=np.asarray(t["gauss.radius"]),
            weights=tuple(np.asarray(t[f"hs.weight{i}"]) for i in range(3)),
            biases=tuple(np.asarray(t[f"hs.bias{i}"]) for i in range(3)),
            shifts=np.asarray(t["hs.shift"]),
            act_max=np.asarray(t["hs.act_max"]),
            thresholds=np.asarray(t["hs.thresholds"]),
            log2_scale=int(np.asarray(t["hs.log2_scale"]).reshape(-1)[0]),
            version=version,
        )
        tab.validate(source)
        return tab

    @classmethod
    def load(cls, path: str | Path) -> CodecTables:
        """Read and validate the ``tables.*`` tensors of a safetensors checkpoint."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                keys = [k for k in f.keys() if k.startswith(TABLE_PREFIX)]  # noqa: SIM118 - safe_open is not a dict
                tensors = {k: f.get_tensor(k) for k in keys}
        except Exception as e:
            raise TablesError(f"{path}: cannot read safetensors file: {e}") from e
        return cls.from_tensors(tensors, source=str(path))

    # validation -------------------------------------------------------------
    def validate(self, source: str = "tables") -> None:
        """Check dtypes, shapes, CDF monotonicity and the float64 exactness bound."""

        def bad(msg):
            raise TablesError(f"{source}: invalid codec tables: {msg}")

        def need_int(name, a, ndim):
            if a.dtype.kind not in "iu":
                bad(f"{name} has dtype {a.dtype}, expected an integer type")
            if a.ndim != ndim:
                bad(f"{name} has {a.ndim} dims, expected {ndim}")

        p = self.precision
        if not 8 <= p <= 24:
            bad(f"precision {p} outside 8..24")
        for name, a, nd in [("prior.cdf", self.prior_cdf, 2), ("prior.lo", self.prior_lo, 1),
                            ("prior.len", self.prior_len, 1), ("gauss.cdf", self.gauss_cdf, 2),
                            ("gauss.radius", self.gauss_radius, 1), ("hs.shift", self.shifts, 1),
                            ("hs.act_max", self.act_max, 1), ("hs.thresholds", self.thresholds, 1)]:
            need_int(name, a, nd)
        nh = self.prior_lo.shape[0]
        if nh < 1 or self.prior_len.shape[0] != nh or self.prior_cdf.shape[0] != nh:
            bad("prior tables disagree on the number of channels")
        if (self.prior_len < 2).any() or (self.prior_len + 1 > self.prior_cdf.shape[1]).any():
            bad("prior.len out of range")
        lo = self.prior_lo.astype(np.int64)
        if (np.abs(lo) > 2**20).any() or (np.abs(lo + self.prior_len) > 2**20).any():
            bad("prior support beyond +-2**20")
        self._check_cdf_rows("prior.cdf", self.prior_cdf, self.prior_len.astype(np.int64), bad)
        s = self.gauss_radius.shape[0]
        if s < 2 or self.gauss_cdf.shape[0] != s:
            bad("gauss tables disagree on the number of scales")
        if (self.gauss_radius < 0).any() or (2 * self.gauss_radius.astype(np.int64) + 4 > self.gauss_cdf.shape[1]).any():
            bad("gauss.radius out of range")
        self._check_cdf_rows("gauss.cdf", self.gauss_cdf, 2 * self.gauss_radius.astype(np.int64) + 3, bad)
        # integer network
        cin = nh
        for i in range(3):
            w, b = self.weights[i], self.biases[i]
            need_int(f"hs.weight{i}", w, 4)
            need_int(f"hs.bias{i}", b, 1)
            if w.shape[1:] != (cin, 3, 3):
                bad(f"hs.weight{i} has shape {w.shape}, expected (*, {cin}, 3, 3)")
            if b.shape != (w.shape[0],):
                bad(f"hs.bias{i} has shape {b.shape}, expected ({w.shape[0]},)")
            if i < 2:
                if w.shape[0] != 4 * nh:
                    bad(f"hs.weight{i} must have {4 * nh} output channels (depth-to-space by 2)")
                cin = nh
        if self.shifts.shape != (2,) or self.act_max.shape != (2,):
            bad("hs.shift and hs.act_max must hold 2 entries")
        if (self.shifts < 0).any() or (self.shifts > 62).any():
            bad("hs.shift out of range 0..62")
        if (self.act_max < 1).any() or (self.act_max >= 2**24).any():
            bad("hs.act_max out of range 1..2**24-1")
        if self.thresholds.shape != (s - 1,):
            bad(f"hs.thresholds has shape {self.thresholds.shape}, expected ({s - 1},)")
        if (np.diff(self.thresholds) < 0).any() or (np.abs(self.thresholds) >= EXACT_FLOAT64).any():
            bad("hs.thresholds must be nondecreasing and below 2**53 in magnitude")
        for i, bound in enumerate(self.accumulator_bounds()):
            if bound >= EXACT_FLOAT64:
                bad(f"layer {i} of the integer net can reach |acc| = {bound} >= 2**53 (not exact in float64)")

    def accumulator_bounds(self) -> list[int]:
        """Worst-case |partial sum| per layer: in_max * sum|W[o]| + |b[o]|, maximised over o.

        Exactness argument: every product W*a is an integer with |W*a| <= |W|*in_max and
        every partial sum of a dot product (in any order, bias included) is bounded by
        the sum of absolute values, so if this bound is < 2**53 every intermediate value
        is an integer representable in float64 and every float64 operation is exact.
        """
        in_max = [self.w_bound, int(self.act_max[0]), int(self.act_max[1])]
        out = []
        for i in range(3):
            w = self.weights[i].astype(np.int64).reshape(self.weights[i].shape[0], -1)
            # sum in Python ints to avoid int64 overflow on hostile tables
            sums = [int(x) for x in np.abs(w).sum(axis=1)] if np.abs(w).max(initial=0) < 2**31 else [2**63]
            b = [abs(int(x)) for x in self.biases[i]]
            out.append(max(in_max[i] * s + bb for s, bb in zip(sums, b)))
        return out

    def _check_cdf_rows(self, name, cdf, lengths, bad):
        n_cols = cdf.shape[1]
        c = cdf.astype(np.int64)
        cols = np.arange(n_cols)[None, :]
        inside = cols <= lengths[:, None]
        top = c[np.arange(c.shape[0]), lengths]
        if (c[:, 0] != 0).any():
            bad(f"{name} rows must start at 0")
        if (top != 2**self.precision).any():
            bad(f"{name} rows must end at 2**{self.precision}")
        d = np.diff(c, axis=1)
        step_inside = cols[:, 1:] <= lengths[:, None]
        if (d[step_inside] < 1).any():
            bad(f"{name} is not strictly increasing (a symbol has zero probability)")
        if ((c != top[:, None]) & ~inside).any():
            bad(f"{name} padding must repeat the final value")

    def __post_init__(self):
        self.weights = tuple(self.weights)
        self.biases = tuple(self.biases)
