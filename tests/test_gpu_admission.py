"""GPU admission: runs at once and their declared memory (the gate itself; the CUDA runs are gated by it)."""

from __future__ import annotations

import threading

from dicomnode.jobs.gpu import GPUAdmission
from tests.helpers import wait_for


def run_all(gate: GPUAdmission, needs: list[int], admitted: int) -> int:
    """Run one thread per need, hold them until ``admitted`` are inside; return the most seen inside at once."""
    inside, peak, tried, lock = [0], [0], [0], threading.Lock()
    release = threading.Event()

    def job(need: int) -> None:
        with lock:
            tried[0] += 1
        with gate.admit(need):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            release.wait(10)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=job, args=(n,)) for n in needs]
    for t in threads:
        t.start()
    wait_for(lambda: tried[0] == len(needs) and inside[0] == admitted, 10, what=f"{admitted} run(s) admitted")
    release.set()
    for t in threads:
        t.join(20)
    return peak[0]


def test_concurrency_is_capped() -> None:
    assert run_all(GPUAdmission(slots=2), [0, 0, 0, 0], admitted=2) == 2


def test_declared_memory_must_fit_the_budget() -> None:
    assert run_all(GPUAdmission(slots=4, budget_mb=10_000), [6_000, 6_000, 6_000], admitted=1) == 1
    assert run_all(GPUAdmission(slots=4, budget_mb=10_000), [3_000, 3_000, 3_000], admitted=3) == 3


def test_a_model_larger_than_the_budget_still_runs_alone() -> None:
    gate = GPUAdmission(slots=2, budget_mb=1_000)
    with gate.admit(5_000):
        assert gate.running == 1
    assert gate.running == 0 and gate.in_use_mb == 0
