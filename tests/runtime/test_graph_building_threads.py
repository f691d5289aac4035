"""Graph building on one thread uses no other thread: no BLAS pool woken by its products.

numpy's OpenBLAS runs a product on its own thread pool above a size threshold (a
matrix-vector product from 9,216 elements), and the pool's threads then spin for
milliseconds: beside the runtime's network stages that took a core. The test reads the
CPU time of every other thread of the process from Linux's ``/proc`` around many calls.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from trackserve.runtime import graph_building
from trackserve.runtime.graph_building import build_graph

TASKS = Path("/proc/self/task")


def other_threads_cpu_ticks() -> int:
    """User plus system CPU time (clock ticks) of every thread of this process but the calling one."""
    me, total = threading.get_native_id(), 0
    for task in TASKS.iterdir():
        if int(task.name) == me:
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total


@pytest.mark.skipif(not TASKS.is_dir(), reason="reads each thread's CPU time from Linux's /proc/self/task")
def test_one_thread_graph_building_leaves_the_other_threads_idle():
    rng = np.random.default_rng(3)
    # 3,000 hits in 8 dimensions, about 10 neighbours each, the cap far away: the path that
    # projects the hits on a sample's principal axes (a 3,000-row sample, 24,000 elements).
    points = rng.normal(size=(3_000, 8)).astype(np.float32)
    assert not graph_building._cap_binds(points, np.float32(1.5), 100)
    counts = []
    build_graph(points, 1.5, 100, threads=1)  # any lazy start-up before measuring
    before = other_threads_cpu_ticks()
    for _ in range(30):
        counts.append(build_graph(points, 1.5, 100, threads=1).shape[1])
    spent = other_threads_cpu_ticks() - before
    assert min(counts) == max(counts) > 3 * 3_000  # over 6 neighbours per hit
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    # A spinning pool costs about a millisecond per call here; allow two ticks of noise.
    assert spent <= 2, f"other threads used {spent / ticks_per_second * 1e3:.0f} ms of CPU during 30 graph builds"
