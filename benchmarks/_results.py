"""Shared helpers of the benchmark scripts: machine description, load, options and RESULTS.md sections.

Each benchmark owns one section of ``benchmarks/RESULTS.md``, delimited by HTML comment
markers, and rewrites only that section, so benchmarks can be rerun independently;
:func:`write_section` holds a lock while it reads and rewrites the file, so two scripts
finishing at once both keep their sections.

Every script puts the repository it lives in first on ``sys.path`` before it imports
``trackserve`` (see :data:`REPO`), so it measures that checkout's code rather than an
installed copy; :func:`checkout_environment` gives the same to the Python processes it starts.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import math
import os
import platform
import re
import resource
import signal
import statistics
import tempfile
import time
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
#: The repository the benchmark scripts live in (the parent of ``benchmarks/``).
REPO = RESULTS_PATH.parents[1]
#: The shipped default bundle of that repository.
DEFAULT_BUNDLE_DIR = REPO / "models" / "default"
#: The published ExaTrkX service's 100 benchmark events (feature CSVs ``evt_<i>.csv``, 3
#: features each), in the shared data folder beside the repository.
LRT_EVENTS = REPO.parent / "shared" / "data" / "exatrkx_service" / "lrt_events"
_HEADER = "# Benchmark results\n\nEach section is written by the script it names; rerun the script to refresh it.\n"
#: The share of the cores the 1-minute load average must stay under for the machine to count as quiet.
QUIET_LOAD_SHARE = 0.5


def machine_description() -> str:
    """One line naming the machine: CPU model, core count, memory, Python and date (UTC)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 2**20:.0f} GiB"
                break
    except OSError:
        pass
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{cpu}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}, {date}"


def checkout_environment(base: dict | None = None, **variables: str) -> dict:
    """A copy of ``base`` (default: this process's environment) with :data:`REPO` first on
    ``PYTHONPATH`` and ``variables`` set: the environment for a Python process a benchmark
    starts, so that it imports the same checkout's ``trackserve`` as the benchmark."""
    env = dict(os.environ if base is None else base)
    rest = [part for part in env.get("PYTHONPATH", "").split(os.pathsep) if part and part != str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *rest])
    env.update(variables)
    return env


def use_checkout_in_children() -> None:
    """Put :data:`REPO` first on this process's ``PYTHONPATH``, so the Python processes it
    starts from now on (worker processes, servers' Python backends) import the same checkout."""
    os.environ["PYTHONPATH"] = checkout_environment()["PYTHONPATH"]


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (every CPU's time in
    ``/proc/stat`` but idle and I/O wait, guest time counted once, stolen time counted:
    another virtual machine had the core), or ``None`` where there is no ``/proc/stat``."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    idle = sum(ticks[3:5])  # idle, iowait
    guest = sum(ticks[8:10])  # already counted in user and nice
    return (sum(ticks) - idle - guest) / os.sysconf("SC_CLK_TCK")


def stop_cleanly_on_sigterm() -> None:
    """Make SIGTERM end the script as Ctrl-C does, through its ``finally`` blocks and
    ``with`` statements: its temporary folders are removed and the servers or worker
    processes it started are stopped (by default SIGTERM ends Python at once). The exit
    status is 143, the shell's for a SIGTERM."""
    def _exit(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


def published_events(count: int) -> list:
    """The features (float32 ``[N, 3]``) of the first ``count`` published benchmark events
    (:data:`LRT_EVENTS`), in their numbering."""
    from trackserve.events.trackml import read_feature_csv

    return [read_feature_csv(LRT_EVENTS / f"evt_{i}.csv", 3) for i in range(count)]


def own_cpu_seconds() -> float:
    """CPU seconds used by this process and by the child processes it has waited for."""
    return sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


class LoadWatch:
    """How busy the machine was around a benchmark: the 1-minute load average when it starts
    (on creation) and when it ends (:meth:`finish`), and the cores the *other* processes
    used in between.

    The load average at the end counts the benchmark's own threads (a 2-thread benchmark on
    2 cores ends near 2 however quiet the machine), so the verdict for the run itself comes
    from the machine's busy CPU time (``/proc/stat``) less the benchmark's own (its process
    and the children it has waited for: close worker pools and servers before :meth:`finish`);
    where there is no ``/proc/stat`` it falls back on the load average at the end.
    """

    def __init__(self):
        self.cores = os.cpu_count() or 1
        self.start = os.getloadavg()[0]
        self.end: float | None = None
        self.others: float | None = None
        self._wall = time.monotonic()
        self._machine = machine_busy_seconds()
        self._own = own_cpu_seconds()

    def finish(self) -> "LoadWatch":
        """Sample the load at the end of the benchmark (once its measurements are done and its
        worker processes and servers are stopped)."""
        self.end = os.getloadavg()[0]
        machine, wall = machine_busy_seconds(), time.monotonic() - self._wall
        if machine is not None and self._machine is not None and wall > 0:
            self.others = max(0.0, (machine - self._machine - (own_cpu_seconds() - self._own)) / wall)
        return self

    def _is_busy(self, load: float) -> bool:
        return load >= QUIET_LOAD_SHARE * self.cores

    def _check_finished(self) -> None:
        if self.end is None:
            raise RuntimeError("LoadWatch.finish() was not called: the load at the end is unknown")

    @property
    def busy_when(self) -> list[str]:
        """When the machine was busy (at least half the cores' worth of other work): among
        ``"at the start"`` and ``"during the run"``; empty when it was quiet."""
        self._check_finished()
        during = self.others if self.others is not None else self.end
        return [when for when, load in (("at the start", self.start), ("during the run", during))
                if self._is_busy(load)]

    @property
    def busy(self) -> bool:
        """Whether the machine was busy at the start or during the run."""
        return bool(self.busy_when)

    def note(self) -> str:
        """A sentence giving the load at the start and at the end, the other processes' share
        during the run, and whether timings are provisional."""
        self._check_finished()
        others = ("" if self.others is None else
                  f"; other processes used {self.others:.2f} cores on average during the run (the machine's busy CPU "
                  "time less this benchmark's)")
        verdict = (f"busy {' and '.join(self.busy_when)}: timings are provisional" if self.busy else "quiet")
        return (f"Load average (1 min): {self.start:.2f} at the start, {self.end:.2f} at the end (this benchmark's "
                f"own work included){others}; {self.cores} cores ({verdict}).")

    def provisional(self) -> str:
        """`` (provisional: the machine was busy ...)`` to follow a verdict drawn from timings, or ``""``."""
        return f" (provisional: the machine was busy {' and '.join(self.busy_when)})" if self.busy else ""


def reduced_run_note(changes: list[str], option: str | None = None) -> str:
    """A bold sentence saying the run used settings below the defaults (``changes``: each one
    said, e.g. "1 round instead of 5"; ``option``: the option that chose them, e.g.
    ``--quick``), or ``""`` for a run at the defaults."""
    if not changes:
        return ""
    how = f" (`{option}`)" if option else ""
    return f"**Reduced run{how}: " + "; ".join(changes) + " (figures not comparable with a full run's).**"


# -- command-line options ---------------------------------------------------------------

def int_at_least(minimum: int):
    """An argparse ``type``: a whole number >= ``minimum``, else an argparse error naming both."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


#: An argparse ``type``: a whole number >= 1 (counts of repeats, events, hits, threads...).
positive_int = int_at_least(1)
#: An argparse ``type``: a whole number >= 0 (seeds).
non_negative_int = int_at_least(0)


def positive_int_list(text: str) -> list[int]:
    """An argparse ``type``: a comma list of whole numbers >= 1 (``1000,10000``)."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers >= 1 such as 1000,10000, got {text!r}")
    values = [positive_int(part) for part in parts]
    return _once_each(values, text)


def _once_each(values: list, text: str) -> list:
    """``values``, or an argparse error naming the repeated ones (each would run and be tabled twice)."""
    repeated = sorted({value for value in values if values.count(value) > 1}, key=values.index)
    if repeated:
        raise argparse.ArgumentTypeError(f"{', '.join(map(str, repeated))} given twice in {text!r}: give each once")
    return values


def comma_choices(choices: tuple[str, ...]):
    """An argparse ``type``: a comma list of names, each one of ``choices``."""

    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",")]
        unknown = [name for name in names if name not in choices]
        if not text.strip() or unknown:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices)}; "
                                             f"got {', '.join(map(repr, unknown)) or repr(text)}")
        return _once_each(names, text)

    parse.__name__ = "comma list"
    return parse


def one_line(error: BaseException) -> str:
    """An exception's message on one line (a BundleError lists its problems one per line)."""
    return " ".join(str(error).split())


def load_bundle_option(parser: argparse.ArgumentParser, option: str, path):
    """The bundle at ``path`` (given by ``option``), loaded and checked by
    :func:`trackserve.bundle.load_bundle`, or the parser's error (one line, exit status 2)."""
    from trackserve.bundle import load_bundle
    from trackserve.errors import TrackserveError

    try:
        return load_bundle(path)
    except TrackserveError as error:
        parser.error(f"{option} {path}: {one_line(error)}")


# -- describing a bundle ----------------------------------------------------------------

def repo_relative(path) -> str:
    """``path`` relative to the repository when it lies inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def network_widths(bundle) -> dict[str, int]:
    """The hidden width of each of the bundle's networks whose config records one (name -> width)."""
    widths = {}
    for name, entry in bundle.networks.items():
        width = entry.config.get("emb_hidden", entry.config.get("hidden"))
        if isinstance(width, int):
            widths[name] = width
    return widths


def network_sizes(bundle) -> str:
    """The sizes of the bundle's networks as its ``pipeline.json`` records them, in words."""
    parts = []
    for name, entry in bundle.networks.items():
        config = entry.config
        width = network_widths(bundle).get(name)
        kind = entry.architecture or entry.kind
        if width is None:
            parts.append(f"{name} {kind} (width not recorded)")
        elif "n_graph_iters" in config:
            parts.append(f"{name} {kind} {width} wide, {config['n_graph_iters']} iterations")
        elif "nb_layer" in config:
            parts.append(f"{name} {kind} {config['nb_layer']} layers of {width}")
        else:
            parts.append(f"{name} {kind} {width} wide")
    return ", ".join(parts)


def training_data(provenance: dict) -> str:
    """What the bundle was trained on, in a few words, from its provenance."""
    data = provenance.get("data")
    if data is None:
        return "no training data recorded"
    if isinstance(data, str):
        return data
    training = data.get("training") if isinstance(data, dict) else None
    if isinstance(training, dict) and "num_events" in training:
        kinds = [kind for kind, key in (("TrackML", "trackml_events"), ("simulated", "simulated")) if data.get(key)]
        hits = f", {training['num_hits']:,} hits" if isinstance(training.get("num_hits"), int) else ""
        return f"trained on {training['num_events']} {' and '.join(kinds) or 'recorded'} events{hits}"
    return "training data recorded in pipeline.json"


def bundle_description(bundle, path) -> str:
    """A short description of the bundle loaded from ``path``: its directory (relative to the
    repository when inside it), features, networks and training data."""
    created = str(bundle.provenance.get("created", ""))[:10]
    by = bundle.provenance.get("trained_by")
    made = ", ".join(part for part in (by and f"by {by}", created and f"created {created}") if part)
    return (f"`{repo_relative(path)}` (features {', '.join(bundle.feature_names)}; {network_sizes(bundle)}; "
            f"{training_data(bundle.provenance)}" + (f"; {made}" if made else "") + ")")


# -- RESULTS.md -------------------------------------------------------------------------

def bundle_section(bundle, default_section: str, other_prefix: str) -> str:
    """The RESULTS.md section of a benchmark run on ``bundle``: ``default_section`` for the
    shipped default bundle, ``other_prefix`` + the bundle's directory name for any other."""
    path = Path(bundle).resolve()
    if path == DEFAULT_BUNDLE_DIR.resolve():
        return default_section
    return f"{other_prefix}{path.name}"


def replace_file(path: Path, write) -> None:
    """Write ``path`` whole or not at all: ``write(temporary_path)`` writes a temporary file in
    the same directory, which then replaces ``path`` (keeping its permissions)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix + ".tmp")
    os.close(descriptor)
    try:
        write(Path(temporary))
        if path.exists():
            mode = path.stat().st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def lock_path(path: Path = RESULTS_PATH) -> Path:
    """The lock file of ``path`` (``.RESULTS.md.lock`` next to it): empty, left in place."""
    return path.with_name(f".{path.name}.lock")


def write_section(name: str, markdown: str, path: Path = RESULTS_PATH) -> Path:
    """Replace (or append) the section ``name`` of RESULTS.md with ``markdown``.

    The read-modify-write runs under an exclusive ``flock`` of :func:`lock_path`, and the
    new text replaces the file atomically, so two benchmarks finishing at once both keep
    their sections and a reader never sees half a file."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    with open(lock_path(path), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            text = path.read_text() if path.exists() else _HEADER
            counts = (text.count(begin), text.count(end))
            if counts not in ((0, 0), (1, 1)) or (counts == (1, 1) and text.index(begin) > text.index(end)):
                # a marker lost or doubled by hand: a replacement would run from one section's
                # begin to another's end and take everything between
                raise RuntimeError(f"{path}: the section {name!r} has {counts[0]} begin and {counts[1]} end marker(s) "
                                   f"({begin} ... {end}); mend them by hand (one of each, in that order) and run again: "
                                   "nothing was written")
            if pattern.search(text):
                text = pattern.sub(lambda _match: block, text)
            else:
                text = text.rstrip() + "\n\n" + block + "\n"
            replace_file(path, lambda temporary: temporary.write_text(text))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


def publish(section: str, script: str, lines: list[str], write: bool, title: str | None = None) -> str:
    """The section's markdown (a ``## title (`benchmarks/script`)`` heading, ``title``
    defaulting to ``section``, over ``lines``), printed, and written to RESULTS.md when
    ``write``; returns the markdown."""
    text = f"## {title or section} (`benchmarks/{script}`)\n\n" + "\n".join(lines)
    print(text)
    if write:
        print(f"wrote the section {section!r} of {write_section(section, text)}")
    return text


# -- timing ----------------------------------------------------------------------------

def interleaved_rounds(passes: dict, repeats: int) -> dict:
    """``repeats`` rounds, each running every pass of ``passes`` (name -> no-argument callable
    returning (anything, wall seconds)) once, in turn; returns name -> list of results.

    Interleaving puts both sides of a comparison in the same few seconds of the machine's
    life, so a slow spell of a shared machine falls on both instead of on whichever ran
    then; ratios are taken round by round.
    """
    if repeats < 1:
        raise ValueError(f"interleaved_rounds needs at least 1 round, got {repeats}")
    results = {name: [] for name in passes}
    for _ in range(repeats):
        for name, run_pass in passes.items():
            results[name].append(run_pass())
    return results


def median_pass(results: list) -> tuple:
    """The pass with the median wall time (the lower one of an even count)."""
    walls = [wall for _, wall in results]
    return results[walls.index(statistics.median_low(walls))]


def round_ratios(base: list, ours: list) -> list[float]:
    """Wall of ``base`` / wall of ``ours``, round by round (each a list of (anything, wall seconds))."""
    return [b_wall / o_wall for (_, b_wall), (_, o_wall) in zip(base, ours)]


def ratio_text(ratios: list[float]) -> str:
    """``**median**x`` with the range of the rounds when there are several."""
    median = statistics.median(ratios)
    spread = f" (rounds {min(ratios):.2f}–{max(ratios):.2f}x)" if len(ratios) > 1 else ""
    return f"**{median:.2f}x**{spread}"


def significant(value: float, digits: int = 2) -> str:
    """``value`` rounded to ``digits`` significant digits, written without an exponent (0.45, 9.1, 290)."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    return f"{round(value, decimals):.{max(decimals, 0)}f}"
