"""``trackserve bundle-info``: load a bundle, check it, and print what it holds.

Loading checks everything :func:`trackserve.bundle.load_bundle` checks (schema, keys,
files, sha256, the ONNX files' inputs and outputs, the stage parameters); a bundle with
problems is refused with the list of them (exit status 2). Needs only onnxruntime.
"""

from __future__ import annotations

import argparse
import json

ORDER = 36

#: The longest provenance entry the summary prints in full (characters); ``--json`` prints all.
PROVENANCE_WIDTH = 160


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bundle-info`` subcommand."""
    parser = subparsers.add_parser(
        "bundle-info",
        help="check a bundle and print its features, networks, stage parameters and provenance",
        description=(
            "Load a bundle (a directory with pipeline.json and one ONNX file per network), check every "
            "declared fact against the files (sha256, ONNX inputs and outputs) and print a summary, or "
            "the list of problems."
        ),
    )
    parser.add_argument("bundle", metavar="DIR", help="the bundle directory (or its pipeline.json)")
    parser.add_argument("--json", action="store_true", help="print the checked pipeline.json instead of a summary")
    parser.set_defaults(handler=run)


def _dims(tensors) -> str:
    return ", ".join(f"{t.name} {t.dtype} [{', '.join(map(str, t.dims))}]" for t in tensors)


def describe(bundle) -> str:
    """A human-readable summary of a loaded bundle."""
    from ..bundle import ENGINES_DIR
    from ..runtime.vertex_shifts import shifts_in_words

    lines = [f"bundle {bundle.directory} (schema version {bundle.schema_version}): valid"]
    features = ", ".join(f"{name}/{scale:g}" for name, scale in zip(bundle.feature_names, bundle.feature_scales))
    lines.append(f"features ({bundle.num_features}): {features}")
    lines.append("networks:")
    for name, entry in bundle.networks.items():
        lines.append(f"  {name}: {entry.file} ({entry.kind}, {entry.architecture or 'architecture not recorded'}), "
                     f"sha256 {entry.sha256[:16]}...")
        lines.append(f"    inputs:  {_dims(entry.inputs)}")
        lines.append(f"    outputs: {_dims(entry.outputs)}")
        if entry.config:
            lines.append(f"    config:  {json.dumps(entry.config, sort_keys=True)}")
    stages = bundle.stages
    lines.append(
        f"stages: radius {stages.radius:g}, max_neighbours {stages.max_neighbours}, filter_cut {stages.filter_cut:g}, "
        f"gnn_cut {stages.gnn_cut:g}, edge_direction {stages.edge_direction}, track_building {stages.track_building}"
        + ("" if stages.gap_cut is None else f", gap_cut {stages.gap_cut:g}")
        + ("" if stages.join_pieces is None else f", join_pieces ({stages.join_pieces.describe()})")
        + ("" if stages.prune_cut is None else f", prune_cut {stages.prune_cut:g} (the GNN scores the edges the pruner "
                                                "passes)")
        + ("" if stages.vertex_shifts is None else f", vertex_shifts {shifts_in_words(stages.vertex_shifts)} "
                                                    + ("(a pass each, merged)" if len(stages.vertex_shifts) > 1
                                                       else "(one pass, the hits moved by it)"))
    )
    engines = sorted(p.name for p in (bundle.directory / ENGINES_DIR).glob("*") if p.is_dir()) \
        if (bundle.directory / ENGINES_DIR).is_dir() else []
    lines.append(f"engines: {', '.join(engines) if engines else 'none built'}")
    lines.append("provenance:")
    shortened = False
    for key, value in bundle.provenance.items():
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        if not text.isprintable():  # a line break or control character in a string: one line, as JSON writes it
            text = json.dumps(value, sort_keys=True)
        if len(text) > PROVENANCE_WIDTH:
            text = _shortened(value, text)
            shortened = True
        lines.append(f"  {key}: {text}")
    if shortened:
        lines.append("  (entries marked ... are shortened; --json prints everything)")
    return "\n".join(lines)


def _shortened(value, text: str) -> str:
    """A provenance entry too long for one line: an object's keys, or the start of the text."""
    if isinstance(value, dict):
        keys = ", ".join(map(str, value))
        summary = f"{{{keys}}}"
        if len(summary) <= PROVENANCE_WIDTH:
            return f"{summary} ... ({len(text):,} characters)"
    return f"{text[:PROVENANCE_WIDTH]} ... ({len(text):,} characters)"


def run(args: argparse.Namespace) -> int:
    """Load the bundle (errors name every problem) and print it."""
    from ..bundle import load_bundle

    bundle = load_bundle(args.bundle)
    print(json.dumps(bundle.to_dict(), indent=2) if args.json else describe(bundle))
    return 0
