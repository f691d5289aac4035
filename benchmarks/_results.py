"""Shared helpers of the benchmark scripts: machine description and RESULTS.md sections.

Each benchmark owns one section of ``benchmarks/RESULTS.md``, delimited by HTML comment
markers, and rewrites only that section, so benchmarks can be rerun independently.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import statistics
from pathlib import Path

RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
_HEADER = "# Benchmark results\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


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


def load_note() -> str:
    """A sentence giving the machine's load when the benchmark started: other jobs skew timings."""
    one_minute = os.getloadavg()[0]
    verdict = "quiet" if one_minute < 0.5 * (os.cpu_count() or 1) else "busy: timings are provisional"
    return f"Load average (1 min) at the start: {one_minute:.2f} on {os.cpu_count()} cores ({verdict})."


def bundle_section(bundle, default_section: str, other_prefix: str) -> str:
    """The RESULTS.md section of a benchmark run on ``bundle``: ``default_section`` for the
    shipped default bundle, ``other_prefix`` + the bundle's directory name for any other."""
    path = Path(bundle).resolve()
    if path == (RESULTS_PATH.parents[1] / "models" / "default").resolve():
        return default_section
    return f"{other_prefix}{path.name}"


def write_section(name: str, markdown: str, path: Path = RESULTS_PATH) -> Path:
    """Replace (or append) the section ``name`` of RESULTS.md with ``markdown``."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    text = path.read_text() if path.exists() else _HEADER
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _match: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    return path


def publish(section: str, script: str, lines: list[str], write: bool) -> str:
    """The section's markdown (a ``## section (`benchmarks/script`)`` heading over ``lines``),
    printed, and written to RESULTS.md when ``write``; returns the markdown."""
    text = f"## {section} (`benchmarks/{script}`)\n\n" + "\n".join(lines)
    print(text)
    if write:
        write_section(section, text)
    return text


def interleaved_rounds(passes: dict, repeats: int) -> dict:
    """``repeats`` rounds, each running every pass of ``passes`` (name -> no-argument callable
    returning (anything, wall seconds)) once, in turn; returns name -> list of results.

    Interleaving puts both sides of a comparison in the same few seconds of the machine's
    life, so a slow spell of a shared machine falls on both instead of on whichever ran
    then; ratios are taken round by round.
    """
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
