"""``trackserve evaluate``: score a track labelling against an event's truth.

Reads an event (with its truth, and its particles table when present) and a labelling in
the TrackML submission format, and prints the track efficiency (double majority), fake
and duplicate rates and the TrackML score, as an aligned table or as one JSON object.
The definitions are those of :mod:`trackserve.events.metrics`.
"""

from __future__ import annotations

import argparse
import sys

from ..events.metrics import DEFAULT_MIN_HITS, DEFAULT_MIN_PT, figure_text
from ..jsonout import dumps

ORDER = 20

#: Table rows: (label, key of the evaluation dict, format).
_ROWS: tuple[tuple[str, str, str], ...] = (
    ("particles", "num_particles", "d"),
    ("reconstructable particles", "num_reconstructable", "d"),
    ("found particles", "num_matched", "d"),
    ("track efficiency", "efficiency", ".4f"),
    ("tracks", "num_tracks", "d"),
    ("candidate tracks", "num_candidate_tracks", "d"),
    ("matched tracks", "num_matched_tracks", "d"),
    ("fake tracks", "num_fake_tracks", "d"),
    ("fake rate", "fake_rate", ".4f"),
    ("duplicate tracks", "num_duplicate_tracks", "d"),
    ("duplicate rate", "duplicate_rate", ".4f"),
    ("TrackML score", "trackml_score", ".4f"),
)


def register(subparsers) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score track labels against an event's truth (efficiency, fake and duplicate rates, TrackML score)",
        description=(
            "Compare a labelling in the TrackML submission format (event_id,hit_id,track_id) with the "
            "truth of one event. Every hit of the event must be labelled exactly once. A particle is "
            "found when a track holds more than half of its hits and more than half of the track's "
            "hits are its own (double majority); efficiency is over reconstructable particles "
            "(--min-pt, --min-hits); candidate tracks have at least --min-track-hits hits; a fake "
            "is a candidate with no particle holding more than half of its hits; duplicates are "
            "matched candidates of a particle beyond its first. The TrackML score is the official one."
        ),
    )
    parser.add_argument("event", metavar="EVENT", help="the event: a prefix such as data/event000000001, or one of its files")
    parser.add_argument("labels", metavar="LABELS.csv", help="the track labels, TrackML submission format (.csv or .csv.gz)")
    parser.add_argument("--min-pt", type=float, default=DEFAULT_MIN_PT, metavar="GEV",
                        help="reconstructable particles have at least this transverse momentum (GeV; default "
                        "%(default)g; 0 counts every particle)")
    parser.add_argument("--min-hits", type=int, default=DEFAULT_MIN_HITS, metavar="N",
                        help="reconstructable particles have at least N hits (default %(default)s)")
    parser.add_argument("--min-track-hits", type=int, default=None, metavar="N",
                        help="candidate tracks have at least N hits (default: --min-hits)")
    parser.add_argument("--include-noise", action="store_true",
                        help="keep noise hits on their tracks (they count in a track's size); by default they are ignored")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(handler=run)


def _selection(result: dict) -> str:
    """The selection that produced ``result``, in words."""
    noise = "noise hits ignored" if result["exclude_noise"] else "noise hits kept on tracks"
    return (
        f"pT >= {result['min_pt']:g} GeV, >= {result['min_hits']} hits per particle, "
        f">= {result['min_track_hits']} hits per track, {noise}"
    )


def format_table(result: dict) -> str:
    """The evaluation as an aligned two-column text table."""
    rows = [
        ("event", f"{result['event_id']} ({result['event']})"),
        ("labels", result["labels"]),
        ("hits", f"{result['num_hits']} ({result['num_noise_hits']} noise)"),
        ("selection", _selection(result)),
    ]
    rows.extend((label, figure_text(result[key], spec)) for label, key, spec in _ROWS)
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def run(args: argparse.Namespace) -> int:
    """Read the event and the labels, evaluate, print; returns the exit status."""
    import numpy as np

    from ..errors import EventFormatError
    from ..events.metrics import SELECTION_OPTIONS, check_selection, evaluate_event
    from ..events.sources import read_event_with_truth
    from ..events.submission import read_submission
    from ..events.trackml import event_prefix

    check_selection(args.min_pt, args.min_hits, args.min_track_hits, names=SELECTION_OPTIONS)

    event, problem = read_event_with_truth(event_prefix(args.event))
    if problem is not None:
        if event.truth is None:
            raise problem
        # as `run` does: a particles table that does not read, or disagrees with the truth
        # (cut to high pT), is left out and the truth alone gives the figures
        print(f"trackserve evaluate: note: its particles table left out: {problem}; the figures come from the "
              "truth alone (pT from its momenta)", file=sys.stderr)
    event_ids, hit_ids, track_ids = read_submission(args.labels)
    rows = event_ids == event.event_id
    if not rows.any() and event.num_hits:  # an event without hits has no labels to give
        present = np.unique(event_ids)
        held = ", ".join(str(v) for v in present[:5].tolist()) + (" ..." if present.size > 5 else "")
        raise EventFormatError(
            f"no labels for event {event.event_id} (the file holds "
            + (f"event(s) {held})" if present.size else "no rows)")
            + "; give the labels of this event",
            path=args.labels,
            column="event_id",
        )
    result = {"event": str(event.source), "labels": str(args.labels)}
    result.update(
        evaluate_event(
            event,
            hit_ids[rows],
            track_ids[rows],
            min_pt=args.min_pt,
            min_hits=args.min_hits,
            min_track_hits=args.min_track_hits,
            exclude_noise=not args.include_noise,
            source=args.labels,
        )
    )
    if args.json:
        print(dumps(result))
    else:
        print(format_table(result))
    return 0
