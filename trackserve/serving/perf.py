"""A load generator for a served trackserve model, in the manner of Triton's ``perf_analyzer``.

For each concurrency level N of a sweep, N clients send events (one request = one event,
cycling over the given events) back to back to a running server, and the level reports
the throughput (answered inferences per second), the latency percentiles, the number of
requests and the errors, with the first distinct error messages.

Modes:

* ``sync``: one thread per client, each with its own connection
  (:class:`~trackserve.serving.client.TritonClient`), sending its next request as soon
  as the previous one is answered;
* ``async``: one asyncio loop with N requests in flight (``tritonclient.grpc.aio`` over one
  channel; ``tritonclient.http.aio`` over its pool of connections).

Timeline of one level: the clients connect and build their requests, then run for
``warmup_s`` and until every client has had one request answered (not measured: at a high
concurrency the server's queue is filling until then), then for the measurement window
``window_s``; then they
stop sending and the requests still in flight are finished. A request belongs to the
phase in which it completed. Throughput counts the requests answered in the window,
divided by the window; latencies are those of the requests answered in the window
(percentiles by nearest rank, so each is an observed latency: the p-th is the value of rank
ceil(p/100 · n); perf_analyzer takes rank round(p/100 · (n-1)) + 1, the same or its
neighbour). A window that saw fewer than :data:`FEW_REQUESTS` answered requests gives
rough figures (throughput in steps of 1/window; and below 100 requests p99 is the largest
latency): the level is flagged ``few_requests`` and ``trackserve perf`` says so.

No request is lost silently: each client counts a request when it sends it and records
it as answered (labels checked: int64, one per hit) or failed with its message, whatever
the exception; a request counted but not recorded when the level ends (still in flight:
the per-request timeout prevents it) is counted as failed, so ``sent == answered + failed``. After a failure a client waits
``error_backoff_s`` before its next request, so that a dead server is not hammered.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import math
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError, ServingError
from ..paths import write_files_atomically
from .client import PROTOCOLS, TritonClient, client_module, describe_failure, labels_from_result, make_inputs, make_outputs
from .interface import DEFAULT_MODEL_NAME

#: The load-generation modes.
MODES = ("sync", "async")
#: Latency percentiles reported for each level.
PERCENTILES = (50, 95, 99)
#: Largest concurrency a sweep accepts.
MAX_CONCURRENCY = 1024
#: A concurrency as written: ASCII digits, a minus sign allowed (so that a negative level is named as such).
_INTEGER = re.compile(r"-?[0-9]+")
#: Longest measurement window or warm-up (s) a sweep accepts: a day.
MAX_WINDOW_SECONDS = 86_400.0
#: Columns of the CSV output, in order (one row per concurrency level).
CSV_COLUMNS = (
    "concurrency", "mode", "protocol", "model", "throughput_infer_per_s", "p50_ms", "p95_ms", "p99_ms",
    "mean_ms", "min_ms", "max_ms", "requests", "errors", "window_s", "sent", "answered", "failed", "first_error",
    "few_requests",
)


def parse_concurrency(text: str) -> list[int]:
    """Concurrency levels from ``"1:16"``, ``"1:16:4"`` (start:end[:step], end included) or ``"1,2,4,8,16"``.

    Raises InputError naming the problem for anything else (zero, negative, empty, end
    below start, more than :data:`MAX_CONCURRENCY`).
    """
    text = str(text).strip()
    hint = "give start:end[:step] (e.g. 1:16) or a list (e.g. 1,2,4,8,16) of integers >= 1"
    pieces = [part.strip() for part in text.split(":" if ":" in text else ",")]
    if not all(_INTEGER.fullmatch(piece) for piece in pieces):  # (int() would take '1_0', '+2' and non-ASCII digits)
        raise InputError(f"concurrency {text!r} is not understood; {hint}")
    parts = [int(piece) for piece in pieces]
    if ":" in text:
        if len(parts) not in (2, 3):
            raise InputError(f"concurrency {text!r} is not understood; {hint}")
        start, end, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1
        if step < 1 or end < start:
            raise InputError(f"concurrency range {text!r} is empty or has a step below 1; {hint}")
        levels = list(range(start, end + 1, step))
    else:
        levels = parts
    bad = [level for level in levels if level < 1 or level > MAX_CONCURRENCY]
    if not levels or bad:
        shown = ", ".join(str(level) for level in bad[:5]) + (f", ... ({len(bad)} levels)" if len(bad) > 5 else "")
        raise InputError(f"concurrency {text!r} has levels outside 1..{MAX_CONCURRENCY} ({shown}); {hint}")
    return levels


@dataclass(frozen=True)
class PerfSettings:
    """Where to send and how to measure.

    ``url`` (``host:port``), ``protocol`` (``grpc``/``http``), ``model``; ``mode`` (one of
    :data:`MODES`); ``window_s``: the measurement window of each level; ``warmup_s``: the
    unmeasured run before it; ``timeout_s``: the limit of each request;
    ``max_error_messages``: distinct error messages kept per level; ``error_backoff_s``:
    a client's pause after a failed request.
    """

    url: str
    protocol: str = "grpc"
    model: str = DEFAULT_MODEL_NAME
    mode: str = "sync"
    window_s: float = 5.0
    warmup_s: float = 1.0
    timeout_s: float = 60.0
    max_error_messages: int = 5
    error_backoff_s: float = 0.05

    def __post_init__(self):
        problems = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        for name, zero_allowed in (("window_s", False), ("warmup_s", True), ("timeout_s", False),
                                   ("error_backoff_s", True)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and (value >= 0 if zero_allowed else value > 0)):
                problems.append(f"{name} must be a finite number {'>= 0' if zero_allowed else '> 0'}, got {value!r}")
            elif value > MAX_WINDOW_SECONDS:
                problems.append(f"{name} must be at most {MAX_WINDOW_SECONDS:g} s (a day), got {value!r}")
        if not isinstance(self.max_error_messages, int) or self.max_error_messages < 1:
            problems.append(f"max_error_messages must be an integer >= 1, got {self.max_error_messages!r}")
        if problems:
            raise InputError("invalid load-generator settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class RequestRecord:
    """One request sent: when it started and completed (``time.perf_counter`` seconds) and its error, if any."""

    start: float
    end: float
    error: str | None = None

    @property
    def latency_s(self) -> float:
        """Seconds from sending to the answer (or the failure)."""
        return self.end - self.start


#: A level whose window holds fewer answered requests than this is flagged ``few_requests``.
FEW_REQUESTS = 20


@dataclass
class LevelResult:
    """What one concurrency level measured.

    ``requests``/``errors``: requests answered / failed within the window;
    ``throughput``: answered in the window per second; latencies in milliseconds over the
    answered requests of the window (``None`` when there is none). ``sent``, ``answered``
    and ``failed`` count every request of the level (warm-up and drain included);
    ``error_messages``: the first distinct messages, in order of appearance.
    """

    concurrency: int
    mode: str
    protocol: str
    model: str
    window_s: float
    requests: int
    errors: int
    throughput: float
    latency_ms: dict[str, float | None]
    sent: int
    answered: int
    failed: int
    error_messages: list[str] = field(default_factory=list)

    @property
    def few_requests(self) -> bool:
        """Whether the window holds fewer than :data:`FEW_REQUESTS` answered requests (rough figures)."""
        return self.requests < FEW_REQUESTS

    def row(self) -> dict:
        """The level as one flat row (the CSV columns, :data:`CSV_COLUMNS`)."""
        values = {
            "concurrency": self.concurrency, "mode": self.mode, "protocol": self.protocol, "model": self.model,
            "throughput_infer_per_s": self.throughput,
            **{f"{key}_ms": self.latency_ms.get(key) for key in ("p50", "p95", "p99", "mean", "min", "max")},
            "requests": self.requests, "errors": self.errors, "window_s": self.window_s,
            "sent": self.sent, "answered": self.answered, "failed": self.failed,
            "first_error": self.error_messages[0] if self.error_messages else "",
            "few_requests": self.few_requests,
        }
        return {column: values[column] for column in CSV_COLUMNS}

    def as_dict(self) -> dict:
        """The level as a JSON-ready mapping (every field, and ``few_requests``)."""
        return {**asdict(self), "few_requests": self.few_requests}


def nearest_rank(sorted_values: Sequence[float], percent: float) -> float:
    """The ``percent`` percentile of ascending ``sorted_values`` by nearest rank (an element of them)."""
    if not len(sorted_values):
        raise InputError("a percentile of no values is undefined")
    rank = max(1, math.ceil(percent / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summarize(records: Sequence[RequestRecord], *, concurrency: int, settings: PerfSettings,
              window_start: float, window_end: float, unanswered: int = 0) -> LevelResult:
    """Reduce the records of one level to a :class:`LevelResult`.

    A record is in the window when it completed in ``[window_start, window_end]``.
    ``unanswered``: requests sent but never recorded (counted as failed).
    """
    if not window_end > window_start:
        raise InputError(f"the window [{window_start}, {window_end}] is empty")
    in_window = [r for r in records if window_start <= r.end <= window_end]
    answered = [r for r in in_window if r.error is None]
    latencies = np.sort(np.array([r.latency_s for r in answered], dtype=np.float64)) * 1e3
    latency: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
    latency.update(mean=None, min=None, max=None)
    if latencies.size:
        latency.update({f"p{p}": nearest_rank(latencies, p) for p in PERCENTILES})
        latency.update(mean=float(latencies.mean()), min=float(latencies[0]), max=float(latencies[-1]))
    messages: list[str] = []
    for record in records:
        if record.error is not None and record.error not in messages and len(messages) < settings.max_error_messages:
            messages.append(record.error)
    if unanswered and len(messages) < settings.max_error_messages:
        messages.append(f"{unanswered} request(s) still unanswered when the level ended")
    failed_total = sum(1 for r in records if r.error is not None) + unanswered
    window = window_end - window_start
    return LevelResult(
        concurrency=concurrency, mode=settings.mode, protocol=settings.protocol, model=settings.model,
        window_s=window, requests=len(answered), errors=len(in_window) - len(answered),
        throughput=len(answered) / window, latency_ms=latency,
        sent=len(records) + unanswered, answered=len(records) - (failed_total - unanswered), failed=failed_total,
        error_messages=messages,
    )


# ------------------------------------------------------------------ sync mode


class _SyncWorker:
    """One client thread: its own connection, its own requests, back to back until told to stop."""

    def __init__(self, settings: PerfSettings, events: Sequence[np.ndarray], counter, stop: threading.Event,
                 ready: threading.Barrier):
        self.settings, self.events, self.counter, self.stop, self.ready = settings, events, counter, stop, ready
        self.records: list[RequestRecord] = []
        self.sent = 0
        self.setup_error: str | None = None
        self.thread = threading.Thread(target=self._run, name="trackserve-perf-client", daemon=True)

    def _run(self) -> None:
        s = self.settings
        try:
            client = TritonClient(s.url, protocol=s.protocol, model=s.model, timeout_s=s.timeout_s)
            requests = [(make_inputs(client.module, features), int(features.shape[0])) for features in self.events]
        except Exception as error:  # a malformed url or a missing tritonclient: the level cannot run
            self.setup_error = str(error)
            client = None
        try:
            self.ready.wait()
        except threading.BrokenBarrierError:
            return
        if client is None:
            return
        try:
            while not self.stop.is_set():
                inputs, num_hits = requests[next(self.counter) % len(requests)]
                self.sent += 1
                start = time.perf_counter()
                error = None
                try:
                    client.send(inputs, num_hits)
                except ServingError as failure:
                    error = str(failure)
                except Exception as failure:  # never lose a request to an unexpected exception
                    error = f"unexpected {type(failure).__name__}: {failure}"
                self.records.append(RequestRecord(start, time.perf_counter(), error))
                if error is not None and s.error_backoff_s:
                    self.stop.wait(s.error_backoff_s)
        finally:
            client.close()


#: How often (seconds) the end of the warm-up is checked.
_WARM_POLL_S = 0.02


def _warmed_up(begin: float, settings: PerfSettings, every_client_answered, sleep) -> float:
    """When the measurement window starts: once ``warmup_s`` has passed (the caller slept it)
    and every client has had a request answered (or failed), so that at a high concurrency
    the window sees the server's queue full, not filling; at most ``timeout_s`` later."""
    limit = begin + settings.warmup_s + settings.timeout_s
    while not every_client_answered() and time.perf_counter() < limit:
        sleep(_WARM_POLL_S)
    return time.perf_counter()


def _run_sync(events, concurrency: int, settings: PerfSettings) -> LevelResult:
    stop = threading.Event()
    ready = threading.Barrier(concurrency + 1)
    counter = itertools.count()
    workers = [_SyncWorker(settings, events, counter, stop, ready) for _ in range(concurrency)]
    for worker in workers:
        worker.thread.start()
    ready.wait()
    setup_errors = [w.setup_error for w in workers if w.setup_error]
    if setup_errors:
        stop.set()
        for worker in workers:
            worker.thread.join()
        raise ServingError(f"cannot set up the clients of {settings.model!r} at {settings.url}: {setup_errors[0]}")
    begin = time.perf_counter()
    time.sleep(settings.warmup_s)
    window_start = _warmed_up(begin, settings, lambda: all(worker.records for worker in workers), time.sleep)
    window_end = window_start + settings.window_s
    time.sleep(max(0.0, window_end - time.perf_counter()))
    stop.set()
    deadline = time.perf_counter() + settings.timeout_s + 10.0
    for worker in workers:
        worker.thread.join(max(0.0, deadline - time.perf_counter()))
    records = [record for worker in workers for record in list(worker.records)]
    unanswered = sum(max(0, worker.sent - len(worker.records)) for worker in workers)
    return summarize(records, concurrency=concurrency, settings=settings,
                     window_start=window_start, window_end=window_end, unanswered=unanswered)


# ------------------------------------------------------------------ async mode


async def _run_async_level(events, concurrency: int, settings: PerfSettings):
    module = client_module(settings.protocol, asyncio=True)
    try:
        if settings.protocol == "grpc":
            client = module.InferenceServerClient(settings.url)
        else:
            client = module.InferenceServerClient(settings.url, conn_limit=max(100, concurrency),
                                                  conn_timeout=settings.timeout_s)
    except Exception as error:  # tritonclient raises its own types for a malformed url
        raise ServingError(f"cannot connect to {settings.url} over {settings.protocol}: {error}") from error
    requests = [(make_inputs(module, features), int(features.shape[0])) for features in events]
    outputs = make_outputs(module)
    counter = itertools.count()
    records: list[RequestRecord] = []
    sent = [0]
    stopping = asyncio.Event()

    async def one_request(inputs, num_hits) -> None:
        kwargs = {"client_timeout": settings.timeout_s} if settings.protocol == "grpc" else {}
        result = await asyncio.wait_for(client.infer(settings.model, inputs, outputs=outputs, **kwargs),
                                        settings.timeout_s + 5.0)
        labels_from_result(result, num_hits)

    answered_once: set[int] = set()

    async def worker(number: int) -> None:
        while not stopping.is_set():
            inputs, num_hits = requests[next(counter) % len(requests)]
            sent[0] += 1
            start = time.perf_counter()
            error = None
            try:
                await one_request(inputs, num_hits)
            except ServingError as failure:
                error = str(failure)
            except asyncio.TimeoutError:
                error = f"request: the server at {settings.url} did not answer in time ({settings.timeout_s:g} s)"
            except Exception as failure:  # tritonclient and its transports raise many types
                error = f"request: {describe_failure(failure, settings.url, settings.model)}"
            records.append(RequestRecord(start, time.perf_counter(), error))
            answered_once.add(number)
            if error is not None and settings.error_backoff_s:
                await asyncio.sleep(settings.error_backoff_s)

    begin = time.perf_counter()
    tasks = [asyncio.create_task(worker(number)) for number in range(concurrency)]
    try:
        await asyncio.sleep(settings.warmup_s)
        limit = begin + settings.warmup_s + settings.timeout_s
        while len(answered_once) < concurrency and time.perf_counter() < limit:  # as _warmed_up, on the loop
            await asyncio.sleep(_WARM_POLL_S)
        window_start = time.perf_counter()
        window_end = window_start + settings.window_s
        await asyncio.sleep(max(0.0, window_end - time.perf_counter()))
        stopping.set()
        await asyncio.gather(*tasks)
    finally:  # (a stop cancels this task: the clients' tasks end too, none is left pending)
        stopping.set()  # a client whose cancellation wait_for swallowed (its request ending at that moment) ends too
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    return records, sent[0] - len(records), window_start, window_end


class _StoppedBySignal(Exception):
    """A stop signal that came while a level ran on the event loop (its number in ``args[0]``)."""


async def _stoppable(coroutine, handlers: dict):
    """Run ``coroutine`` on the loop with Ctrl-C and SIGTERM turned into its cancellation (in the
    main thread), so that it ends its tasks and closes its client before the stop is acted on,
    instead of the stop being raised wherever the loop happened to be (an asyncio task left
    pending, tracebacks of cancelled requests); :class:`_StoppedBySignal` then names the signal.
    A second stop while the first is being honoured (a client that does not close) is acted on
    at once, as ``handlers`` (the command's, ``signal.getsignal`` before the loop) say, and
    the handlers are given back, so a stuck shutdown can always be interrupted."""
    import signal

    from ..paths import act_on_signal

    if threading.current_thread() is not threading.main_thread():
        return await coroutine
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    previous = {signum: handler for signum, handler in previous.items() if handler is not signal.SIG_IGN}

    def give_back() -> None:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)
        previous.clear()

    def stop(signum: int) -> None:
        if not received:
            received.append(signum)
            main.cancel()
            return
        received.append(signum)
        give_back()
        act_on_signal(signum, handlers.get(signum, signal.SIG_DFL))  # KeyboardInterrupt, Terminated...

    for signum in previous:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await coroutine
    except asyncio.CancelledError:
        if len(received) != 1:  # not a stop's, or a second stop's, acted on already
            raise
        raise _StoppedBySignal(received[0]) from None
    finally:
        give_back()


def _run_async(events, concurrency: int, settings: PerfSettings) -> LevelResult:
    import signal

    from ..paths import act_on_signal

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        records, unanswered, window_start, window_end = asyncio.run(
            _stoppable(_run_async_level(events, concurrency, settings), handlers))
    except _StoppedBySignal as stopped:  # acted on now, as the signal's own handler would have
        signum = stopped.args[0]
        act_on_signal(signum, handlers[signum])  # the command's: KeyboardInterrupt, Terminated
        raise ServingError(f"the concurrency {concurrency} level was stopped by {signal.Signals(signum).name} before "
                           "its window ended") from None
    return summarize(records, concurrency=concurrency, settings=settings,
                     window_start=window_start, window_end=window_end, unanswered=unanswered)


# ------------------------------------------------------------------ sweep and reports


def _check_events(events: Sequence[np.ndarray]) -> list[np.ndarray]:
    if not len(events):
        raise InputError("the load generator needs at least one event")
    checked = []
    for index, features in enumerate(events):
        array = np.ascontiguousarray(features)
        if array.ndim != 2:
            raise InputError(f"event {index}: features must be [N, F], got shape {list(array.shape)}")
        checked.append(array)
    return checked


def measure_level(events: Sequence[np.ndarray], concurrency: int, settings: PerfSettings) -> LevelResult:
    """Run one concurrency level against the server and return what it measured.

    ``events``: feature arrays ``[N, F]``, sent in turn (cycling). Raises ServingError
    only when the clients cannot be set up at all (a malformed url); failed requests are
    counted in the result, never raised.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise InputError(f"concurrency must be an integer in 1..{MAX_CONCURRENCY}, got {concurrency!r}")
    events = _check_events(events)
    run = _run_sync if settings.mode == "sync" else _run_async
    return run(events, concurrency, settings)


def run_sweep(events: Sequence[np.ndarray], levels: Sequence[int], settings: PerfSettings,
              progress: Callable[[LevelResult], None] | None = None) -> list[LevelResult]:
    """:func:`measure_level` for each concurrency of ``levels`` in turn; ``progress`` gets each result."""
    results = []
    for concurrency in levels:
        result = measure_level(events, concurrency, settings)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(results: Sequence[LevelResult]) -> str:
    """An aligned text table of the levels, followed by the distinct error messages of each."""
    header = ("concurrency", "infer/s", "p50 ms", "p95 ms", "p99 ms", "mean ms", "requests", "errors")
    rows = [header] + [
        (str(r.concurrency), _number(r.throughput, 2), _number(r.latency_ms["p50"], 2), _number(r.latency_ms["p95"], 2),
         _number(r.latency_ms["p99"], 2), _number(r.latency_ms["mean"], 2), str(r.requests), str(r.errors))
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    for r in results:
        if r.requests == 0 and r.answered == 0 and r.failed:
            lines.append(f"concurrency {r.concurrency}: NO request answered: all {r.failed} failed (below), so its "
                         "0 infer/s is no measurement of throughput; a longer window would not help")
        elif r.requests == 0 and r.errors:  # every request that ended in the window failed (a server that died)
            lines.append(f"concurrency {r.concurrency}: NO request answered within the {r.window_s:g} s window: all "
                         f"{r.errors} that ended in it failed (below; {r.answered} answered outside it), so its 0 "
                         "infer/s is no measurement; a longer window would not help")
        elif r.requests == 0:  # no request ended in the window at all: it is shorter than a request
            lines.append(f"concurrency {r.concurrency}: NO request answered within the {r.window_s:g} s window "
                         f"({r.answered} answered outside it): its 0 infer/s and missing latencies are no measurement; "
                         "give a longer --window-seconds")
        elif r.few_requests:
            lines.append(f"concurrency {r.concurrency}: only {r.requests} request(s) answered in the {r.window_s:g} s "
                         f"window: rough figures (fewer than {FEW_REQUESTS}); give a longer --window-seconds")
        if r.failed:
            lines.append(f"concurrency {r.concurrency}: {r.failed} of the {r.sent} request(s) sent at this level (warm-up "
                         f"included; {r.errors} of them ended in the window) failed; first errors:")
            lines.extend(f"  - {message}" for message in r.error_messages)
    return "\n".join(lines)


def write_csv_rows(results: Sequence[LevelResult], handle) -> None:
    """Write the header and one CSV row per level (:data:`CSV_COLUMNS`; an undefined latency
    is an empty cell) to the open text stream ``handle`` (standard output, say)."""
    writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for result in results:
        writer.writerow({key: "" if value is None else value for key, value in result.row().items()})


def write_csv(results: Sequence[LevelResult], path: str | Path) -> Path:
    """Write one CSV row per level to the file ``path`` (:func:`write_csv_rows`; no levels: the
    header alone), whole or not at all (:class:`~trackserve.errors.OutputError` names it)."""
    path = Path(path)
    text = io.StringIO(newline="")
    write_csv_rows(results, text)
    write_files_atomically([(path, text.getvalue().encode())], follow_links=True)
    return path


def measured_nothing(results: Sequence[LevelResult]) -> bool:
    """Whether no level's window saw an answered request (every throughput 0, no latency: no measurement)."""
    return bool(results) and all(result.requests == 0 for result in results)


def report(results: Sequence[LevelResult], settings: PerfSettings, *, num_events: int) -> dict:
    """The whole sweep as one JSON-ready mapping: the settings, the number of events and every level."""
    return {"settings": asdict(settings), "num_events": int(num_events), "levels": [r.as_dict() for r in results]}
