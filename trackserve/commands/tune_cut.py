"""``trackserve tune-cut``: choose a bundle's GNN cut for its track building on validation events.

The trainer chose the cut for the track building it trained with; after ``trackserve
rescale --track-building`` the bundle keeps that cut. This command runs the bundle on
one or more validation events (TrackML events with truth, events simulated from a
particles table with the trainer's validation seeds, so ``--validation-particles TABLE
--seed S`` gives the event ``trackserve train --seed S`` validated on, or events of
random particles simulated with the same seeds), prints the track figures of every
candidate cut (averaged over the events), and with ``--write`` stores the best one (the
trainer's rule: efficiency minus fake rate; with ``--max-fake-rate F`` only among the
cuts whose fake rate is at most F on every event) in the bundle's ``pipeline.json`` with
a provenance record (``gnn_cut_tuned``; the records of earlier tunings move into its
``earlier`` list). With ``--fill-gaps`` (track building ``best_edges``) each cut is also
tried with every lower gap cut of 0.05, 0.10, ..., 0.90 and the best pair is chosen;
``--write`` then stores the gap cut too (without ``--fill-gaps`` the bundle is written
without one). With ``--join-pieces`` (``best_edges``; features r, phi and z) the
piece-joining settings of :data:`~trackserve.runtime.cut_tuning.CANDIDATE_JOINS` are then
tried at the chosen cut and gap cut, and the best of them (or no joining, when none does
better) is chosen by the same rule; ``--write`` stores it (without ``--join-pieces`` the
bundle is written without joining). ``--join-at N`` tries them at each of the N best cut
and gap-cut pairs instead and keeps the best of all (joining adds fakes, so a pair with
more room under ``--max-fake-rate`` can gain more from it); each pair costs one pass of
the joining settings (about 40 s on three 100k-hit events here). With ``--vertex-shifts``
the validation events are scored as ``trackserve run --vertex-shifts`` scores them (a pass
per shift, merged edge by edge), so the cuts suit runs with those shifts; ``--write``
records the shifts in ``gnn_cut_tuned``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bundle import TRACK_BUILDING_METHODS
from ..events.metrics import DEFAULT_MIN_HITS, DEFAULT_MIN_PT

ORDER = 38


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``tune-cut`` subcommand."""
    parser = subparsers.add_parser(
        "tune-cut",
        help="choose a bundle's GNN cut for its track building on validation events",
        description=(
            "Run a bundle on validation events, print the track efficiency, fake and duplicate rates at every "
            "candidate GNN cut, and with --write store the cut with the best efficiency minus fake rate (the "
            "rule trackserve train uses) in the bundle."
        ),
    )
    parser.add_argument("bundle", metavar="DIR", help="the bundle")
    parser.add_argument("--validation", metavar="EVENT", action="append", default=[],
                        help="TrackML event with truth and particles (repeatable)")
    parser.add_argument("--validation-particles", metavar="TABLE.csv", action="append", default=[],
                        help="simulate a validation event from this particles table, with the trainer's validation "
                             "seeds (repeatable)")
    parser.add_argument("--validation-random", metavar="N", type=int, action="append", default=[],
                        help="simulate a validation event of N random particles, with the trainer's validation seeds "
                             "(repeatable)")
    parser.add_argument("--seed", type=int, default=None,
                        help="the training seed, for the simulated validation events (0 .. 2^63-1; default: the "
                             "seed the bundle's provenance records, else 0)")
    parser.add_argument("--track-building", choices=TRACK_BUILDING_METHODS, default=None,
                        help="tune for this method and store it with --write (default: the bundle's)")
    parser.add_argument("--min-pt", type=float, default=DEFAULT_MIN_PT, metavar="GEV",
                        help="particles counted (default %(default)g GeV)")
    parser.add_argument("--min-hits", type=int, default=DEFAULT_MIN_HITS, metavar="N",
                        help="particles counted (default %(default)s hits)")
    parser.add_argument("--max-fake-rate", type=float, default=None, metavar="F",
                        help="only cuts whose fake rate is at most F on every validation event compete (for example 0.02)")
    parser.add_argument("--fill-gaps", action="store_true",
                        help="best_edges only: also try each cut with every lower gap cut (0.05 .. 0.90), whose edges "
                             "fill the gaps the cut leaves, and choose the best pair")
    parser.add_argument("--join-pieces", action="store_true",
                        help="best_edges only: then try the piece-joining settings (72 of them) at the chosen cuts and "
                             "choose the best, or none")
    parser.add_argument("--join-at", type=int, default=1, metavar="N",
                        help="with --join-pieces: try the joining settings at each of the N best cut and gap-cut pairs "
                             "and keep the best of all (default 1: the chosen pair only)")
    parser.add_argument("--vertex-shifts", default=None, metavar="MM,MM,...",
                        help="score the validation events as `trackserve run --vertex-shifts` does, a pass per "
                        "position along the beam merged edge by edge (mm, e.g. -100,-50,0,50,100), "
                        "so that the cuts suit runs with those shifts; --write stores them in the bundle's stages "
                        "with the cuts (default: the bundle's stages.vertex_shifts, one pass for a bundle without; "
                        "0: one pass, and --write removes them)")
    parser.add_argument("--write", action="store_true",
                        help="store the chosen cut, gap cut, piece joining and method in the bundle, replacing its "
                             "own: without --fill-gaps and --join-pieces the stored bundle has no gap cut and "
                             "no piece joining (the line printed says what it had)")
    parser.set_defaults(handler=run)


def _recorded_seed(provenance: dict) -> int | None:
    """The training seed a bundle's provenance records (``settings.seed``), if any (provenance
    is free-form: anything of another type records none)."""
    settings = provenance.get("settings") if isinstance(provenance, dict) else None
    seed = settings.get("seed") if isinstance(settings, dict) else None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else None


def _tuning_history(earlier) -> list:
    """The records of the tunings before this one, latest first, from the bundle's
    ``gnn_cut_tuned`` (None when it has none; a record of another form is kept as it is)."""
    if earlier is None:
        return []
    if not isinstance(earlier, dict):
        return [earlier]
    before = earlier.get("earlier")
    before = [] if before is None else before if isinstance(before, list) else [before]
    return [{k: v for k, v in earlier.items() if k != "earlier"}, *before]


def _check_random_counts(counts) -> None:
    """InputError for a ``--validation-random`` count below 1 or whose event would not fit in
    the free memory, before anything is loaded or noted."""
    from ..errors import InputError
    from ..events.simulate import check_simulation_memory

    for count in counts:
        if count < 1:
            raise InputError(f"--validation-random {count}: give a number of particles >= 1")
        check_simulation_memory(count, option=f"--validation-random {count}")


def _validation_events(args, spec, bundle) -> list[tuple]:
    """``(event, description)`` of every validation event the options name, in their order;
    an InputError for an event ``bundle``'s networks trained on (its provenance names them)."""
    from ..errors import InputError
    from ..events.trackml import find_event_prefixes, read_event
    from ..train.data import (SimulatedSource, hits_fingerprint, same_event, simulated_validation_event,
                              text_fingerprint, trained_event_paths)

    if not (args.validation or args.validation_particles or args.validation_random):
        raise InputError("give at least one validation event: --validation EVENT, --validation-particles TABLE.csv "
                         "or --validation-random N")
    events = []
    seen: dict = {}  # each event once: one given twice would count twice in the means

    def once(keys, given: str) -> None:
        """Note the event ``given`` names by each of its ``keys`` (its path, its contents)."""
        for key in keys:
            if key in seen:
                raise InputError(f"{given} names the validation event of {seen[key]} again"
                                 + (" (a copy of it: the same contents)" if key[0] == "contents" else "")
                                 + ": give each event once (it would count twice in the means)")
        seen.update((key, given) for key in keys)

    trained = trained_event_paths(bundle.provenance)
    for path in args.validation:
        for prefix in find_event_prefixes(path):  # a directory: every event in it
            if any(same_event(event, prefix) for event in trained):
                raise InputError(f"--validation {path}: {prefix} is one of the events the bundle's networks trained "
                                 "on, where they score better than on new events: the cut chosen there would not "
                                 "hold; give held-out events")
            once([("path", prefix.resolve()), ("contents", "hits", hits_fingerprint(prefix))], f"--validation {path}")
            events.append((read_event(prefix, parts=("truth", "particles")), str(prefix)))
    sources = []
    for table in map(Path, args.validation_particles):
        if not table.is_file():
            raise InputError(f"--validation-particles {table}: "
                             + ("is a directory: give a particles table (a file)" if table.is_dir() else "no such file"))
        once([("path", table.resolve()), ("contents", "table", text_fingerprint(table))],
             f"--validation-particles {table}")
        sources.append(SimulatedSource(particles=table))
    for count in args.validation_random:  # (each count checked by _check_random_counts)
        once([("random", count)], f"--validation-random {count}")
        sources.append(SimulatedSource(num_particles=count))
    for source in sources:
        # For a table, the very event trackserve train --seed S simulates to validate on.
        validation, described = simulated_validation_event(source, spec, seed=args.seed)
        events.append((validation.event, described))
    return events


def _check_writable(directory: Path) -> None:
    """InputError when ``--write`` could not store the choice in the bundle at ``directory``
    (its pipeline.json is replaced by a new file written beside it)."""
    import os

    from ..bundle import PIPELINE_FILE
    from ..errors import InputError

    if not os.access(directory, os.W_OK | os.X_OK) or not os.access(Path(directory) / PIPELINE_FILE, os.W_OK):
        raise InputError(f"--write: the bundle {directory} (or its {PIPELINE_FILE}) is not writable; make it "
                         "writable, or run without --write and copy the chosen cuts by hand")


def _shifts(shifts) -> str:
    """The vertex shifts of a bundle's stages, in words."""
    from ..runtime.vertex_shifts import shifts_in_words

    return "one pass" if shifts is None else f"vertex shifts {shifts_in_words(shifts)}"


def run(args: argparse.Namespace) -> int:
    """Tune, print the tables, write the bundle when asked."""
    import dataclasses

    from ..bundle import save_bundle
    from ..errors import InputError
    from ..events.metrics import SELECTION_OPTIONS, check_selection, figure_text
    from ..events.simulate import check_seed
    from ..runtime.cut_tuning import (CANDIDATE_GAP_CUTS, CANDIDATE_JOIN_GRID, CANDIDATE_JOINS, ValidationSet,
                                      check_counted_particles, joins_at_or_above_prune_cut, tune_cuts_and_joining,
                                      tune_gnn_cut)
    from ..runtime.cuts import not_below_prune_cut
    from ..runtime.config import RuntimeConfig
    from ..runtime.pipeline import Pipeline
    from ..runtime.vertex_shifts import parse_vertex_shifts

    check_selection(args.min_pt, args.min_hits, names=SELECTION_OPTIONS)
    if args.max_fake_rate is not None and not 0.0 <= args.max_fake_rate <= 1.0:  # (NaN too) before any work
        raise InputError(f"--max-fake-rate {args.max_fake_rate:g}: give a fake rate in [0, 1] (for example 0.02)")
    if args.seed is not None:
        check_seed(args.seed)  # the seed trackserve train takes
        if not (args.validation_particles or args.validation_random):
            raise InputError(f"--seed {args.seed}: no validation event is simulated (it seeds those of "
                             "--validation-particles and --validation-random; --validation events are read as they "
                             "are): leave it out")
    _check_random_counts(args.validation_random)
    shifts = None if args.vertex_shifts is None else parse_vertex_shifts(args.vertex_shifts)
    pipeline = Pipeline(args.bundle, config=RuntimeConfig(vertex_shifts=shifts))
    if args.seed is None:
        recorded = _recorded_seed(pipeline.bundle.provenance)
        args.seed = 0 if recorded is None else recorded
        if args.validation_particles or args.validation_random:
            check_seed(args.seed, option="the training seed the bundle records (provenance.settings.seed), the "
                                         "default of --seed,")
        if args.validation_particles or args.validation_random:
            print(f"trackserve tune-cut: note: simulating the validation events with seed {args.seed}, "
                  + ("the bundle's training seed" if recorded is not None else "as the bundle records no training "
                     "seed") + " (--seed chooses another)", file=sys.stderr)
    if args.write:
        _check_writable(pipeline.bundle.directory)  # before the tuning, not after it
    method = args.track_building or pipeline.stages.track_building
    if args.join_pieces and method != "best_edges":
        raise InputError(f"--join-pieces joins the pieces of best edges: it needs track building 'best_edges', "
                         f"not {method!r}")
    if args.join_at != 1 and not args.join_pieces:
        raise InputError("--join-at says at how many cut pairs to try piece joining: give it with --join-pieces")
    if args.join_at < 1:
        raise InputError(f"--join-at {args.join_at}: give a number of cut pairs >= 1")
    # what a bundle's pruning cut leaves to try (below it no cut may lie), checked before the tuning
    prune_cut = pipeline.stages.prune_cut
    gap_cuts_tried = not_below_prune_cut(CANDIDATE_GAP_CUTS, prune_cut) if args.fill_gaps else []
    joins_tried = []
    if args.join_pieces:
        try:
            joins_tried = joins_at_or_above_prune_cut(CANDIDATE_JOINS, prune_cut)
        except InputError as error:
            raise InputError(f"--join-pieces: {error}") from None
    validations = _validation_events(args, pipeline.feature_spec, pipeline.bundle)
    events = [event for event, _ in validations]
    # Before the networks run: with no particle to count, every cut's efficiency is NaN.
    check_counted_particles(events, min_pt=args.min_pt, min_hits=args.min_hits, names=SELECTION_OPTIONS[:2])
    if len(events) > 1:
        for event, description in validations:
            try:
                check_counted_particles([event], min_pt=args.min_pt, min_hits=args.min_hits)
            except InputError:  # the others have some: this one counts for its fakes only
                print(f"trackserve tune-cut: note: validation event {description} has no particle the selection "
                      "counts: the efficiencies are averaged over the other events (its fakes still count)",
                      file=sys.stderr)
    validation = ValidationSet(pipeline, events, method)
    best, rows = tune_gnn_cut(pipeline, validation, min_pt=args.min_pt, min_hits=args.min_hits,
                              gap_cuts=gap_cuts_tried if args.fill_gaps else None,
                              max_fake_rate=args.max_fake_rate)
    stages = pipeline.stages
    for event, described in validations:
        print(f"validation: {described}: {event.num_hits} hits")
    print(f"track building {method}; particles with pT >= {args.min_pt:g} GeV and >= {args.min_hits} hits"
          + ("; figures averaged over the events, 'worst fake' the highest event's" if len(events) > 1 else "")
          + _shifts_note(pipeline.vertex_shifts))
    if args.fill_gaps:
        print("each cut without gap filling, then with the gap cut that scores best at it")
    print(f"{'cut':>5}  {'gap cut':>7}  {'efficiency':>10}  {'fake rate':>9}  {'worst fake':>10}  {'duplicates':>10}  "
          f"{'eff - fake':>10}")
    for row in _shown_rows(rows, args.max_fake_rate):
        current = (row.cut == stages.gnn_cut and row.gap_cut == stages.gap_cut and method == stages.track_building
                   and stages.join_pieces is None and pipeline.vertex_shifts == stages.vertex_shifts)
        mark = "  <- best" if row == best else ("  (bundle's)" if current else "")
        gap = "-" if row.gap_cut is None else f"{row.gap_cut:.2f}"
        print(f"{row.cut:5.2f}  {gap:>7}  {figure_text(row.efficiency):>10}  {figure_text(row.fake_rate):>9}  "
              f"{figure_text(row.worst_fake_rate):>10}  {figure_text(row.duplicate_rate):>10}  {row.score:10.4f}{mark}")
    pairs_tried = []
    if args.join_pieces:
        best, tables = tune_cuts_and_joining(pipeline, validation, rows, pairs=args.join_at, min_pt=args.min_pt,
                                             min_hits=args.min_hits, max_fake_rate=args.max_fake_rate)
        pairs_tried = [(pair_best.cut, pair_best.gap_cut) for pair_best, _ in tables]
        if len(tables) > 1:
            print(f"piece joining at the {len(tables)} best cut pairs: the best setting at each")
            print(f"{'cut pair':<30}  {'joining':<62}  {'efficiency':>10}  {'worst fake':>10}  {'eff - fake':>10}")
            for pair_best, _ in tables:
                described = "no joining" if pair_best.join is None else pair_best.join.describe()
                mark = "  <- best" if pair_best == best else ""
                print(f"{_describe(pair_best.cut, pair_best.gap_cut):<30}  {described:<62}  "
                      f"{figure_text(pair_best.efficiency):>10}  {figure_text(pair_best.worst_fake_rate):>10}  "
                      f"{pair_best.score:10.4f}{mark}")
        join_rows = next(rows_at_pair for pair_best, rows_at_pair in tables if pair_best is best)
        print(f"piece joining at {_describe(best.cut, best.gap_cut)}: no joining and the "
              f"{min(JOINS_SHOWN, len(joins_tried))} best of {len(joins_tried)} settings"
              + (f" (those taking edges above the pruning cut {prune_cut:g})" if len(joins_tried) < len(CANDIDATE_JOINS)
                 else ""))
        print(f"{'joining':<62}  {'efficiency':>10}  {'fake rate':>9}  {'worst fake':>10}  {'eff - fake':>10}")
        for row in _shown_join_rows(join_rows, args.max_fake_rate):
            mark = "  <- best" if row == best else ""
            described = "no joining" if row.join is None else row.join.describe()
            print(f"{described:<62}  {figure_text(row.efficiency):>10}  {figure_text(row.fake_rate):>9}  {figure_text(row.worst_fake_rate):>10}  "
                  f"{row.score:10.4f}{mark}")
    tied = sorted({row.cut for row in rows if row.score == best.score
                   and (args.max_fake_rate is None or row.worst_fake_rate <= args.max_fake_rate)})
    finds_nothing = not any(row.efficiency > 0 for row in rows)  # (NaN counts as nothing found)
    if not best.builds_tracks or finds_nothing:
        nothing = (f"no candidate builds a single track of at least {args.min_hits} hits (--min-hits) on these "
                   "validation events: the bundle's GNN passes too few of their edges at every cut, or --min-hits is "
                   "above the length of their tracks") if not best.builds_tracks else (
                   "no candidate finds a single particle of these validation events (efficiency 0 at every cut): "
                   "the bundle does not track them (another detector, other features or scales?) or the selection "
                   "(--min-pt, --min-hits) leaves nothing it finds")
        if args.write:
            raise InputError(f"{nothing}; no cut is better than another there, so there is no choice to store: "
                             "nothing was written (check the bundle with trackserve run on these events, or the "
                             "selection)")
        print(f"trackserve tune-cut: note: {nothing}, so no cut is better than another there and the one shown means "
              "nothing; check the bundle (trackserve run on these events) or the selection", file=sys.stderr)
    elif len(tied) > 1:
        print(f"trackserve tune-cut: note: {len(tied)} cuts ({tied[0]:g} to {tied[-1]:g}) score the same best "
              f"{best.score:.4f}: these validation events do not tell them apart, and the rule takes the smallest; "
              "denser validation events (like those the bundle will see) would tell them apart", file=sys.stderr)
    chosen = _describe(best.cut, best.gap_cut, best.join)
    if not args.write:
        print(f"best: {chosen} (the bundle has {_describe(stages.gnn_cut, stages.gap_cut, stages.join_pieces)}); "
              "--write stores it")
        return 0
    bundle = pipeline.bundle
    previous = {"gnn_cut": stages.gnn_cut, "gap_cut": stages.gap_cut, "track_building": stages.track_building,
                "join_pieces": None if stages.join_pieces is None else stages.join_pieces.to_dict(),
                "vertex_shifts": None if stages.vertex_shifts is None else list(stages.vertex_shifts)}
    rule = "highest efficiency minus fake rate"
    if args.max_fake_rate is not None:
        rule += f" among the candidates with a fake rate <= {args.max_fake_rate:g} on every event"
    if len(events) > 1:
        rule += " (means over the events)"
    if args.join_pieces and args.join_at == 1:
        rule += "; the cut and gap cut without joining, then the piece joining at them"
    elif args.join_pieces:
        rule += (f"; the cut and gap cut without joining, then the piece joining at each of the {args.join_at} best "
                 "pairs, the best of all")
    record = {
        "events": [described for _, described in validations], "num_hits": [int(event.num_hits) for event in events],
        "min_pt": args.min_pt, "min_hits": args.min_hits,
        # the passes the validation events were scored with (one at 0 mm: no vertex shifts)
        "vertex_shifts": list(pipeline.vertex_shifts or (0.0,)),
        "rule": rule, "gap_cuts_tried": list(gap_cuts_tried),
        # every combination of these values (none without --join-pieces)
        "joins_tried": {name: sorted({getattr(join, name) for join in joins_tried}) for name in CANDIDATE_JOIN_GRID}
                       if args.join_pieces else None,
        # the (cut, gap cut) pairs the joining settings were tried at, best first
        "join_pairs_tried": [list(pair) for pair in pairs_tried],
        "previous": previous,
        "stages": {"gnn_cut": best.cut, "gap_cut": best.gap_cut, "track_building": method,
                   "join_pieces": None if best.join is None else best.join.to_dict(),
                   "vertex_shifts": None if pipeline.vertex_shifts is None else list(pipeline.vertex_shifts)},
        # NaN (no particle or no candidate track to count) is written as null.
        "figures": {name: (None if value != value else value) for name, value in (
            ("efficiency", best.efficiency), ("fake_rate", best.fake_rate), ("duplicate_rate", best.duplicate_rate))},
        "fake_rate_per_event": [None if value != value else value for value in best.fake_rates],
    }
    history = _tuning_history(bundle.provenance.get("gnn_cut_tuned"))
    if history:
        record["earlier"] = history
    new_stages = dataclasses.replace(stages, gnn_cut=best.cut, gap_cut=best.gap_cut, track_building=method,
                                     join_pieces=best.join, vertex_shifts=pipeline.vertex_shifts)
    tuned = dataclasses.replace(bundle, stages=new_stages, provenance={**bundle.provenance, "gnn_cut_tuned": record})
    directory = save_bundle(tuned, bundle.directory).directory
    print(f"stored {chosen}, track building {method} and {_shifts(pipeline.vertex_shifts)} in "
          f"{Path(directory) / 'pipeline.json'} (was {_describe(stages.gnn_cut, stages.gap_cut, stages.join_pieces)}, "
          f"{stages.track_building}, {_shifts(stages.vertex_shifts)})")
    return 0


#: Piece-joining rows shown besides no joining.
JOINS_SHOWN = 10


def _describe(cut: float, gap_cut: float | None, join=None) -> str:
    return (f"GNN cut {cut:g}, " + ("no gap cut" if gap_cut is None else f"gap cut {gap_cut:g}")
            + ("" if join is None else f", {join.describe()}"))


def _shown_join_rows(rows, max_fake_rate):
    """No joining, then the best :data:`JOINS_SHOWN` settings (within the fake-rate bound first)."""
    joined = [row for row in rows if row.join is not None]
    allowed = [row for row in joined if max_fake_rate is None or row.worst_fake_rate <= max_fake_rate]
    ranked = sorted(allowed, key=lambda row: row.preference, reverse=True)
    ranked += sorted((row for row in joined if row not in allowed), key=lambda row: row.preference, reverse=True)
    return [row for row in rows if row.join is None] + ranked[:JOINS_SHOWN]


def _shown_rows(rows, max_fake_rate):
    """Every cut's row without gap filling, then its best gap-filling row (within the fake-rate bound if any)."""
    shown = []
    for cut in dict.fromkeys(row.cut for row in rows):
        at_cut = [row for row in rows if row.cut == cut]
        shown.extend(row for row in at_cut if row.gap_cut is None)
        gaps = [row for row in at_cut if row.gap_cut is not None]
        allowed = [row for row in gaps if max_fake_rate is None or row.worst_fake_rate <= max_fake_rate]
        if allowed or gaps:
            shown.append(max(allowed or gaps, key=lambda row: row.preference))
    return shown


def _shifts_note(shifts) -> str:
    """The table heading's note of the vertex shifts (empty without any)."""
    from ..runtime.vertex_shifts import passes_in_words

    if shifts is None:
        return ""
    return f"; {passes_in_words(shifts)}" + ("" if len(shifts) == 1 else ", merged")
