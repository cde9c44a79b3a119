"""How many threads a kernel call gets: one rule for every compiled kernel.

A call's *work* is the bytes of weights its products stream, counted once per
state (``weight bytes x states``; attention: the key and value bytes its
queries read).  Each thread must get at least :data:`PARALLEL_MIN_WORK_BYTES`
of it, so small calls run serially, with no OpenMP region at all, and a
medium call on a many-core machine takes only some of the cores.  Used by
``DraftHead.predict``, ``MedusaHeads.predict``, the EAGLE drafters' layer
products and attention (``eagle_fast.models.eagle``) and
``eagle_draft_from_hidden`` (whose compiled fast path applies the same
formula).  The thread count never changes a result: every dot product is
computed the same way in any chunk of rows.

Why the threshold is that high (README, "Threads and a busy machine"): every
parallel region ends in a barrier that waits for its slowest thread.  On a
quiet machine two threads start to pay from about 256-512 KiB of work
(saving some microseconds), but when another process keeps a core busy,
GNU OpenMP's spinning worker is descheduled and each region waits for a
whole time slice: 8-16 ms measured, against 20-400 us serially.  8 MiB per
thread (two threads from 16 MiB, about 0.4 ms serially) keeps every product
of a small drafter serial -- where two threads saved nothing measurable on a
quiet machine and cost 36x on a busy one -- and 7B-size heads (hundreds of
MB) parallel.
"""

from __future__ import annotations

PARALLEL_MIN_WORK_BYTES = 8 << 20


def team_size(work_bytes: int, n_threads: int) -> int:
    """Threads for a call of ``work_bytes`` with up to ``n_threads``: at
    least :data:`PARALLEL_MIN_WORK_BYTES` per thread, and at least one (a
    threshold of 0 gives every call ``n_threads``)."""
    min_bytes = PARALLEL_MIN_WORK_BYTES
    if n_threads <= 1 or work_bytes < 2 * min_bytes:
        return 1
    if min_bytes <= 0:
        return n_threads
    return int(min(n_threads, work_bytes // min_bytes))
