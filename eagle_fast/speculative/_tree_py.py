"""NumPy fallback of the row top-k kernel in src/_tree_kernel.pyx (same API
and results: each row's k largest entries, best first, ties to the lower
index; a NaN anywhere is reported, not ranked)."""

from __future__ import annotations

import numpy as np

SIMD = "none"
COMPILE_FLAGS = ""
COMPILER = "none"


def row_topk(rows: np.ndarray, k: int, out_ids: np.ndarray, out_vals: np.ndarray) -> int:
    """Fill ``out_ids`` (r, k) int64 and ``out_vals`` (r, k) with each row's
    top k; return 1 if ``rows`` holds NaN (outputs then unspecified), else 0."""
    if np.isnan(rows).any():
        return 1
    r, v = rows.shape
    if k == v:
        idx = np.argsort(-rows, axis=1, kind="stable")
    else:
        part = np.argpartition(rows, v - k, axis=1)[:, v - k:]
        vals = np.take_along_axis(rows, part, axis=1)
        thresh = vals.min(axis=1)
        # argpartition picks an arbitrary subset of the entries tied with the
        # k-th largest; redo the rows where that subset is not the lowest ids.
        eq_inside = (vals == thresh[:, None]).sum(axis=1)
        eq_total = (rows == thresh[:, None]).sum(axis=1)
        for i in np.flatnonzero(eq_total != eq_inside):
            above = np.flatnonzero(rows[i] > thresh[i])
            equal = np.flatnonzero(rows[i] == thresh[i])[:k - above.shape[0]]
            part[i] = np.concatenate((above, equal))
            vals[i] = rows[i, part[i]]
        order = np.lexsort((part, -vals), axis=-1)
        idx = np.take_along_axis(part, order, axis=1)
    out_ids[...] = idx
    out_vals[...] = np.take_along_axis(rows, idx, axis=1)
    return 0
