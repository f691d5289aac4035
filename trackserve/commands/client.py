"""``trackserve client``: send events to a served trackserve model and write the labels it returns.

Events are TrackML events or feature CSVs (as for ``trackserve run``), sent one request
per event over gRPC or HTTP; the labels are written in the TrackML submission format.
With ``--check`` each event is also run by the local runtime on the same bundle and the
labels must be identical. Exit status: 0 when every event was answered (and matched),
1 when an event file could not be read (the others are still sent), a request failed or
a label differed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..paths import DEFAULT_BUNDLE, DEFAULT_LABELS_DIRECTORY, SAMPLE_EVENT

ORDER = 62


def register(subparsers) -> None:
    """Add the ``client`` subcommand."""
    from ..serving.interface import DEFAULT_MODEL_NAME

    parser = subparsers.add_parser(
        "client",
        help="send events to a Triton server, write the labels, optionally check them against the local runtime",
        description=(
            "Send each event (TrackML or feature CSV) as one request, FEATURES FP32 [N, F], to a served "
            "trackserve model and write the LABELS it returns as <output>/<event>-labels.csv. The bundle "
            "gives the features of TrackML events and, with --check, the local reference."
        ),
    )
    parser.add_argument("events", nargs="*", metavar="EVENT",
                        help="TrackML event prefixes, files or directories, or feature CSVs (default: the shipped sample event)")
    parser.add_argument("--url", default=None,
                        help="server host:port (default: 127.0.0.1:8001 for grpc, 127.0.0.1:8000 for http)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="default: %(default)s")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME,
                        help="served model to call: the custom model or the ensemble (default: %(default)s)")
    parser.add_argument("--bundle", default=None,
                        help="bundle the server serves (features of TrackML events, --check); default: models/default")
    parser.add_argument("--output", "-o", default=None, help=f"directory for the label files (default: {DEFAULT_LABELS_DIRECTORY})")
    parser.add_argument("--no-labels", action="store_true", help="do not write label files")
    parser.add_argument("--check", action="store_true",
                        help="run each event with the local runtime too and exit 1 unless the labels are identical")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds per request (default: %(default)s)")
    parser.set_defaults(handler=run)


def _note_served_bundle(client, bundle, described: str, check: bool) -> None:
    """Say on stderr when the server serves another bundle than the local one (the model
    config's ``pipeline_sha256``, which ``triton-repo`` writes): with ``--check`` every
    label compared may then differ for no fault of the server; without it the features
    match (checked before), so the labels are simply the served bundle's."""
    from ..bundle import PIPELINE_FILE, file_sha256

    served = client.served_pipeline_sha256()
    mine = file_sha256(Path(bundle.directory) / PIPELINE_FILE)
    if served is None or served == mine:
        return
    where = (f"model {client.model!r} at {client.url} serves another bundle than {described} (pipeline.json "
             f"sha256 {served[:12]}... served, {mine[:12]}... here)")
    consequence = ("--check compares its labels with another pipeline's, so they may differ for no fault of the "
                   "server; give --bundle the bundle the server serves (the model repository holds a copy)"
                   if check else "the features match, so the labels are the served bundle's")
    print(f"trackserve client: note: {where}: {consequence}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Send every event, write and optionally check its labels; report each failure."""
    from ..serving.client import check_timeout

    check_timeout(args.timeout, "--timeout")
    import numpy as np

    from ..bundle import load_bundle
    from ..errors import ServingError, TrackserveError
    from ..events.features import FeatureSpec
    from ..events.sources import list_inputs, read_feature_input, read_input
    from ..paths import shipped_path
    from ..serving.client import PROTOCOLS, TritonClient
    from ..labels_output import (EarlierLabels, chosen_output, labels_files, note_input_problems,
                                 note_repeated_event_ids, note_skipped)

    bundle = load_bundle(args.bundle or shipped_path(DEFAULT_BUNDLE, "default bundle"))
    spec = bundle.feature_spec
    url = args.url or f"127.0.0.1:{PROTOCOLS[args.protocol]}"
    skipped: list[Path] = []
    inputs = list_inputs(args.events or [shipped_path(SAMPLE_EVENT, "sample event")], skipped)
    note_skipped("client", skipped)
    output = chosen_output(args.output, args.no_labels)
    labels_paths = labels_files(output, inputs)
    if labels_paths is not None:
        note_repeated_event_ids("client", inputs)
    pipeline = None

    failures = 0
    answered = identical = 0  # events the server answered; of those, with --check, the ones the local runtime matches
    written = 0  # events whose labels were written (a mismatch's too: they are what the server answered)
    # The bundle is checked against the served model when it computes or checks features, or
    # was given: feature CSVs sent as they are, with no --bundle, need only the served width.
    uses_bundle = args.check or args.bundle is not None or any(kind == "trackml" for kind, _ in inputs)
    with TritonClient(url, protocol=args.protocol, model=args.model, timeout_s=args.timeout) as client:
        served = client.num_features()
        note_spec = spec
        if uses_bundle:
            if served != bundle.num_features:
                raise ServingError(
                    f"model {args.model!r} at {url} takes {served} features per hit but the bundle has "
                    f"{bundle.num_features}; give the --bundle the server serves"
                )
            described = f"--bundle {args.bundle}" if args.bundle else "the shipped default bundle (no --bundle)"
            client.check_features(bundle.feature_names, bundle.feature_scales, described)
            _note_served_bundle(client, bundle, described, args.check)
        else:
            served_features = client.served_features()  # (names, scales), for the note on far-off values
            note_spec = None if served_features is None else FeatureSpec(*served_features)
        if args.check:  # the local runtime runs the events as the served model does, vertex shifts included
            from ..runtime.config import RuntimeConfig
            from ..runtime.pipeline import Pipeline

            pipeline = Pipeline(bundle, config=RuntimeConfig(vertex_shifts=client.served_vertex_shifts()))
        # (said once the served model was checked: a run refused before would replace nothing)
        earlier = EarlierLabels("client", labels_paths)
        try:
            for number, (kind, path) in enumerate(inputs):
                try:
                    item = read_input(kind, path, spec) if kind == "trackml" else read_feature_input(path, served)
                except TrackserveError as error:  # a bad input file: report it, send the others
                    failures += 1
                    print(f"{path}: FAILED, not sent: {error}", file=sys.stderr)
                    if labels_paths is not None:
                        earlier.remove(labels_paths[number])
                    continue
                note_input_problems("client", kind, path, item, note_spec)
                try:
                    labels = client.infer(item.features, request_id=item.name)
                except ServingError as error:
                    failures += 1
                    print(f"{item.name}: FAILED: {error}", file=sys.stderr)
                    if labels_paths is not None:
                        earlier.remove(labels_paths[number])
                    continue
                answered += 1
                tracks = int(np.unique(labels).size)  # whatever labels the server sent, compact or not
                line = f"{item.name}: {labels.shape[0]} hits, {tracks} tracks (distinct labels)"
                if pipeline is not None:
                    expected = pipeline.run(item.features).labels
                    if np.array_equal(labels, expected):
                        identical += 1
                        line += ", identical to the local runtime"
                    else:
                        failures += 1
                        if labels.shape == expected.shape:
                            moved = hits_in_other_tracks(labels, expected)
                            line += (f", MISMATCH: {moved} of {expected.size} hits are in tracks other than the "
                                     "local runtime's")
                        else:
                            line += f", MISMATCH: {labels.size} labels for the local runtime's {expected.size} hits"
                if labels_paths is not None:
                    error = earlier.write(labels_paths[number], item.event_id, item.hit_ids, labels)
                    if error is not None:  # no space left, say: this event's labels are lost, named
                        failures += 1
                        print(f"{item.name}: FAILED: answered, but {error}", file=sys.stderr)
                        earlier.remove(labels_paths[number])
                        continue
                    written += 1
                print(line, file=sys.stdout if "MISMATCH" not in line else sys.stderr)
        except BaseException:  # Ctrl-C, SIGTERM, an error: no earlier run's labels pass for this run's
            earlier.remove_unreplaced()
            raise
    print(f"{answered} of {len(inputs)} event(s) answered by '{args.model}' at {url} ({args.protocol})"
          + (f", {identical} of them identical to the local runtime" if args.check else "")
          + (f"; labels of {written} event(s) in {output.resolve()}" if output and written else ""))
    return 0 if failures == 0 else 1


def hits_in_other_tracks(labels, expected) -> int:
    """How many hits lie in a track of ``labels`` that is not exactly a track of ``expected``
    (the same hits, whatever the track numbers: a split or merged track counts its hits, the
    numbering shifted after it does not)."""
    import numpy as np

    labels, expected = np.asarray(labels), np.asarray(expected)
    if labels.size == 0:
        return 0
    pairs, pair_index, pair_counts = np.unique(np.stack([labels, expected]), axis=1, return_inverse=True,
                                               return_counts=True)
    _, label_index, label_counts = np.unique(labels, return_inverse=True, return_counts=True)
    _, expected_index, expected_counts = np.unique(expected, return_inverse=True, return_counts=True)
    pair_size = pair_counts[pair_index.reshape(-1)]
    same = (pair_size == label_counts[label_index.reshape(-1)]) & (pair_size == expected_counts[expected_index.reshape(-1)])
    return int(np.count_nonzero(~same))
