"""Quality and speed of a shipped bundle (the default unless told) on held-out simulated events and on real TrackML data.

Events:

* held-out simulated events at full density, three of each kind unless told
  (``--per-kind``): the particle tables of the real TrackML events 1000 and 21139
  simulated with seeds no training event used, and events of 8,500 random particles
  (about 100k hits each); each kind's figures are also pooled over its events;
* the real TrackML event shipped in the repository (``data/event000000001``, 5 % of its
  particles) and the real barrel subset of event 1000 (``../shared/data/trackml/
  barrel_subset_event000001000/20-density``), when present.

For each event the bundle runs stage by stage on the runtime :class:`Pipeline` (ONNX
Runtime), and the script reports the edge efficiency and purity after the graph, the
filter and the GNN cut (against the truth graph; efficiency for all particles and for
pT >= 1 GeV), the double-majority track efficiency for particles with pT >= 1 GeV and at
least 5 hits, the fake and duplicate rates, the same efficiency split by where along the
beam each particle was produced (``|vz|``) and by its direction (``|η|``: barrel, between,
endcaps), how the particles not found are lost (merged into another track, or split,
and then how many of the steps between their hits each stage kept), and the time of
each stage (these detailed tables for the first event of each kind, whose seed every
earlier run used). It writes the
``default_bundle`` section of ``benchmarks/RESULTS.md`` (for another bundle given with
``--bundle``, the section ``bundle_<its directory name>``).

Usage: ``python benchmarks/bench_default_bundle.py [--bundle DIR] [--threads N] [--per-kind N] [--small]
[--vertex-shifts=MM,MM,...]`` (``--small`` simulates 1/10 of the particles, a quick check that the
script works; ``--vertex-shifts`` runs each event once per shift and merges the passes, as
``trackserve run --vertex-shifts`` does, into the section ``default_bundle_vertex_shifts``;
``--vertex-shifts 0`` on a bundle that carries shifts runs one pass, into its section with
the suffix ``_one_pass``). A kind of events whose data is missing (no ``../shared``) is
left out and the section says so as a reduced run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's trackserve, not an installed one
sys.path.insert(1, str(Path(__file__).resolve().parent))
from _results import (LoadWatch, bundle_section, load_bundle_option, machine_description, positive_int,  # noqa: E402
                      publish, reduced_run_note, repo_relative)

from trackserve.cli import joined_list_values  # noqa: E402
from trackserve.errors import InputError  # noqa: E402
from trackserve.events.geometry import load_geometry  # noqa: E402
from trackserve.events.metrics import evaluate_event, event_particle_pt, found_particles  # noqa: E402
from trackserve.events.simulate import SimulationConfig, simulate_event  # noqa: E402
from trackserve.events.trackml import read_event, read_particles  # noqa: E402
from trackserve.events.truth_graph import truth_graph  # noqa: E402
from trackserve.paths import DEFAULT_BUNDLE, SAMPLE_EVENT  # noqa: E402
from trackserve.runtime.config import RuntimeConfig  # noqa: E402
from trackserve.runtime.cuts import logit_threshold  # noqa: E402
from trackserve.runtime.pipeline import Pipeline  # noqa: E402
from trackserve.runtime.track_building import build_tracks, bundle_track_options  # noqa: E402
from trackserve.runtime.vertex_shifts import parse_vertex_shifts, shifted_features, shifts_in_words  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared" / "data" / "trackml"
TABLES = ("event000001000-particles.csv", "event000021139-particles.csv")
BARREL = SHARED / "barrel_subset_event000001000" / "20-density"
#: Seed of the held-out simulated events; the training used seeds (S, stream, source, i) with small S.
HELD_OUT_SEED = 20_261_128
MIN_PT, MIN_HITS = 1.0, 5
TARGET_EFFICIENCY, TARGET_FAKE_RATE = 0.95, 0.02
#: Bin edges of the efficiency split: |vz| of the particle's production point (mm), and |eta|.
VZ_EDGES = (20.0, 50.0, 100.0)
ETA_EDGES = (1.0, 2.0)


def held_out_events(small: bool, per_kind: int = 1, skipped: list[str] | None = None):
    """(kind, name, event) of the held-out simulated events: ``per_kind`` events of each kind.

    The first event of a kind keeps the seed it always had (the figures stay comparable
    between runs and bundles); the others add a third seed component. A kind whose
    particles table is missing is left out and said in ``skipped``."""
    geometry = load_geometry()
    kinds = []
    for index, table_name in enumerate(TABLES):
        path = SHARED / table_name
        if not path.exists():
            print(f"skipping {table_name}: {path} not found", file=sys.stderr)
            if skipped is not None:
                skipped.append(f"no events simulated from {table_name} ({repo_relative(path)} not found)")
            continue
        table = read_particles(path)
        if small:
            keep = np.arange(len(table["particle_id"])) % 10 == 0
            table = {key: value[keep] for key, value in table.items()}
        kinds.append((f"simulated from {table_name.split('-')[0]} particles", table, index))
    config = replace(SimulationConfig(), num_particles=850 if small else 8500)
    kinds.append((f"simulated, {config.num_particles} random particles", config, 9))
    events = []
    for kind, source, index in kinds:
        for k in range(per_kind):
            seed = (HELD_OUT_SEED, index) if k == 0 else (HELD_OUT_SEED, index, k)
            name = kind if k == 0 else f"{kind}, held-out seed {k + 1}"
            events.append((kind, name, simulate_event(geometry, source, seed=seed, event_id=index if k == 0 else 100 * k + index)))
    return events


def result_section(bundle_path, bundle_shifts, run_shifts, shifts_given: bool) -> tuple[str, bool]:
    """``(section, by_option)``: the RESULTS.md section of a run of the bundle at ``bundle_path``
    whose stages carry ``bundle_shifts`` and which ran at ``run_shifts`` (None: one pass), and
    whether ``--vertex-shifts`` (``shifts_given``) changed how it runs. Shifts given here,
    one pass on a bundle that carries shifts included, get a section of their own (suffix
    ``_vertex_shifts`` or ``_one_pass``): a bundle's own section holds how it runs by itself."""
    by_option = shifts_given and bundle_shifts != run_shifts
    suffix = ("_vertex_shifts" if run_shifts is not None else "_one_pass") if by_option else ""
    return bundle_section(bundle_path, "default_bundle", "bundle_") + suffix, by_option


def real_events(skipped: list[str] | None = None):
    """(kind, name, event) of the real TrackML events available (each its own kind); one
    missing is said in ``skipped``."""
    name = "real: data/event000000001 (5 % of the particles)"
    events = [(name, name, read_event(SAMPLE_EVENT))]
    if BARREL.with_name(BARREL.name + "-hits.csv").exists():
        name = "real: barrel subset of event 1000 (20 % of particles)"
        events.append((name, name, read_event(BARREL, parts=("truth", "particles"))))
    else:
        print(f"skipping the barrel subset: {BARREL} not found", file=sys.stderr)
        if skipped is not None:
            skipped.append(f"without the real barrel subset ({repo_relative(BARREL)} not found)")
    return events


def _edge_keys(edges: np.ndarray, n: int) -> np.ndarray:
    """Sorted unique keys of the unordered pairs ``edges [2, M]`` of ``n`` hits."""
    return np.unique(np.minimum(edges[0], edges[1]) * n + np.maximum(edges[0], edges[1]))


def _edge_figures(edges: np.ndarray, keys: np.ndarray, truth: np.ndarray, pids: np.ndarray, high: np.ndarray,
                  n: int) -> tuple[float, float, float]:
    truth_keys = np.minimum(truth[0], truth[1]) * n + np.maximum(truth[0], truth[1])
    found = np.isin(truth_keys, keys)
    same = (pids[edges[0]] == pids[edges[1]]) & (pids[edges[0]] != 0)
    mean = lambda values: float(values.mean()) if values.size else float("nan")  # noqa: E731
    return mean(found), mean(found[high]), mean(same)


def _bin_names(edges: tuple[float, ...], unit: str) -> list[str]:
    bounds = (0.0,) + edges
    return [f"{lo:g}-{hi:g}{unit}" for lo, hi in zip(bounds, edges)] + [f">= {edges[-1]:g}{unit}"]


def _rows_of(table_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each of ``ids``'s row in ``table_ids`` and whether it is there at all (row 0 when not)."""
    if table_ids.size == 0:
        return np.zeros(ids.size, dtype=np.int64), np.zeros(ids.size, dtype=bool)
    order = np.argsort(table_ids, kind="stable")
    rows = order[np.minimum(np.searchsorted(table_ids[order], ids), table_ids.size - 1)]
    return rows, table_ids[rows] == ids


def particle_matching(event, pids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, sizes, found, pt)`` of every particle of ``labels`` (:func:`found_particles`),
    with the pT the track figures select on (:func:`evaluate_event`)."""
    ids, sizes, found = found_particles(pids, labels, min_track_hits=MIN_HITS)
    pt_ids, pt_values = event_particle_pt(event)
    pt = np.asarray(pt_values, dtype=np.float64)[_rows_of(np.asarray(pt_ids, dtype=np.int64), ids)[0]]
    return ids, sizes, found, pt


def efficiency_by_origin(event, matching) -> dict:
    """Found / reconstructable particles (pT >= MIN_PT, >= MIN_HITS hits) in each (|eta| bin, |vz| bin).

    ``matching``: :func:`particle_matching` of the labels. Keys ``(eta_bin, vz_bin)`` index
    :data:`ETA_EDGES` and :data:`VZ_EDGES` bins; values ``(found, reconstructable)``.
    Particles missing from the event's particle table (none in TrackML or simulated
    events) are counted under ``"no production point"``.
    """
    ids, sizes, found, pt = matching
    particles = event.particles or {name: np.zeros(0) for name in ("particle_id", "px", "py", "pz", "vz")}
    rows, known = _rows_of(np.asarray(particles["particle_id"], dtype=np.int64), ids)
    # values of unknown particles are never counted; an empty table gives zeros
    column = lambda name: (np.asarray(particles[name], dtype=np.float64)[rows] if known.any()  # noqa: E731
                           else np.zeros(ids.size))
    px, py, pz, vz = column("px"), column("py"), column("pz"), column("vz")
    eta = np.abs(np.arcsinh(pz / np.maximum(np.hypot(px, py), 1e-12)))
    counted = known & (sizes >= MIN_HITS) & (pt >= MIN_PT)
    eta_bin = np.searchsorted(ETA_EDGES, eta, side="right")
    vz_bin = np.searchsorted(VZ_EDGES, np.abs(vz), side="right")
    table = {}
    for e in range(len(ETA_EDGES) + 1):
        for v in range(len(VZ_EDGES) + 1):
            cell = counted & (eta_bin == e) & (vz_bin == v)
            table[(e, v)] = (int(np.count_nonzero(found & cell)), int(np.count_nonzero(cell)))
    missing = ~known & (sizes >= MIN_HITS) & (pt >= MIN_PT)
    if missing.any():
        table["no production point"] = (int(np.count_nonzero(found & missing)), int(np.count_nonzero(missing)))
    return table


def lost_particles(event, pids: np.ndarray, labels: np.ndarray, matching, stage_keys: dict) -> dict:
    """Why the counted particles (pT >= MIN_PT, >= MIN_HITS hits) that ``labels`` does not find are lost.

    ``merged``: a track holds more than half of the particle's hits, yet does not find it
    (more than half of that track is other hits, or it is too short to be a candidate);
    ``split``: no track holds more than half of them. For the split ones, ``pieces`` is the
    median number of labels their hits carry, and ``steps`` gives, for each stage of
    ``stage_keys`` (name -> its edges' :func:`_edge_keys`), the share of the steps between
    consecutive hits (ordered by distance from the origin) that are edges after that stage.
    ``matching``: :func:`particle_matching` of the labels.
    """
    ids, sizes, found, pt = matching
    counted = (sizes >= MIN_HITS) & (pt >= MIN_PT)
    lost = ids[counted & ~found]
    # the hits of each lost particle, in order along it (distance from the origin)
    hits = np.flatnonzero(np.isin(pids, lost))
    distance = np.sqrt(sum(np.asarray(event.hits[c], dtype=np.float64)[hits] ** 2 for c in ("x", "y", "z")))
    hits = hits[np.lexsort((distance, pids[hits]))]
    owner = pids[hits]
    first = np.r_[True, owner[1:] != owner[:-1]] if hits.size else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(first)
    # the largest number of one particle's hits sharing a label, and how many labels they carry
    pair_order = np.lexsort((labels[hits], owner))
    run_owner, run_label = owner[pair_order], labels[hits][pair_order]
    new_run = np.r_[True, (run_owner[1:] != run_owner[:-1]) | (run_label[1:] != run_label[:-1])] if hits.size else first
    run_starts = np.flatnonzero(new_run)
    run_sizes = np.diff(np.r_[run_starts, hits.size])
    run_particle = np.searchsorted(starts, run_starts, side="right") - 1
    largest = np.zeros(starts.size, dtype=np.int64)
    np.maximum.at(largest, run_particle, run_sizes)
    pieces = np.bincount(run_particle, minlength=starts.size)
    particle_size = np.diff(np.r_[starts, hits.size])
    split = 2 * largest <= particle_size
    steps = ~first[1:] & split[np.searchsorted(starts, np.arange(1, hits.size), side="right") - 1]
    step_keys = np.minimum(hits[:-1], hits[1:])[steps] * event.num_hits + np.maximum(hits[:-1], hits[1:])[steps]
    shares = {name: float(np.isin(step_keys, keys).mean()) if step_keys.size else float("nan")
              for name, keys in stage_keys.items()}
    return {"counted": int(counted.sum()), "found": int((counted & found).sum()), "merged": int((~split).sum()),
            "split": int(split.sum()), "pieces": float(np.median(pieces[split])) if split.any() else float("nan"),
            "steps": shares, "num_steps": int(step_keys.size)}


def evaluate(pipeline: Pipeline, event) -> dict:
    """Run the pipeline stage by stage on ``event``; edge figures per stage, track figures, stage times."""
    features = pipeline.event_features(event)
    times = dict.fromkeys(("embed", "graph", "filter", "gnn", "tracks"), 0.0)
    shifts = pipeline.vertex_shifts or (0.0,)
    graphs, filtereds, logit_sets = [], [], []
    for shift in shifts:  # one pass, or one per vertex shift (as Pipeline.run runs them)
        moved = shifted_features(features, pipeline.feature_spec.names, pipeline.feature_spec.scales, shift)
        mark = time.perf_counter()
        embedding = pipeline.embed(moved)
        times["embed"] += time.perf_counter() - mark
        mark = time.perf_counter()
        graphs.append(pipeline.build_graph(embedding))
        times["graph"] += time.perf_counter() - mark
        mark = time.perf_counter()
        filtereds.append(pipeline.filter_edges(moved, graphs[-1])[0])
        times["filter"] += time.perf_counter() - mark
        mark = time.perf_counter()
        logit_sets.append(pipeline.classify_edges("gnn", moved, filtereds[-1], chunked=False))
        times["gnn"] += time.perf_counter() - mark
    mark = time.perf_counter()
    if len(shifts) == 1:
        graph, filtered, logits = graphs[0], filtereds[0], logit_sets[0]
    else:  # the passes merged edge by edge; the graph row counts each pass's edges once
        filtered, logits = pipeline.merge_vertex_shifts(features, filtereds, logit_sets)
        keys = np.unique(np.concatenate([g[0] * event.num_hits + g[1] for g in graphs]))
        graph = np.stack([keys // event.num_hits, keys % event.num_hits])
    labels = pipeline.build_tracks(event.num_hits, filtered, logits, features)
    times["tracks"] = time.perf_counter() - mark
    kept = filtered[:, logits > logit_threshold(pipeline.stages.gnn_cut)]

    pids = np.asarray(event.truth["particle_id"], dtype=np.int64)
    truth = truth_graph(event)
    pt = np.hypot(event.particles["px"], event.particles["py"])
    pt_of = dict(zip(event.particles["particle_id"].tolist(), pt.tolist()))
    high = np.array([pt_of.get(int(p), 0.0) >= MIN_PT for p in pids[truth[0]]], dtype=bool)
    stage_edges = {"graph": graph, "filter": filtered, "gnn": kept}
    if pipeline.stages.prune_cut is not None and len(shifts) == 1:  # the edges the pruner leaves the GNN
        stage_edges = {"graph": graph, "filter": filtered, "pruner": pipeline.pruned_edges(features, filtered),
                       "gnn": kept}
    stage_keys = {name: _edge_keys(edges, event.num_hits) for name, edges in stage_edges.items()}
    stages = {name: (edges.shape[1],) + _edge_figures(edges, stage_keys[name], truth, pids, high, event.num_hits)
              for name, edges in stage_edges.items()}
    tracks = evaluate_event(event, event.hits["hit_id"], labels, min_pt=MIN_PT, min_hits=MIN_HITS)
    matching = particle_matching(event, pids, labels)
    by_origin = efficiency_by_origin(event, matching)
    split = [sum(cell[k] for cell in by_origin.values()) for k in (0, 1)]
    if split != [tracks["num_matched"], tracks["num_reconstructable"]]:
        raise RuntimeError(f"{event.name}: the efficiency split counts {split[0]}/{split[1]} particles, the track "
                           f"figures {tracks['num_matched']}/{tracks['num_reconstructable']}")
    lost = lost_particles(event, pids, labels, matching, stage_keys)
    if lost["found"] != tracks["num_matched"] or lost["counted"] != tracks["num_reconstructable"]:
        raise RuntimeError(f"{event.name}: the lost-particle count finds {lost['found']}/{lost['counted']} particles, the "
                           f"track figures {tracks['num_matched']}/{tracks['num_reconstructable']}")
    result = {"hits": event.num_hits, "stages": stages, "tracks": tracks, "times": times, "by_origin": by_origin,
              "lost": lost}
    if pipeline.stages.join_pieces is not None:
        # the same GNN scores with the bundle's track building up to the pieces, without joining them
        unjoined = build_tracks(event.num_hits, filtered, logits, pipeline.stages.gnn_cut,
                                **{**bundle_track_options(pipeline.bundle, features), "join": None})
        result["without_joining"] = evaluate_event(event, event.hits["hit_id"], unjoined, min_pt=MIN_PT,
                                                   min_hits=MIN_HITS)
    return result


def summary_by_kind(every: list) -> list[str]:
    """Markdown lines: each kind's figures pooled over its events (found / counted particles,
    fake / candidate tracks summed), with the range of the events' own figures."""
    lines = ["Pooled over the events of each kind (efficiency: found / counted particles summed over the events; "
             "fake rate: fake / candidate tracks summed), with the range of the single events:",
             "",
             "| events | how many | efficiency | range | fake rate | range | meets target |",
             "| --- | ---: | ---: | --- | ---: | --- | --- |"]
    for kind in dict.fromkeys(kind for kind, _name, _result in every):
        tracks = [result["tracks"] for k, _name, result in every if k == kind]
        found, counted = (sum(t[key] for t in tracks) for key in ("num_matched", "num_reconstructable"))
        fakes, candidates = (sum(t[key] for t in tracks) for key in ("num_fake_tracks", "num_candidate_tracks"))
        efficiency = found / counted if counted else float("nan")
        fake_rate = fakes / candidates if candidates else float("nan")
        meets = efficiency >= TARGET_EFFICIENCY and fake_rate <= TARGET_FAKE_RATE
        span = lambda key: (f"{min(t[key] for t in tracks):.4f}–{max(t[key] for t in tracks):.4f}"  # noqa: E731
                            if len(tracks) > 1 else "-")
        lines.append(f"| {kind} | {len(tracks)} | {efficiency:.4f} | {span('efficiency')} | {fake_rate:.4f} | "
                     f"{span('fake_rate')} | {'yes' if meets else 'no'} |")
    return lines


#: Held-out simulated events of each kind in the full run.
FULL_PER_KIND = 3


def main(argv=None) -> int:
    """Measure the bundle on every event, print the tables and write the RESULTS.md section."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle to measure (default: models/default)")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="ONNX Runtime and graph-building threads (default 2)")
    parser.add_argument("--small", action="store_true",
                        help="simulated events with 1/10 of the particles (a quick check; the section says it is a "
                        "reduced run)")
    parser.add_argument("--no-write", action="store_true", help="print the table, do not touch RESULTS.md")
    parser.add_argument("--per-kind", type=positive_int, default=FULL_PER_KIND,
                        help=f"held-out simulated events of each kind (default {FULL_PER_KIND}; the first of each has "
                        "the seed of every earlier run)")
    parser.add_argument("--vertex-shifts", default=None, metavar="MM,MM,...",
                        help="run each event once per vertex shift and merge the passes, as `trackserve run "
                        "--vertex-shifts` does (mm, e.g. -100,-50,0,50,100); the section gets the suffix "
                        "_vertex_shifts (0: one pass, for a bundle that carries shifts; the suffix _one_pass)")
    args = parser.parse_args(joined_list_values(sys.argv[1:] if argv is None else list(argv)))
    bundle = load_bundle_option(parser, "--bundle", args.bundle)
    shifts = None
    if args.vertex_shifts is not None:
        try:
            shifts = parse_vertex_shifts(args.vertex_shifts)
        except InputError as error:
            parser.error(str(error))
    watch = LoadWatch()  # before the benchmark's own work raises the load

    pipeline = Pipeline(bundle, config=RuntimeConfig(intra_op_threads=args.threads, graph_threads=args.threads,
                                                     vertex_shifts=shifts))
    shifted = pipeline.vertex_shifts is not None
    every = []  # (kind, name, result) of every event
    skipped: list[str] = []  # the kinds of events left out for want of their data
    for kind, name, event in held_out_events(args.small, args.per_kind, skipped) + real_events(skipped):
        result = evaluate(pipeline, event)
        every.append((kind, name, result))
        tracks = result["tracks"]
        print(f"{name}: {result['hits']} hits, efficiency {tracks['efficiency']:.4f}, fake rate {tracks['fake_rate']:.4f}, "
              f"{sum(result['times'].values()):.2f} s", flush=True)
    watch.finish()
    # the detailed tables: the first event of each kind (the seeds of every earlier run)
    results = [(name, result) for kind, name, result in every if name == kind]

    stages = pipeline.stages
    section, by_option = result_section(args.bundle, stages.vertex_shifts, pipeline.vertex_shifts,
                                        args.vertex_shifts is not None)
    shift_source = "--vertex-shifts" if by_option else "the bundle's stages.vertex_shifts"
    reduced = reduced_run_note((["1/10 of the particles in the simulated events (`--small`)"] if args.small else [])
                               + ([f"{args.per_kind} held-out simulated event(s) of each kind instead of {FULL_PER_KIND}"]
                                  if args.per_kind < FULL_PER_KIND else []) + skipped)
    lines = [
        f"Machine: {machine_description()}. Threads: ONNX Runtime intra-op {args.threads}, graph building {args.threads} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}). " + watch.note(),
        f"Bundle `{Path(args.bundle).name}`: features {list(pipeline.bundle.feature_names)}, radius {stages.radius:g}, "
        f"max neighbours {stages.max_neighbours}, filter cut {stages.filter_cut:g}, "
        + ("" if stages.prune_cut is None else f"pruner cut {stages.prune_cut:g} (the GNN scores only the filtered edges "
           "it passes" + ("; in each pass" if shifted else "; the 'pruner' rows count them") + "), ")
        + f"GNN cut {stages.gnn_cut:g}, "
        f"track building {stages.track_building}"
        + ("" if stages.gap_cut is None else f" with gap cut {stages.gap_cut:g} (the 'gnn' rows count the edges "
           "passing the GNN cut; gaps are filled from the edges passing the gap cut)")
        + ("" if stages.join_pieces is None else f", piece joining: {stages.join_pieces.describe()}") + "."
        + (f" Vertex shifts ({shift_source}): each event run at {shifts_in_words(pipeline.vertex_shifts)} along the beam and the "
           "passes merged by each edge's intercept with the beam line (`trackserve run --vertex-shifts`); the 'graph' "
           "rows count the passes' graphs' distinct edges, the 'filter' rows the merged edges, and stage times are "
           "summed over the passes (the merge is timed with the tracks)." if shifted else "")
        + (f" One pass (`--vertex-shifts {args.vertex_shifts}`): the bundle's own shifts "
           f"({shifts_in_words(stages.vertex_shifts)}) left out." if by_option and not shifted else "")
        + (f" {reduced}" if reduced else ""),
        "",
        f"Tracks: double-majority efficiency for particles with pT >= {MIN_PT:g} GeV and >= {MIN_HITS} hits; fake rate = "
        f"candidate tracks (>= {MIN_HITS} hits) matched to no particle. Target on the held-out simulated events: "
        f"efficiency >= {TARGET_EFFICIENCY:.0%}, fake rate <= {TARGET_FAKE_RATE:.0%}.",
        "",
    ]
    joined = stages.join_pieces is not None
    lines += summary_by_kind(every) + [
        "",
        "Each event (the tables after this one: the first event of each kind, whose seed every earlier run used):",
        "",
        "| event | hits | efficiency | fake rate | duplicate rate | meets target | total time (s) |"
        + (" without joining: efficiency / fake rate |" if joined else ""),
        "| --- | ---: | ---: | ---: | ---: | --- | ---: |" + (" ---: |" if joined else "")]
    for _kind, name, result in every:
        tracks = result["tracks"]
        meets = tracks["efficiency"] >= TARGET_EFFICIENCY and tracks["fake_rate"] <= TARGET_FAKE_RATE
        lines.append(f"| {name} | {result['hits']} | {tracks['efficiency']:.4f} | {tracks['fake_rate']:.4f} | "
                     f"{tracks['duplicate_rate']:.4f} | {'yes' if meets else 'no'} | {sum(result['times'].values()):.2f} |"
                     + (f" {result['without_joining']['efficiency']:.4f} / {result['without_joining']['fake_rate']:.4f} |"
                        if joined else ""))
    lines += [
        "",
        f"Edges after each stage against the truth graph (efficiency: all particles / pT >= {MIN_PT:g} GeV; purity: edges "
        "joining two hits of one particle):",
        "",
        f"| event | stage | edges | efficiency | efficiency pT >= {MIN_PT:g} | purity |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results:
        for stage, (count, efficiency, high, purity) in result["stages"].items():
            lines.append(f"| {name} | {stage} | {count} | {efficiency:.4f} | {high:.4f} | {purity:.4f} |")
    vz_names, eta_names = _bin_names(VZ_EDGES, " mm"), _bin_names(ETA_EDGES, "")
    lines += [
        "",
        f"Efficiency by where along the beam each particle was produced (|vz|) and its direction (|eta|: "
        f"< {ETA_EDGES[0]:g} barrel, >= {ETA_EDGES[1]:g} endcaps); found / counted (pT >= {MIN_PT:g} GeV, "
        f">= {MIN_HITS} hits), the same tracks as above:",
        "",
        "| event | abs(eta) | " + " | ".join(f"abs(vz) {name}" for name in vz_names) + " |",
        "| --- | --- |" + " ---: |" * len(vz_names),
    ]
    for name, result in results:
        table = result["by_origin"]
        for e, eta_name in enumerate(eta_names):
            cells = []
            for v in range(len(vz_names)):
                found, counted = table[(e, v)]
                cells.append(f"{found / counted:.3f} ({found}/{counted})" if counted else "-")
            lines.append(f"| {name} | {eta_name} | " + " | ".join(cells) + " |")
        if "no production point" in table:
            found, counted = table["no production point"]
            lines.append(f"| {name} | no production point in the particle table | {found}/{counted} |"
                         + " |" * (len(vz_names) - 1))
    lines += [
        "",
        "The counted particles that are not found: merged (a track holds more than half of the particle's hits but "
        "does not find it) or split (no track holds more than half); for the split ones, the median number of "
        "labels their hits carry and the share of the steps between their consecutive hits (by distance from the "
        "origin) that are edges after the graph, the filter and the GNN cut (a step the graph misses, no later "
        "stage can bring back):",
        "",
        "| event | counted | found | merged | split | pieces of a split one | steps in the graph | after the filter "
        "| passing the GNN cut |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, result in results:
        lost = result["lost"]
        shares = " | ".join(f"{lost['steps'][stage]:.3f}" if lost["num_steps"] else "-" for stage in ("graph", "filter", "gnn"))
        pieces = f"{lost['pieces']:g}" if lost["split"] else "-"
        lines.append(f"| {name} | {lost['counted']} | {lost['found']} | {lost['merged']} | {lost['split']} | {pieces} | "
                     f"{shares} |")
    lines += ["", "Stage times (s):", "", "| event | embed | graph | filter | gnn | tracks |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, result in results:
        t = result["times"]
        lines.append(f"| {name} | {t['embed']:.3f} | {t['graph']:.3f} | {t['filter']:.3f} | {t['gnn']:.3f} | {t['tracks']:.3f} |")
    publish(section, "bench_default_bundle.py", lines, write=not args.no_write, title=section.replace("_", " "))
    return 0


if __name__ == "__main__":
    sys.exit(main())
