"""Reading a ServeGen-format trace directory: one `chunk-<id>-trace.csv` per client (= per model).

Each row is a 600-second window: `ts_seconds,rate_req_per_s,cv_of_interarrival,dist_name,param1,param2`
with the fitted inter-arrival distribution (`Gamma` shape/scale or `Weibull` shape/scale, scipy's
parametrisation) or an empty name when the rate is 0.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

WINDOW_S = 600.0
_CHUNK = re.compile(r"chunk-(.+)-trace\.csv$")

DIST_NONE, DIST_GAMMA, DIST_WEIBULL = 0, 1, 2


class TraceError(ValueError):
    """A trace directory or file is not in the expected format."""


@dataclass(frozen=True)
class ModelTrace:
    """One client's windows, as parallel arrays."""

    name: str
    ts_s: npt.NDArray[np.float64]
    rate_per_s: npt.NDArray[np.float64]
    dist: npt.NDArray[np.int8]
    shape: npt.NDArray[np.float64]
    scale: npt.NDArray[np.float64]

    @property
    def end_s(self) -> float:
        return float(self.ts_s[-1] + WINDOW_S) if self.ts_s.size else 0.0


def load_model_trace(path: Path, name: str | None = None) -> ModelTrace:
    """Read one chunk file."""
    ts: list[float] = []
    rate: list[float] = []
    dist: list[int] = []
    shape: list[float] = []
    scale: list[float] = []
    with path.open(newline="") as fh:
        for row in csv.reader(fh):
            # The header line is optional (the ServeGen traces have none).
            if not row or row[0].strip() == "ts_seconds":
                continue
            if len(row) < 6:
                raise TraceError(f"{path}: expected 6 columns, got {row!r}")
            ts.append(float(row[0]))
            r = float(row[1])
            rate.append(r)
            kind = row[3].strip().lower()
            if r <= 0 or not kind:
                dist.append(DIST_NONE)
            elif kind == "gamma":
                dist.append(DIST_GAMMA)
            elif kind == "weibull":
                dist.append(DIST_WEIBULL)
            else:
                raise TraceError(f"{path}: unknown distribution {row[3]!r}")
            shape.append(float(row[4] or 0.0))
            scale.append(float(row[5] or 0.0))
    if name is None:
        m = _CHUNK.search(path.name)
        name = m.group(1) if m else path.stem
    return ModelTrace(
        name=name,
        ts_s=np.asarray(ts, dtype=np.float64),
        rate_per_s=np.asarray(rate, dtype=np.float64),
        dist=np.asarray(dist, dtype=np.int8),
        shape=np.asarray(shape, dtype=np.float64),
        scale=np.asarray(scale, dtype=np.float64),
    )


def _sort_key(path: Path) -> tuple[int, str]:
    m = _CHUNK.search(path.name)
    ident = m.group(1) if m else path.stem
    return (int(ident), "") if ident.isdigit() else (1 << 30, ident)


def load_trace_dir(trace_dir: Path) -> list[ModelTrace]:
    """Every `chunk-<id>-trace.csv` in `trace_dir`, ordered by id."""
    files = sorted(trace_dir.glob("chunk-*-trace.csv"), key=_sort_key)
    if not files:
        raise TraceError(f"{trace_dir}: no chunk-<id>-trace.csv files")
    return [load_model_trace(f) for f in files]
