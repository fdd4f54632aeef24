"""Where two sampled curves cross: the one crossing finder behind the theoretical and measured κ*."""

from __future__ import annotations

import numpy as np


def sign_changes(d: np.ndarray, downward: bool = False) -> np.ndarray:
    """Indices i where d changes sign between samples i and i+1 (or d[i] == 0), both finite; downward: only from
    d[i] >= 0 to d[i+1] < 0 (INT stops beating FP)."""
    d = np.asarray(d, np.float64)
    a, b = d[:-1], d[1:]
    finite = np.isfinite(a) & np.isfinite(b)
    change = (a >= 0) & (b < 0) if downward else (np.sign(a) * np.sign(b) < 0) | (a == 0)
    return np.flatnonzero(finite & change)


def interpolated_roots(x: np.ndarray, d: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(roots, fractions t): the zero of the line through (x[i], d[i]) and (x[i+1], d[i+1]) for each i in idx."""
    x, d = np.asarray(x, np.float64), np.asarray(d, np.float64)
    t = d[idx] / (d[idx] - d[idx + 1])
    return x[idx] + t * (x[idx + 1] - x[idx]), t


def first_crossing(x: np.ndarray, d: np.ndarray) -> float:
    """First x where the sampled difference d (INT minus FP) goes from >= 0 to < 0, by linear interpolation over
    the finite samples (non-finite ones, e.g. sparse bins, are left out); nan if it never does."""
    ok = np.isfinite(d)
    x, d = np.asarray(x, np.float64)[ok], np.asarray(d, np.float64)[ok]
    idx = sign_changes(d, downward=True)
    return float(interpolated_roots(x, d, idx[:1])[0][0]) if idx.size else float("nan")
