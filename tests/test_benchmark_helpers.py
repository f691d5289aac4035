"""The benchmark scripts' shared helpers and section choices (the scripts themselves run for
minutes to hours and are not run here)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def results():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("_results")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_a_section_is_replaced_and_the_others_kept_byte_for_byte(results, tmp_path):
    path = tmp_path / "RESULTS.md"
    results.write_section("a", "first", path)
    results.write_section("b", "second", path)
    before_b = path.read_text().split("<!-- begin b -->")[1]
    results.write_section("a", "first again", path)
    text = path.read_text()
    assert text.count("<!-- begin a -->") == 1 and "first again" in text and "first\n" not in text
    assert text.split("<!-- begin b -->")[1] == before_b


@pytest.mark.parametrize("damage", [
    lambda text: text.replace("<!-- end a -->\n", "", 1),  # an end marker lost (a hand edit, a merge)
    lambda text: text + "\n<!-- begin a -->\n",  # a begin marker doubled
    lambda text: text.replace("<!-- begin a -->", "<!-- tmp -->").replace("<!-- end a -->", "<!-- begin a -->")
    .replace("<!-- tmp -->", "<!-- end a -->"),  # the two in the wrong order
])
def test_unbalanced_markers_are_refused_before_anything_is_written(results, tmp_path, damage):
    """QA, 2026-12-02: with a section's end marker lost, a rewrite appended a second block, and
    the next one replaced everything from the orphan begin marker to the new end: 13 sections
    became 1, without a word."""
    path = tmp_path / "RESULTS.md"
    for name in ("a", "b", "c"):
        results.write_section(name, f"section {name}", path)
    path.write_text(damage(path.read_text()))
    damaged = path.read_text()
    with pytest.raises(RuntimeError, match="the section 'a' has .* marker.*mend them by hand.*nothing was written"):
        results.write_section("a", "new", path)
    assert path.read_text() == damaged
    results.write_section("b", "b again", path)  # the other sections still write
    assert "b again" in path.read_text()


@pytest.mark.parametrize("parse, text", [("positive_int_list", "1000,1000"), ("comma_choices", "manifold,manifold")])
def test_a_value_given_twice_in_a_list_option_is_refused(results, parse, text):
    """It ran twice and printed two tables of the same figures."""
    parser = results.positive_int_list if parse == "positive_int_list" else results.comma_choices(("manifold", "uniform"))
    with pytest.raises(argparse.ArgumentTypeError, match="given twice in .*: give each once"):
        parser(text)
    assert parser(text.split(",")[0] + ("," + "2000" if parse == "positive_int_list" else ",uniform")) is not None


def test_the_default_bundle_benchmark_gives_overridden_shifts_a_section_of_their_own(results):
    """QA, 2026-12-02: `--vertex-shifts 0` on models/default-vertex-shifts wrote its one-pass
    figures into the section that holds that bundle's five-shift figures."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        bench = importlib.import_module("bench_default_bundle")
    finally:
        sys.path.remove(str(BENCHMARKS))
    repo = BENCHMARKS.parent
    shifted, five = repo / "models" / "default-vertex-shifts", (-100.0, -50.0, 0.0, 50.0, 100.0)
    assert bench.result_section(shifted, five, five, False) == ("bundle_default-vertex-shifts", False)
    assert bench.result_section(shifted, five, five, True) == ("bundle_default-vertex-shifts", False)  # its own
    assert bench.result_section(shifted, five, None, True) == ("bundle_default-vertex-shifts_one_pass", True)
    assert bench.result_section(repo / "models" / "default", None, five, True) == ("default_bundle_vertex_shifts", True)
    assert bench.result_section(repo / "models" / "default", None, None, True) == ("default_bundle", False)
