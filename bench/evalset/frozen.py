"""The frozen case lists: ``(seed, healthy)`` pairs, fixed before any training.

- ``eval``: 32 cases with nodules (seeds 9000-9031) and 24 without (9100-9123);
- ``smoke``: two small cases for tests (seeds 9900 with nodules, 9901 healthy),
  generated at a small matrix by the tests.
"""

from __future__ import annotations

EVAL_NODULE_SEEDS = tuple(range(9000, 9032))
EVAL_HEALTHY_SEEDS = tuple(range(9100, 9124))
SMOKE = ((9900, False), (9901, True))
SMOKE_MATRIX = 160


def frozen_set(kind: str) -> list[tuple[int, bool]]:
    """The frozen list of ``(seed, healthy)`` for ``kind``.

    Parameters
    ----------
    kind : str
        ``"eval"`` or ``"smoke"``.

    Returns
    -------
    list of tuple
        ``(seed, healthy)`` pairs, nodule cases first.

    Raises
    ------
    ValueError
        For an unknown kind.
    """
    if kind == "eval":
        return [(s, False) for s in EVAL_NODULE_SEEDS] + [(s, True) for s in EVAL_HEALTHY_SEEDS]
    if kind == "smoke":
        return list(SMOKE)
    raise ValueError(f"unknown set {kind!r}: use 'eval' or 'smoke'")
