"""Choosing the GNN cut on a validation event: ``tune_gnn_cut`` and ``trackserve tune-cut``."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from trackserve.bundle import load_bundle
from trackserve.cli import main
from trackserve.errors import InputError
from trackserve.events.metrics import evaluate_event
from trackserve.events.trackml import read_event
from trackserve.paths import DEFAULT_BUNDLE
from trackserve.runtime.config import RuntimeConfig
from trackserve.bundle import JoinSettings
from trackserve.runtime.cut_tuning import (CANDIDATE_CUTS, CANDIDATE_GAP_CUTS, CANDIDATE_JOIN_GRID, CANDIDATE_JOINS,
                                          ValidationSet, best_rows, check_counted_particles, joins_at_or_above_prune_cut,
                                          tune_cuts_and_joining,
                                          tune_gnn_cut, tune_piece_joining)
from trackserve.runtime.pipeline import Pipeline

from ..conftest import SAMPLE_EVENT


@pytest.fixture(scope="module")
def event():
    return read_event(SAMPLE_EVENT, parts=("truth", "particles"))


@pytest.fixture(scope="module")
def pipeline():
    # The shipped default bundle: it finds tracks on the sample event, so the figures vary with the cut.
    return Pipeline(DEFAULT_BUNDLE, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))


@pytest.mark.parametrize("method", ["components", "best_edges"])
def test_every_cut_is_scored_as_the_pipeline_would_label_the_event(pipeline, event, method):
    best, rows = tune_gnn_cut(pipeline, event, method=method, min_pt=0.5, min_hits=3)
    assert [row.cut for row in rows] == list(CANDIDATE_CUTS)
    assert all(row.gap_cut is None for row in rows)
    assert best == max(rows, key=lambda row: (row.score, -row.cut))
    # The figures of a cut are those of the pipeline run with that cut and method.
    for row in (rows[0], rows[len(rows) // 2], rows[-1]):
        stages = dataclasses.replace(pipeline.stages, gnn_cut=row.cut, gap_cut=row.gap_cut, track_building=method,
                                     join_pieces=None)
        at_cut = Pipeline(dataclasses.replace(pipeline.bundle, stages=stages),
                          config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
        labels = at_cut.run_event(event).labels
        figures = evaluate_event(event, event.hits["hit_id"], labels, min_pt=0.5, min_hits=3)
        np.testing.assert_equal((row.efficiency, row.fake_rate), (figures["efficiency"], figures["fake_rate"]))
    assert len({row.efficiency for row in rows}) > 3  # the cut matters on this event


def test_a_fake_rate_bound_restricts_the_choice(pipeline, event):
    best, rows = tune_gnn_cut(pipeline, event, min_pt=0.5, min_hits=3, max_fake_rate=1.0)
    assert best == tune_gnn_cut(pipeline, event, min_pt=0.5, min_hits=3)[0]
    bound = float(np.median([np.nan_to_num(row.fake_rate) for row in rows]))
    chosen, _ = tune_gnn_cut(pipeline, event, min_pt=0.5, min_hits=3, max_fake_rate=bound)
    assert chosen in rows
    assert np.nan_to_num(chosen.fake_rate) <= bound
    assert all(row.score <= chosen.score for row in rows if np.nan_to_num(row.fake_rate) <= bound)


def test_impossible_bounds_and_events_without_truth_are_refused(pipeline, event):
    lowest = pipeline.stages.prune_cut or 0.0  # a pruned edge keeps the pruner's score: no cut below its cut
    with pytest.raises(InputError, match="no candidate cut keeps the fake rate"):
        tune_gnn_cut(pipeline, event, min_pt=0.5, min_hits=3, max_fake_rate=0.0, cuts=(lowest,))
    if pipeline.stages.prune_cut is not None:
        with pytest.raises(InputError, match="every candidate cut lies below the bundle's pruning cut"):
            tune_gnn_cut(pipeline, event, min_pt=0.5, min_hits=3, cuts=(lowest / 2,))
    with pytest.raises(InputError, match="max_fake_rate must lie in"):
        tune_gnn_cut(pipeline, event, max_fake_rate=2.0)
    with pytest.raises(InputError, match="truth and particles"):
        tune_gnn_cut(pipeline, read_event(SAMPLE_EVENT, parts=()))


def test_tune_cut_command_prints_and_writes(tmp_path, capsys):
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    assert main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3"]) == 0
    out = capsys.readouterr().out
    assert "<- best" in out and out.count("\n") >= len(CANDIDATE_CUTS)
    before = json.loads((bundle / "pipeline.json").read_text())
    assert before == json.loads((DEFAULT_BUNDLE / "pipeline.json").read_text())  # nothing written without --write
    assert main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3",
                 "--track-building", "components", "--write"]) == 0
    best = float(capsys.readouterr().out.split("stored GNN cut ")[1].split(",")[0])
    tuned = load_bundle(bundle)
    assert tuned.stages.gnn_cut == best and tuned.stages.track_building == "components"
    assert tuned.stages.gap_cut is None
    record = tuned.provenance["gnn_cut_tuned"]
    assert record["previous"] == {"gnn_cut": before["stages"]["gnn_cut"], "gap_cut": before["stages"].get("gap_cut"),
                                  "track_building": "best_edges", "join_pieces": before["stages"].get("join_pieces"),
                                  "vertex_shifts": None}
    assert record["stages"] == {"gnn_cut": best, "gap_cut": None, "track_building": "components", "join_pieces": None,
                                "vertex_shifts": None}
    assert tuned.stages.join_pieces is None and record["joins_tried"] is None
    assert 0 <= record["figures"]["efficiency"] <= 1


def test_gap_cuts_are_tried_below_each_cut_and_scored_as_the_pipeline_would(pipeline, event):
    cuts, gaps = (0.5, 0.8), (0.1, 0.3, 0.6, 0.9)
    best, rows = tune_gnn_cut(pipeline, event, method="best_edges", min_pt=0.5, min_hits=3, cuts=cuts, gap_cuts=gaps)
    assert [(row.cut, row.gap_cut) for row in rows] == [(0.5, None), (0.5, 0.1), (0.5, 0.3),
                                                         (0.8, None), (0.8, 0.1), (0.8, 0.3), (0.8, 0.6)]
    assert best == max(rows, key=lambda row: (row.score, -row.cut, row.cut if row.gap_cut is None else row.gap_cut))
    row = rows[1]
    stages = dataclasses.replace(pipeline.stages, gnn_cut=row.cut, gap_cut=row.gap_cut, track_building="best_edges",
                                 join_pieces=None)
    labels = Pipeline(dataclasses.replace(pipeline.bundle, stages=stages),
                      config=RuntimeConfig(intra_op_threads=1, graph_threads=1)).run_event(event).labels
    figures = evaluate_event(event, event.hits["hit_id"], labels, min_pt=0.5, min_hits=3)
    np.testing.assert_equal((row.efficiency, row.fake_rate), (figures["efficiency"], figures["fake_rate"]))
    with pytest.raises(InputError, match="tune them with track building 'best_edges', not 'components'"):
        tune_gnn_cut(pipeline, event, method="components", gap_cuts=gaps)


def _tuned_copy(tmp_path, capsys, *options):
    """``trackserve tune-cut --write`` with ``options`` on a copy of the default bundle on the
    sample event: (what it printed, the tuned bundle, its tuning record)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    assert main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3",
                 *options, "--write"]) == 0
    tuned = load_bundle(bundle)
    return capsys.readouterr().out, tuned, tuned.provenance["gnn_cut_tuned"]


def test_tune_cut_command_fills_gaps_and_writes_the_gap_cut(tmp_path, capsys):
    out, tuned, record = _tuned_copy(tmp_path, capsys, "--fill-gaps")
    assert "gap cut" in out and "<- best" in out
    assert record["gap_cuts_tried"] == list(CANDIDATE_GAP_CUTS)
    assert record["stages"] == {"gnn_cut": tuned.stages.gnn_cut, "gap_cut": tuned.stages.gap_cut,
                                "track_building": "best_edges", "join_pieces": None, "vertex_shifts": None}
    assert tuned.stages.gap_cut is None or tuned.stages.gap_cut < tuned.stages.gnn_cut
    before = json.loads((DEFAULT_BUNDLE / "pipeline.json").read_text())["provenance"].get("gnn_cut_tuned")
    if before is not None:  # the shipped bundle's own tuning stays on record
        assert record["earlier"][0] == {k: v for k, v in before.items() if k != "earlier"}


def test_tune_cut_takes_each_validation_event_once_and_every_event_of_a_directory(tiny_bundle, tmp_path, capsys):
    assert main(["tune-cut", str(tiny_bundle), "--validation", str(SAMPLE_EVENT), "--validation",
                 str(SAMPLE_EVENT)]) == 2
    assert "names the validation event of --validation" in capsys.readouterr().err
    assert main(["tune-cut", str(tiny_bundle), "--validation-random", "300", "--validation-random", "300"]) == 2
    assert "--validation-random 300 names the validation event of --validation-random 300 again" in \
        capsys.readouterr().err
    assert main(["simulate", "--output", str(tmp_path / "val"), "--events", "2", "--num-particles", "300"]) == 0
    capsys.readouterr()
    assert main(["tune-cut", str(tiny_bundle), "--validation", str(tmp_path / "val"), "--min-pt", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "validation: " + str(tmp_path / "val" / "event000000000") in out
    assert "validation: " + str(tmp_path / "val" / "event000000001") in out


def test_cuts_the_validation_cannot_tell_apart_are_noted(capsys):
    # the sample event is sparse: every cut finds the same particles without a fake
    assert main(["tune-cut", str(DEFAULT_BUNDLE), "--validation", str(SAMPLE_EVENT)]) == 0
    err = capsys.readouterr().err
    assert "cuts (0.1 to 0.95) score the same best" in err and "do not tell them apart" in err
    assert err.rstrip().endswith("would tell them apart")


def test_tune_cut_write_refuses_a_bundle_it_cannot_write_before_tuning(tmp_path, capsys, monkeypatch):
    import os

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a read-only bundle answers
    assert main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--write"]) == 2
    captured = capsys.readouterr()
    assert "--write: the bundle" in captured.err and "is not writable" in captured.err
    assert "<- best" not in captured.out  # refused before any tuning


def test_a_pipeline_json_that_cannot_be_replaced_leaves_no_stray_file(tmp_path, monkeypatch):
    import os

    from trackserve.bundle import write_pipeline_json
    from trackserve.errors import BundleError

    def refuse(source, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(BundleError, match="cannot write .*pipeline.json: Permission denied"):
        write_pipeline_json({"schema_version": 1}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tune_cut_command_needs_a_validation_event(tiny_bundle, capsys):
    assert main(["tune-cut", str(tiny_bundle)]) == 2
    assert "give at least one validation event: --validation EVENT" in capsys.readouterr().err
    assert main(["tune-cut", str(tiny_bundle), "--validation-random", "0"]) == 2
    err = capsys.readouterr().err
    assert "give a number of particles >= 1" in err and "note:" not in err  # refused before the seed's note
    # QA, 2026-12-02: a typo's count of particles was simulated until the memory ran out
    assert main(["tune-cut", str(tiny_bundle), "--validation-random", "100000000"]) == 2
    assert "--validation-random 100000000: an event of 100,000,000 particles" in capsys.readouterr().err
    assert main(["tune-cut", str(tiny_bundle), "--validation-particles", "/nonexistent.csv"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_choice_among_cuts_that_find_nothing_is_not_written_and_figures_are_json(tiny_bundle, tmp_path, capsys):
    from trackserve.paths import DEFAULT_BUNDLE

    # Random networks find no particle at any cut (efficiency 0): no choice to store.
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = (bundle / "pipeline.json").read_text()
    argv = ["--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3", "--write"]
    assert main(["tune-cut", str(bundle), *argv]) == 2
    assert "no candidate finds a single particle of these validation events" in capsys.readouterr().err
    assert (bundle / "pipeline.json").read_text() == before
    # A bundle that tracks them: its figures stored as numbers in [0, 1] (or null where undefined).
    shipped = tmp_path / "shipped"
    shutil.copytree(DEFAULT_BUNDLE, shipped)
    assert main(["tune-cut", str(shipped), *argv]) == 0
    figures = load_bundle(shipped).provenance["gnn_cut_tuned"]["figures"]
    assert all(value is None or 0 <= value <= 1 for value in figures.values())


def test_several_validation_events_are_averaged_and_the_bound_holds_on_each(pipeline, event):
    from trackserve.events.simulate import SimulationConfig, simulate_event
    from trackserve.events.geometry import load_geometry

    other = simulate_event(load_geometry(), SimulationConfig(num_particles=300), seed=(7, 1), event_id=1)
    cuts, gaps = (0.5, 0.8), (0.2,)
    both, rows = tune_gnn_cut(pipeline, [event, other], min_pt=0.5, min_hits=3, cuts=cuts, gap_cuts=gaps)
    _, first = tune_gnn_cut(pipeline, event, min_pt=0.5, min_hits=3, cuts=cuts, gap_cuts=gaps)
    _, second = tune_gnn_cut(pipeline, other, min_pt=0.5, min_hits=3, cuts=cuts, gap_cuts=gaps)
    for row, a, b in zip(rows, first, second):
        assert (row.cut, row.gap_cut) == (a.cut, a.gap_cut) == (b.cut, b.gap_cut)
        np.testing.assert_allclose(row.efficiency, np.nanmean([a.efficiency, b.efficiency]))
        np.testing.assert_allclose(row.fake_rate, np.nanmean([a.fake_rate, b.fake_rate]))
        assert row.worst_fake_rate == max(a.worst_fake_rate, b.worst_fake_rate)
    bound = sorted(row.worst_fake_rate for row in rows)[1]
    chosen, _ = tune_gnn_cut(pipeline, [event, other], min_pt=0.5, min_hits=3, cuts=cuts, gap_cuts=gaps,
                             max_fake_rate=bound)
    assert chosen.worst_fake_rate <= bound
    assert all(row.score <= chosen.score for row in rows if row.worst_fake_rate <= bound)
    with pytest.raises(InputError, match="no validation event given"):
        tune_gnn_cut(pipeline, [])


def test_piece_joining_is_tried_at_the_cuts_and_scored_as_the_pipeline_would(pipeline, event):
    lowest = pipeline.stages.prune_cut or 0.0  # joining below a pruning cut is never tried
    joins = (JoinSettings(0.01, 5.0, 10.0, 0.25, 3), JoinSettings(0.1, 2.0, 10.0, 0.0, 1),
             JoinSettings(lowest, 500.0, 2000.0, 1.0, 3))
    validation = ValidationSet(pipeline, event, "best_edges")
    best, rows = tune_piece_joining(pipeline, validation, cut=0.8, gap_cut=0.5, candidates=joins, min_pt=0.5,
                                    min_hits=3)
    assert [row.join for row in rows] == [None, *joins]
    assert all((row.cut, row.gap_cut) == (0.8, 0.5) for row in rows)
    assert best == max(rows, key=lambda row: row.preference)
    assert rows[0] == validation.figures(0.8, 0.5, min_pt=0.5, min_hits=3)
    assert len({(row.efficiency, row.fake_rate) for row in rows}) > 1  # the settings change the tracks
    row = rows[1]
    stages = dataclasses.replace(pipeline.stages, gnn_cut=0.8, gap_cut=0.5, track_building="best_edges",
                                 join_pieces=row.join)
    labels = Pipeline(dataclasses.replace(pipeline.bundle, stages=stages),
                      config=RuntimeConfig(intra_op_threads=1, graph_threads=1)).run_event(event).labels
    figures = evaluate_event(event, event.hits["hit_id"], labels, min_pt=0.5, min_hits=3)
    np.testing.assert_equal((row.efficiency, row.fake_rate), (figures["efficiency"], figures["fake_rate"]))
    bound = rows[0].worst_fake_rate
    chosen, _ = tune_piece_joining(pipeline, validation, cut=0.8, gap_cut=0.5, candidates=joins, min_pt=0.5,
                                   min_hits=3, max_fake_rate=bound)
    assert chosen.worst_fake_rate <= bound
    with pytest.raises(InputError, match="needs track building 'best_edges', not 'components'"):
        tune_piece_joining(pipeline, ValidationSet(pipeline, event, "components"), cut=0.8)
    with pytest.raises(InputError, match="no candidate piece-joining settings"):
        tune_piece_joining(pipeline, validation, cut=0.8, candidates=())
    if pipeline.stages.prune_cut is not None:
        below = JoinSettings(lowest / 2, 5.0, 10.0, 0.25, 3)
        _, tried = tune_piece_joining(pipeline, validation, cut=0.8, gap_cut=0.5, candidates=(below, joins[0]),
                                      min_pt=0.5, min_hits=3)
        assert [row.join for row in tried] == [None, joins[0]]
    assert len(CANDIDATE_JOINS) == len(set(CANDIDATE_JOINS)) == 72


def test_tune_cut_command_joins_pieces_and_writes_the_settings(tmp_path, capsys):
    out, tuned, record = _tuned_copy(tmp_path, capsys, "--join-pieces")
    assert "piece joining at GNN cut" in out and "no joining" in out
    assert record["joins_tried"] == {name: list(values) for name, values in CANDIDATE_JOIN_GRID.items()}
    assert len(CANDIDATE_JOINS) == np.prod([len(values) for values in CANDIDATE_JOIN_GRID.values()])
    chosen = tuned.stages.join_pieces
    assert record["stages"]["join_pieces"] == (None if chosen is None else chosen.to_dict())
    assert "then the piece joining at them" in record["rule"]
    assert main(["tune-cut", str(tuned.directory), "--validation", str(SAMPLE_EVENT), "--track-building",
                 "components", "--join-pieces"]) == 2
    assert "--join-pieces joins the pieces of best edges" in capsys.readouterr().err


def test_joining_at_several_cut_pairs_keeps_the_best_of_all(pipeline, event):
    joins = (JoinSettings(0.01, 5.0, 10.0, 0.25, 3), JoinSettings(0.0, 500.0, 2000.0, 1.0, 3))
    validation = ValidationSet(pipeline, event, "best_edges")
    _, rows = tune_gnn_cut(pipeline, validation, cuts=(0.5, 0.65, 0.8), gap_cuts=(0.3, 0.5), min_pt=0.5, min_hits=3)
    ranked = best_rows(rows, 3)
    assert len(ranked) == 3 and ranked == sorted(rows, key=lambda row: row.preference, reverse=True)[:3]
    chosen, tables = tune_cuts_and_joining(pipeline, validation, rows, pairs=3, candidates=joins, min_pt=0.5, min_hits=3)
    assert len(tables) == 3
    for row, table in zip(ranked, tables):
        # each pair's best and rows are tune_piece_joining's at that pair
        assert table == tune_piece_joining(pipeline, validation, cut=row.cut, gap_cut=row.gap_cut, candidates=joins,
                                           min_pt=0.5, min_hits=3)
    bests = [max(rows_at_pair, key=lambda row: row.preference) for _, rows_at_pair in tables]
    assert bests == [pair_best for pair_best, _ in tables]
    top = max(best.score for best in bests)
    assert chosen == next(best for best in bests if best.score == top)  # the earliest pair of the best score
    single, tables_one = tune_cuts_and_joining(pipeline, validation, rows, pairs=1, candidates=joins, min_pt=0.5,
                                               min_hits=3)
    assert single == bests[0] and len(tables_one) == 1
    assert chosen.score >= single.score
    # a bound: only pairs within it are tried, and the choice keeps it
    bound = sorted(row.worst_fake_rate for row in rows)[len(rows) // 2]
    within = best_rows(rows, len(rows), bound)
    assert within and all(row.worst_fake_rate <= bound for row in within)
    chosen, _ = tune_cuts_and_joining(pipeline, validation, rows, pairs=2, candidates=joins, min_pt=0.5, min_hits=3,
                                      max_fake_rate=bound)
    assert chosen.worst_fake_rate <= bound and (chosen.cut, chosen.gap_cut) in [(r.cut, r.gap_cut) for r in within[:2]]
    for count in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="number of cut pairs"):
            best_rows(rows, count)
    with pytest.raises(InputError, match="keeps the fake rate at or below 0"):
        tune_cuts_and_joining(pipeline, validation, [row for row in rows if row.worst_fake_rate > 0], pairs=2,
                              candidates=joins, max_fake_rate=0.0)
    with pytest.raises(InputError, match="no cut and gap-cut rows"):
        tune_cuts_and_joining(pipeline, validation, [], candidates=joins)


def test_tune_cut_command_joins_at_several_cut_pairs(tmp_path, capsys):
    out, tuned, record = _tuned_copy(tmp_path, capsys, "--fill-gaps", "--join-pieces", "--join-at", "3")
    assert "piece joining at the 3 best cut pairs" in out
    assert len(record["join_pairs_tried"]) == 3
    stages = record["stages"]
    assert [stages["gnn_cut"], stages["gap_cut"]] in record["join_pairs_tried"]
    assert "at each of the 3 best pairs" in record["rule"]
    assert (tuned.stages.gnn_cut, tuned.stages.gap_cut) == (stages["gnn_cut"], stages["gap_cut"])
    bundle = str(tuned.directory)
    assert main(["tune-cut", bundle, "--validation", str(SAMPLE_EVENT), "--join-at", "2"]) == 2
    assert "give it with --join-pieces" in capsys.readouterr().err
    assert main(["tune-cut", bundle, "--validation", str(SAMPLE_EVENT), "--join-pieces", "--join-at", "0"]) == 2
    assert "--join-at 0: give a number of cut pairs >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_event():
    """A simulated event of 300 particles (fast to read, write and run)."""
    from trackserve.events.geometry import load_geometry
    from trackserve.events.simulate import SimulationConfig, simulate_event

    return simulate_event(load_geometry(), SimulationConfig(num_particles=300), seed=(7, 1), event_id=1)


def _particle_hits_and_pt(event):
    """Each particle's number of hits and pT, as the metrics count them."""
    from trackserve.events.metrics import event_particle_pt

    pids = np.asarray(event.truth["particle_id"], dtype=np.int64)
    ids, hits = np.unique(pids[pids != 0], return_counts=True)
    pt_ids, pt = event_particle_pt(event)
    assert np.array_equal(ids, pt_ids)
    return hits, pt


def test_events_without_a_particle_the_selection_counts_are_refused(pipeline, small_event):
    hits, pt = _particle_hits_and_pt(small_event)
    check_counted_particles([small_event], min_pt=1.0, min_hits=5)  # it has such particles: no error
    with pytest.raises(InputError, match=rf"none with pT >= 1000 GeV \(the highest: {pt.max():.3g} GeV\); "
                                         r"lower min_pt, so that"):
        check_counted_particles([small_event], min_pt=1000.0, min_hits=5)
    with pytest.raises(InputError, match=rf"none with >= 1000 hits \(the most: {hits.max()}\).*; lower min_hits,"):
        check_counted_particles([small_event], min_pt=0.0, min_hits=1000)
    # Fast particles and long ones, but none both: either bound can be lowered.
    fastest = pt >= pt.max()
    assert hits.max() > hits[fastest].max()
    with pytest.raises(InputError, match="but none with both; lower --min-pt or --min-hits"):
        check_counted_particles([small_event], min_pt=float(pt.max()), min_hits=int(hits[fastest].max()) + 1,
                                names=("--min-pt", "--min-hits"))
    noise = dataclasses.replace(small_event, truth={**small_event.truth,
                                                    "particle_id": np.zeros_like(small_event.truth["particle_id"])})
    with pytest.raises(InputError, match=r"has only noise hits \(particle_id 0 in the truth\)"):
        check_counted_particles([noise], min_pt=0.0, min_hits=0)
    with pytest.raises(InputError, match=r"the 2 validation events have no particle with pT >= 1000 GeV"):
        check_counted_particles([small_event, noise], min_pt=1000.0, min_hits=5)
    check_counted_particles([small_event, noise], min_pt=1.0, min_hits=5)  # one event with particles is enough
    # The tuning functions refuse them too, rather than choose a cut on NaN efficiencies.
    with pytest.raises(InputError, match="has only noise hits"):
        tune_gnn_cut(pipeline, noise, cuts=(0.5,))
    with pytest.raises(InputError, match="lower min_pt"):
        tune_piece_joining(pipeline, ValidationSet(pipeline, small_event, "best_edges"), cut=0.5, min_pt=1000.0,
                           candidates=CANDIDATE_JOINS[:1])



def test_tune_cut_command_refuses_validation_events_without_a_counted_particle(small_event, tmp_path, capsys):
    from trackserve.events.trackml import write_event

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    empty = tmp_path / "empty"  # a zero-hit event: each file only its header
    empty.mkdir()
    (empty / "event000000011-hits.csv").write_text("hit_id,x,y,z,volume_id,layer_id,module_id\n")
    (empty / "event000000011-truth.csv").write_text("hit_id,particle_id,tx,ty,tz,tpx,tpy,tpz,weight\n")
    (empty / "event000000011-particles.csv").write_text("particle_id,particle_type,vx,vy,vz,px,py,pz,q,nhits\n")
    small = tmp_path / "small"
    write_event(small_event, small)
    hits, pt = _particle_hits_and_pt(small_event)
    for options, expected in (
            (["--validation", str(empty)], "has no hits; give validation events with hits"),
            (["--validation", str(small), "--min-pt", "1000"],
             f"none with pT >= 1000 GeV (the highest: {pt.max():.3g} GeV); lower --min-pt, so that"),
            (["--validation", str(small), "--min-hits", "1000"], f"(the most: {hits.max()})"),
            (["--validation", str(small), "--min-hits", "1000"], "; lower --min-hits, so that")):
        assert main(["tune-cut", str(bundle), *options, "--write"]) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1 and "Traceback" not in err
        assert "(--min-pt) and >= " in err
        # Nothing written: the bundle keeps its cut, gap cut and joining.
        assert (bundle / "pipeline.json").read_text() == (DEFAULT_BUNDLE / "pipeline.json").read_text()
    # with another event that has particles to count, the empty one is named, not silently averaged in
    assert main(["tune-cut", str(bundle), "--validation", str(small), "--validation", str(empty)]) == 0
    assert f"note: validation event {empty / 'event000000011'} has no particle the selection counts" in \
        capsys.readouterr().err


@pytest.mark.parametrize("seed", ["-1", str(2**63), "99999999999999999999"])
def test_tune_cut_command_refuses_seeds_train_does_not_take(seed, capsys):
    assert main(["tune-cut", str(DEFAULT_BUNDLE), "--seed", seed, "--validation-random", "100"]) == 2
    err = capsys.readouterr().err
    assert f"--seed {seed} must be in 0..{2**63 - 1}" in err and err.count("\n") == 1


@pytest.mark.parametrize("rate", ["1.5", "-0.1", "nan"])
def test_tune_cut_command_refuses_a_fake_rate_bound_outside_0_1_before_any_work(rate, capsys):
    assert main(["tune-cut", str(DEFAULT_BUNDLE), "--max-fake-rate", rate, "--validation-random", "100"]) == 2
    err = capsys.readouterr().err
    assert f"--max-fake-rate {float(rate):g}: give a fake rate in [0, 1]" in err and err.count("\n") == 1


def test_tune_cut_command_takes_the_highest_seed(capsys):
    assert main(["tune-cut", str(DEFAULT_BUNDLE), "--seed", str(2**63 - 1), "--validation-random", "100",
                 "--min-pt", "0"]) == 0
    assert f"seed {2**63 - 1}, stream" in capsys.readouterr().out


def test_tune_cut_refuses_events_the_bundle_trained_on_and_copies_of_them(tmp_path, capsys):
    assert main(["simulate", "--output", str(tmp_path / "sim"), "--events", "2", "--num-particles", "30"]) == 0
    assert main(["simulate", "--output", str(tmp_path / "val"), "--first-event-id", "2", "--num-particles", "30",
                 "--seed", "1"]) == 0
    assert main(["train", "--quick", "--quiet", "--threads", "1", "--output", str(tmp_path / "b"), "--events",
                 str(tmp_path / "sim"), "--validation", str(tmp_path / "val" / "event000000002")]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "sim", copy)
    capsys.readouterr()
    for given in (tmp_path / "sim" / "event000000001", copy):
        assert main(["tune-cut", str(tmp_path / "b"), "--validation", str(given)]) == 2
        assert "is one of the events the bundle's networks trained on" in capsys.readouterr().err
    # train itself refuses a copy of a training event as its validation event
    assert main(["train", "--quick", "--quiet", "--threads", "1", "--output", str(tmp_path / "c"), "--events",
                 str(tmp_path / "sim"), "--validation", str(copy / "event000000000")]) == 2
    assert "is one of the training events" in capsys.readouterr().err


def test_tune_cut_simulates_with_the_bundles_training_seed_unless_told(tiny_bundle, capsys, monkeypatch):
    import trackserve.commands.tune_cut as tune_cut

    seeds = []
    original = tune_cut._validation_events
    monkeypatch.setattr(tune_cut, "_validation_events",
                        lambda args, spec, bundle: seeds.append(args.seed) or original(args, spec, bundle))
    recorded = tune_cut._recorded_seed(load_bundle(tiny_bundle).provenance)
    assert main(["tune-cut", str(tiny_bundle), "--validation-random", "300", "--min-pt", "0.5"]) == 0
    note = capsys.readouterr().err
    assert seeds[-1] == (recorded or 0) and f"simulating the validation events with seed {seeds[-1]}" in note
    assert main(["tune-cut", str(tiny_bundle), "--validation-random", "300", "--min-pt", "0.5", "--seed", "4"]) == 0
    assert seeds[-1] == 4 and "simulating the validation events" not in capsys.readouterr().err


def test_settings_that_build_no_track_rank_below_every_one_that_builds_some():
    from trackserve.runtime.cut_tuning import CutFigures

    nothing = CutFigures(0.9, 0.0, float("nan"), float("nan"), fake_rates=(float("nan"),))
    poor = CutFigures(0.1, 0.2, 0.5, 0.0, fake_rates=(0.5,))  # more fakes than efficiency: score -0.3
    assert poor.score < nothing.score and not nothing.builds_tracks and poor.builds_tracks
    assert max([nothing, poor], key=lambda row: row.preference) is poor
    assert nothing.worst_fake_rate != nothing.worst_fake_rate  # undefined, so no fake-rate bound holds for it


def test_settings_without_tracks_on_one_event_of_several_still_compete_by_their_score():
    from trackserve.runtime.cut_tuning import CutFigures

    good = CutFigures(0.5, 0.9, 0.01, 0.0, fake_rates=(0.01, float("nan")))  # no track on a tiny second event
    poor = CutFigures(0.1, 0.05, 0.9, 0.0, fake_rates=(0.9, 0.9))
    assert good.builds_tracks and max([poor, good], key=lambda row: row.preference) is good
    assert good.worst_fake_rate == 0.01


def test_a_fake_rate_bound_where_no_setting_builds_a_track_says_so():
    from types import SimpleNamespace

    from trackserve.runtime.cut_tuning import CutFigures, _best

    nothing = [CutFigures(cut, 0.0, float("nan"), float("nan"), fake_rates=(float("nan"),)) for cut in (0.1, 0.5)]
    validation = SimpleNamespace(events=[SimpleNamespace(name="event000000007")])
    with pytest.raises(InputError, match=r"no candidate cut builds a single track that counts \(of at least the hits "
                                         r"--min-hits asks for\) on event000000007, so no fake rate can be held to "
                                         r"0.02: the bundle's GNN passes too few of their edges"):
        _best(nothing, 0.02, validation, "cut")


def test_write_refuses_a_choice_where_no_cut_builds_a_track(tmp_path, capsys):
    import shutil

    from trackserve.paths import DEFAULT_BUNDLE

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    before = (bundle / "pipeline.json").read_text()
    # the longest particle of the sample event has 17 hits: no track the shipped bundle builds has them all
    argv = ["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0", "--min-hits", "17"]
    assert main(argv) == 0
    assert "no candidate builds a single track of at least 17 hits (--min-hits)" in capsys.readouterr().err
    assert main([*argv, "--write"]) == 2
    assert "there is no choice to store: nothing was written" in capsys.readouterr().err
    assert (bundle / "pipeline.json").read_text() == before


@pytest.mark.parametrize("missing", ["truth", "particles"])
def test_tune_cut_command_names_a_validation_event_without_truth(tiny_bundle, tmp_path, capsys, missing):
    # The check of counted particles read the truth first and crashed where it was missing.
    for part in ("hits", "truth", "particles"):
        if part != missing:
            name = f"{SAMPLE_EVENT.name}-{part}.csv.gz"
            shutil.copy(SAMPLE_EVENT.parent / name, tmp_path / name)
    assert main(["tune-cut", str(tiny_bundle), "--validation", str(tmp_path / SAMPLE_EVENT.name)]) == 2
    assert (f"event {SAMPLE_EVENT.name} ({tmp_path / SAMPLE_EVENT.name}): tuning the GNN cut needs its truth and "
            f"particles files, and it has no {missing} file") in capsys.readouterr().err
    with pytest.raises(InputError, match="needs its truth and particles files, and it has no truth and no particles file"):
        check_counted_particles([read_event(tmp_path / SAMPLE_EVENT.name, parts=())], min_pt=1.0, min_hits=5)


def test_copies_of_one_validation_event_or_table_are_refused(tiny_bundle, tmp_path, capsys):
    """QA, 2026-12-02: a copy of an event (or of a particles table, which simulates the same
    event) under another name was taken, and the event counted twice in the means."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in SAMPLE_EVENT.parent.glob(SAMPLE_EVENT.name + "-*"):
        shutil.copy(path, copy / path.name)
    assert main(["tune-cut", str(tiny_bundle), "--validation", str(SAMPLE_EVENT), "--validation",
                 str(copy / SAMPLE_EVENT.name)]) == 2
    err = capsys.readouterr().err
    assert "names the validation event of --validation" in err and "(a copy of it: the same contents)" in err
    table = SAMPLE_EVENT.parent / f"{SAMPLE_EVENT.name}-particles.csv.gz"
    import gzip

    (tmp_path / "table.csv").write_bytes(gzip.decompress(table.read_bytes()))  # the other compression: the same table
    assert main(["tune-cut", str(tiny_bundle), "--validation-particles", str(table), "--validation-particles",
                 str(tmp_path / "table.csv")]) == 2
    assert "(a copy of it: the same contents)" in capsys.readouterr().err
    assert main(["tune-cut", str(tiny_bundle), "--validation-particles", str(tmp_path)]) == 2
    assert f"--validation-particles {tmp_path}: is a directory" in capsys.readouterr().err


def test_a_seed_with_no_simulated_event_and_a_recorded_seed_out_of_range_are_named(tiny_bundle, tmp_path, capsys):
    assert main(["tune-cut", str(tiny_bundle), "--validation", str(SAMPLE_EVENT), "--seed", "5"]) == 2
    assert "--seed 5: no validation event is simulated" in capsys.readouterr().err
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    data = json.loads((bundle / "pipeline.json").read_text())
    data["provenance"]["settings"] = {"seed": 2**70}
    (bundle / "pipeline.json").write_text(json.dumps(data))
    assert main(["tune-cut", str(bundle), "--validation-random", "100"]) == 2
    assert "the training seed the bundle records (provenance.settings.seed), the default of --seed," in \
        capsys.readouterr().err


@pytest.mark.parametrize("settings, tuned, history", [
    ("x", None, None),
    ({"seed": 1}, {"gnn_cut": 0.5, "earlier": None}, [{"gnn_cut": 0.5}]),
    ({"seed": 1}, {"gnn_cut": 0.5, "earlier": "by hand"}, [{"gnn_cut": 0.5}, "by hand"]),
    ({"seed": 1}, "tuned by hand", ["tuned by hand"]),
])
def test_write_keeps_odd_provenance_and_the_file_s_permissions(tmp_path, capsys, settings, tuned, history):
    """QA, 2026-12-02: provenance of another form than trackserve writes (free-form) raised
    AttributeError / TypeError (after the whole tuning), spread a string into the history one
    character per entry, or dropped it; and the new pipeline.json took the umask's
    permissions (a private one became world-readable)."""
    import os
    import stat

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    data = json.loads((bundle / "pipeline.json").read_text())
    data["provenance"]["settings"] = settings
    data["provenance"]["gnn_cut_tuned"] = tuned
    if tuned is None:
        del data["provenance"]["gnn_cut_tuned"]
    (bundle / "pipeline.json").write_text(json.dumps(data))
    os.chmod(bundle / "pipeline.json", 0o600)
    assert main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3",
                 "--track-building", "components", "--write"]) == 0
    record = load_bundle(bundle).provenance["gnn_cut_tuned"]
    assert record.get("earlier") == history
    assert stat.S_IMODE((bundle / "pipeline.json").stat().st_mode) == 0o600


def test_joining_and_gap_cuts_below_the_pruning_cut_are_neither_tried_nor_recorded(tmp_path, capsys):
    """QA, 2026-12-02: with a pruning cut above every candidate ``min_score``, --join-pieces
    tried no joining setting, said it tried the 10 best of 72, wrote "no joining" over the
    bundle's own and recorded the whole grid as tried; --fill-gaps recorded all 18 gap cuts."""
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    data = json.loads((bundle / "pipeline.json").read_text())
    data["stages"].update(prune_cut=0.5, gap_cut=0.65)
    data["stages"]["join_pieces"]["min_score"] = 0.5
    (bundle / "pipeline.json").write_text(json.dumps(data))
    before = (bundle / "pipeline.json").read_bytes()
    assert main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--join-pieces", "--write"]) == 2
    err = capsys.readouterr().err
    assert "--join-pieces: every candidate piece-joining setting takes edges above 0.01, 0.1, below the bundle's " \
           "pruning cut 0.5" in err
    assert (bundle / "pipeline.json").read_bytes() == before
    with pytest.raises(InputError, match="no joining setting can be tried on this bundle"):
        joins_at_or_above_prune_cut(CANDIDATE_JOINS, 0.5)
    assert joins_at_or_above_prune_cut(CANDIDATE_JOINS, 0.05) == [j for j in CANDIDATE_JOINS if j.min_score == 0.1]
    assert main(["tune-cut", str(bundle), "--validation", str(SAMPLE_EVENT), "--min-pt", "0.5", "--min-hits", "3",
                 "--fill-gaps", "--write"]) == 0
    record = load_bundle(bundle).provenance["gnn_cut_tuned"]
    assert record["gap_cuts_tried"] == [cut for cut in CANDIDATE_GAP_CUTS if cut >= 0.5]
