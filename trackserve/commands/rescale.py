"""``trackserve rescale``: write a bundle again for other feature scales, with η derived in the networks.

A bundle trained on ``r/1000, φ/π, z/1000, η`` (or on r, φ, z alone, as ``trackserve
train`` does by default, η derived inside its networks or not used) becomes one that
reads the published ExaTrkX service's three features (``--features exatrkx-service``, the default), so the
service's clients and event files work with it unchanged. The networks are rebuilt from
the bundle's torch weights, their first-layer weights multiplied by the ratios of the
scales (the same function of the hit), exported and validated like every bundle network;
the largest output difference against the original on the sample event is printed and
recorded. ``--track-building`` also changes the track building method.
"""

from __future__ import annotations

import argparse
import sys

from ..bundle import TRACK_BUILDING_METHODS

ORDER = 37


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``rescale`` subcommand."""
    parser = subparsers.add_parser(
        "rescale",
        help="write a bundle again for other feature scales (eta derived inside the networks)",
        description=(
            "Rebuild a bundle on the features r, phi, z, eta (or r, phi, z) for the features r, phi, z at other scales "
            "(default: the published ExaTrkX service's r/3000, phi/pi, z/400), deriving eta inside every "
            "network; the networks compute the same function of each hit. Needs torch (the export extra)."
        ),
    )
    parser.add_argument("bundle", metavar="DIR", help="the bundle to rescale (it must hold torch weights)")
    parser.add_argument("--output", required=True, metavar="DIR", help="directory of the new bundle")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the bundle already in --output (default: refuse)")
    parser.add_argument("--features", default="exatrkx-service",
                        help="the new features: a preset or scales of r, phi, z (default exatrkx-service)")
    parser.add_argument("--track-building", choices=TRACK_BUILDING_METHODS, default=None,
                        help="track building method of the new bundle (default: the bundle's)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Rescale, export with parity, write the bundle, print the check."""
    from ..extras import require_export_extra

    require_export_extra("trackserve rescale")
    from ..bundle_output import bundle_written_to, check_bundle_output
    from ..events.features import feature_spec
    from ..events.trackml import read_event
    from ..export.rescale import rescale_bundle
    from ..paths import SAMPLE_EVENT

    check_bundle_output(args.output, overwrite=args.overwrite, reads={"DIR (the bundle to rescale)": args.bundle})
    event = read_event(SAMPLE_EVENT, parts=())
    with bundle_written_to(args.output) as directory:  # replaces --output only when the rescaled bundle passed its check
        differences = rescale_bundle(args.bundle, directory, feature_spec(args.features),
                                     track_building=args.track_building, check_features=event)
    print(f"bundle written to {args.output}")
    _note_dropped_track_settings(args.bundle, args.track_building)
    for name, value in differences.items():
        print(f"  {name}: largest output difference from the original on the sample event {value:.2e}")
    return 0


def _note_dropped_track_settings(source: str, track_building: str | None) -> None:
    """Say on stderr which of the source bundle's track-building settings the new method dropped
    (its gap cut and piece joining belong to the best-edge method they were chosen for)."""
    from ..bundle import load_bundle

    stages = load_bundle(source, check_files=False).stages
    if track_building is None or track_building == stages.track_building:
        return
    dropped = ([f"gap cut {stages.gap_cut:g}"] if stages.gap_cut is not None else []) + (
        [f"piece joining ({stages.join_pieces.describe()})"] if stages.join_pieces is not None else [])
    if dropped:
        print(f"trackserve rescale: note: track building is now {track_building!r}, not {stages.track_building!r}: "
              f"the bundle's {' and '.join(dropped)}, chosen for {stages.track_building!r}, "
              f"{'were' if len(dropped) > 1 else 'was'} dropped; the GNN cut {stages.gnn_cut:g} is kept (trackserve "
              "tune-cut chooses one for the new method)", file=sys.stderr)
