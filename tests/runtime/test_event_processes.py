"""Events in flight in worker processes: the same results, in order, with the same errors as one at a time.

(An event's own error coming back in its turn is tested for both executors in test_pipeline.py.)"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from trackserve.errors import InputError, MemoryLimitError, WorkerError
from trackserve.events.trackml import read_event
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.memory import _gib
from trackserve.runtime import pipeline as pipeline_module
from trackserve.paths import DEFAULT_BUNDLE
from trackserve.runtime.pipeline import Pipeline

from ..conftest import SAMPLE_EVENT, LazyEvents, mixed_size_events

ONE_THREAD = {"intra_op_threads": 1, "graph_threads": 1}


@pytest.fixture(scope="module")
def alone(tiny_bundle):
    return Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD))


@pytest.fixture(scope="module")
def sample_features(alone):
    return alone.event_features(read_event(SAMPLE_EVENT, parts=()))


@pytest.fixture(scope="module")
def in_processes(tiny_bundle):
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes"))
    yield pipeline
    pipeline.close()


def test_results_come_back_in_order_and_equal_to_one_at_a_time(alone, in_processes, sample_features):
    events = mixed_size_events(sample_features)
    expected = [alone.run(f) for f in events]
    lazily = LazyEvents(events)
    results = in_processes.run_many(lazily)
    first = next(results)
    assert len(lazily.consumed) <= 3  # the two workers' events and one handed over ahead
    got = [first] + list(results)
    assert len(got) == len(expected)
    for result, want in zip(got, expected):
        assert np.array_equal(result.labels, want.labels)
        assert result.num_edges == want.num_edges
        assert set(result.timings) == set(want.timings)
    # The workers stay up for the next call.
    processes = in_processes._processes
    assert [r.num_hits for r in in_processes.run_many([sample_features[:10]])] == [10]
    assert in_processes._processes is processes


def test_memory_limit_error_survives_the_trip_between_processes():
    error = MemoryLimitError("needs 3 GB", needed=3e9, limit=2**31)
    back = pickle.loads(pickle.dumps(error))
    assert (type(back), str(back), back.needed, back.limit) == (MemoryLimitError, "needs 3 GB", 3e9, 2**31)


def test_an_event_too_large_for_its_share_runs_alone_and_one_too_large_for_all_is_refused(
        tiny_bundle, alone, sample_features):
    big = sample_features
    result = alone.run(big)
    model, graph = alone.memory, result.num_edges["graph"]
    needed = max(big.shape[0] * model.bytes_per_hit + graph * model.bytes_per_graph_edge
                 + graph * model.bytes_per_filter_edge,
                 big.shape[0] * (model.bytes_per_hit + model.bytes_per_gnn_hit)
                 + result.num_edges["filter"] * model.bytes_per_gnn_edge)
    events = [big[:30], big, big[:50]]
    with Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes",
                                                    memory_limit_bytes=int(needed) + 1)) as fits:
        got = [r.labels for r in fits.run_many(events)]
        assert fits._alone is not None  # the whole event ran in this process, alone
    assert len(got) == len(events)
    for labels, features in zip(got, events):
        assert np.array_equal(labels, alone.run(features).labels)
    with Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes",
                                                    memory_limit_bytes=int(needed) - 1)) as tight:
        results = tight.run_many(events)
        assert next(results).num_hits == 30
        with pytest.raises(MemoryLimitError, match="memory limit") as refused:
            next(results)
        assert refused.value.needed > int(needed) - 1
        # refused for the whole limit, which the message quotes (not the share it had in flight)
        assert refused.value.limit == int(needed) - 1
        assert f"more than the memory limit of {_gib(int(needed) - 1)};" in str(refused.value)


def test_a_worker_that_dies_gives_a_clear_error_and_the_pipeline_starts_new_ones(tiny_bundle, sample_features):
    # events large enough (seconds each) to be in flight when the workers die
    rng = np.random.default_rng(1)
    large = np.concatenate([sample_features + rng.normal(0, 1e-3, sample_features.shape).astype(np.float32)
                            for _ in range(12)])
    with Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes")) as pipeline:
        results = pipeline.run_many([sample_features[:30], large, large, large])
        assert next(results).num_hits == 30
        for pid in list(pipeline._processes._pool._processes):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match="event worker process stopped unexpectedly"):
            list(results)
        assert [r.num_hits for r in pipeline.run_many([sample_features[:20]] * 3)] == [20, 20, 20]


def test_close_stops_the_workers(tiny_bundle, sample_features):
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes"))
    assert [r.num_hits for r in pipeline.run_many([sample_features[:10]] * 2)] == [10, 10]
    workers = list(pipeline._processes._pool._processes.values())
    pipeline.close()
    assert pipeline._processes is None
    assert all(not worker.is_alive() for worker in workers)


def test_an_unknown_executor_is_refused():
    with pytest.raises(InputError, match="event_executor must be one of threads, processes; got 'fibers'"):
        RuntimeConfig(event_executor="fibers")


def test_a_worker_that_died_while_idle_is_replaced_without_an_error(tiny_bundle, sample_features):
    with Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes")) as pipeline:
        assert [r.num_hits for r in pipeline.run_many([sample_features[:10]] * 2)] == [10, 10]
        pool = pipeline._processes._pool
        victim = next(iter(pool._processes.values()))
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=30)
        deadline = time.monotonic() + 30
        while not pool._broken and time.monotonic() < deadline:  # the pool notices the death
            time.sleep(0.05)
        # nothing was in flight: the next events go to new workers, no error
        assert [r.num_hits for r in pipeline.run_many([sample_features[:20]] * 3)] == [20, 20, 20]


def test_close_without_waiting_stops_workers_in_the_middle_of_an_event(tiny_bundle, sample_features):
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes"))
    assert [r.num_hits for r in pipeline.run_many([sample_features[:10]] * 2)] == [10, 10]
    workers = list(pipeline._processes._pool._processes.values())
    results = pipeline.run_many([sample_features] * 50)
    next(results)
    start = time.monotonic()
    results.close()
    pipeline.close(wait=False)
    assert time.monotonic() - start < 10
    assert all(not worker.is_alive() for worker in workers)


def test_close_without_waiting_ends_even_with_half_a_result_in_the_pipe(tiny_bundle, sample_features):
    # A worker killed while sending its result leaves half a message: the pool's manager
    # thread waited for the rest for ever, and close() with it.
    import struct

    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes"))
    assert [r.num_hits for r in pipeline.run_many([sample_features[:10]] * 2)] == [10, 10]
    pool = pipeline._processes._pool
    os.write(pool._result_queue._writer.fileno(), struct.pack("!i", 100_000))  # a length, and no message
    finished = threading.Event()
    threading.Thread(target=lambda: (pipeline.close(wait=False), finished.set()), daemon=True).start()
    assert finished.wait(timeout=60), "close(wait=False) hung on half a result"


def test_one_pool_whichever_threads_start_it(tiny_bundle, sample_features):
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes"))
    barrier = threading.Barrier(3)
    outcomes = []

    def run():
        barrier.wait()
        outcomes.append([r.num_hits for r in pipeline.run_many([sample_features[:15]] * 3)])

    threads = [threading.Thread(target=run) for _ in range(3)]
    created = []
    original = pipeline_module.EventProcesses

    class Counted(original):
        def __init__(self, *args, **kwargs):
            created.append(1)
            super().__init__(*args, **kwargs)

    pipeline_module.EventProcesses = Counted
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        pipeline_module.EventProcesses = original
    workers = list(pipeline._processes._pool._processes.values())
    pipeline.close()
    assert outcomes == [[15, 15, 15]] * 3 and len(created) == 1
    assert all(not worker.is_alive() for worker in workers)


def test_workers_ignore_ctrl_c_and_exit_when_their_parent_is_killed(tiny_bundle, tmp_path):
    # A parent that starts two workers, prints their process ids and waits to be killed.
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time, numpy as np\n"
        "from trackserve.runtime.config import RuntimeConfig\n"
        "from trackserve.runtime.pipeline import Pipeline\n"
        "if __name__ == '__main__':\n"
        f"    p = Pipeline({str(tiny_bundle)!r}, config=RuntimeConfig(intra_op_threads=1, graph_threads=1,"
        " event_workers=2, event_executor='processes'))\n"
        "    list(p.run_many([np.random.default_rng(0).random((20, 3), dtype=np.float32)] * 2))\n"
        "    print(' '.join(map(str, p._processes._pool._processes)), flush=True)\n"
        "    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGINT)  # Ctrl-C reaches the workers too: they leave it to the parent
        time.sleep(0.5)
        assert all(_alive(pid) for pid in pids)
    finally:
        parent.kill()  # no clean-up runs in the parent
        parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)


def test_a_pipeline_pickles_as_its_bundle_device_and_config(tiny_bundle, sample_features):
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes"))
    copy = pickle.loads(pickle.dumps(pipeline))
    assert copy.config == pipeline.config and copy.device == pipeline.device
    assert np.array_equal(copy.run(sample_features[:40]).labels, pipeline.run(sample_features[:40]).labels)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_worker_that_died_while_handing_back_a_result_is_not_waited_for(tiny_bundle, monkeypatch):
    # A worker killed while sending its result leaves the pool's reader waiting for the rest of
    # the message, and the event's future never finishes: the wait checks that the workers live.
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    class DeadWorkers:
        closed_waiting = None

        def a_worker_died(self):
            return True

        def close(self, *, wait=True):
            DeadWorkers.closed_waiting = wait

    monkeypatch.setattr(pipeline_module, "WORKER_CHECK_SECONDS", 0.01)
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes"))
    pipeline._processes = DeadWorkers()
    with pytest.raises(BrokenProcessPool, match="a worker process died while handing back a result"):
        pipeline._result_of(Future())  # never finished
    assert DeadWorkers.closed_waiting is False and pipeline._processes is None


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_results_before_a_failing_source_are_yielded_before_its_error(tiny_bundle, sample_features, executor):
    def source():
        for number in range(8):
            if number == 5:
                raise RuntimeError("the source broke")
            yield sample_features[:10 + number]

    got = []
    with Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor=executor)) as pipeline:
        with pytest.raises(RuntimeError, match="the source broke"):
            for result in pipeline.run_many(source()):
                got.append(result.num_hits)
    assert got == [10, 11, 12, 13, 14]


def test_a_worker_that_died_while_idle_is_replaced_before_the_next_events(tiny_bundle, sample_features):
    with Pipeline(tiny_bundle, config=RuntimeConfig(**ONE_THREAD, event_workers=2, event_executor="processes")) as pipeline:
        assert [r.num_hits for r in pipeline.run_many([sample_features[:10]] * 2)] == [10, 10]
        victim = next(iter(pipeline._processes._pool._processes.values()))
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)  # dead, and nothing of the pipeline in flight
        old = pipeline._processes
        assert old.a_worker_died() and not old.busy()
        # As if the pool had not noticed the death yet: it would take the event and never run it.
        old._pool.submit = lambda *args: pytest.fail("an event was handed to a pool with a dead worker")
        assert [r.num_hits for r in pipeline.run_many([sample_features[:20]] * 3)] == [20, 20, 20]
        assert pipeline._processes is not old


def test_a_dead_worker_counts_as_dead_while_another_thread_is_reaping_it(monkeypatch):
    """The pool's manager thread reaps a dead worker too: between its wait and its record of the
    status, ``exitcode`` asked from another thread is None. The death is read from the
    process's sentinel instead (ready once the process has exited)."""
    from types import SimpleNamespace

    from trackserve.runtime.event_processes import EventProcesses

    read_end, write_end = os.pipe()
    alive_read, alive_write = os.pipe()
    try:
        os.close(write_end)  # the worker has exited: its end of the sentinel pipe is closed
        dead = SimpleNamespace(exitcode=None, sentinel=read_end)  # reaped by the other thread, status not yet recorded
        alive = SimpleNamespace(exitcode=None, sentinel=alive_read)
        processes = object.__new__(EventProcesses)
        processes._pool = SimpleNamespace(_processes={1: alive})
        assert not processes.a_worker_died()
        processes._pool = SimpleNamespace(_processes={1: alive, 2: dead})
        assert processes.a_worker_died()
        processes._pool = SimpleNamespace(_processes=None)  # a pool shut down
        assert not processes.a_worker_died()
    finally:
        for fd in (read_end, alive_read, alive_write):
            os.close(fd)


def test_a_pipeline_serves_forked_and_spawned_children_and_lets_them_exit(tmp_path):
    # Three hangs: a forked child used a pipeline whose parent had run an event (its part threads
    # and ONNX Runtime sessions stay in the parent) and waited for ever; a forked child's
    # run_many with processes handed its event to the parent's copied pool, which runs nothing
    # in the child; a spawned child holding a pipeline with workers never exited without close().
    script = tmp_path / "children.py"
    script.write_text(
        "import multiprocessing as mp, sys\n"
        "from trackserve.events.trackml import read_event\n"
        "from trackserve.runtime.config import RuntimeConfig\n"
        "from trackserve.runtime.pipeline import Pipeline\n"
        "def one(pipeline, events, queue): queue.put([pipeline.run(f).labels.tolist() for f in events])\n"
        "def many(pipeline, events, queue): queue.put([r.labels.tolist() for r in pipeline.run_many(events)])\n"
        "if __name__ == '__main__':\n"
        f"    bundle, event = {str(DEFAULT_BUNDLE)!r}, {str(SAMPLE_EVENT)!r}\n"
        "    threads = Pipeline(bundle, config=RuntimeConfig(intra_op_threads=2, graph_threads=2))\n"
        "    features = threads.event_features(read_event(event))\n"
        "    events = [features[:3000], features[2000:]]\n"
        "    expected = [threads.run(f).labels.tolist() for f in events]  # the parent's part threads exist now\n"
        "    processes = Pipeline(bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, event_workers=2,"
        " event_executor='processes'))\n"
        "    assert [r.labels.tolist() for r in processes.run_many(events)] == expected  # its workers are up\n"
        "    for method, target, pipeline in [('fork', one, threads), ('fork', many, processes),"
        " ('spawn', many, processes)]:\n"
        "        context = mp.get_context(method)\n"
        "        queue = context.Queue()\n"
        "        child = context.Process(target=target, args=(pipeline, events, queue))\n"
        "        child.start()\n"
        "        try:\n"
        "            same = queue.get(timeout=60) == expected\n"
        "            child.join(60)\n"
        "        finally:  # no child left behind, whatever happened\n"
        "            if child.is_alive():\n"
        "                child.kill()\n"
        "        print(method, target.__name__, same, child.exitcode, flush=True)\n"
        "    print('parent', [r.labels.tolist() for r in processes.run_many(events)] == expected, flush=True)\n"
        "    processes.close()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:4] == ["fork one True 0", "fork many True 0", "spawn many True 0", "parent True"]
