"""Medusa's published tree shapes, as data (FasterDecoding/Medusa,
``medusa/model/medusa_choices.py``).

A choice ``(c0, c1, ...)`` is the node reached by taking the c0-th ranked token
of Medusa head 0, then the c1-th of head 1, ... (see
:class:`eagle_fast.speculative.TreeTemplate`). The tuples are in the order
Medusa lists them; :meth:`TreeTemplate.from_medusa_choices` sorts them.
"""

from __future__ import annotations

__all__ = ["MC_SIM_7B_63", "MEDUSA_CHOICES"]

# Medusa's default tree (63 choices, 64 nodes with the root, depth 4, ranks < 10).
MC_SIM_7B_63: tuple[tuple[int, ...], ...] = (
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,),
    (0, 4), (2, 0), (0, 5), (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,),
    (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,), (9,), (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3),
    (4, 0), (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0), (0, 1, 1), (0, 0, 6), (0, 3, 0),
    (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0), (1, 4), (7, 0),
    (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1), (0, 2, 1),
    (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
)

# Shipped trees by name: TreeTemplate.from_medusa_choices("mc_sim_7b_63").
MEDUSA_CHOICES: dict[str, tuple[tuple[int, ...], ...]] = {
    "mc_sim_7b_63": MC_SIM_7B_63,
}
