"""``trackserve import``: turn a trained ExaTrkX / ACORN checkpoint into a checked ONNX network."""

from __future__ import annotations

import argparse
import json

ORDER = 40


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import`` subcommand."""
    parser = subparsers.add_parser(
        "import",
        help="import a trained ExaTrkX/ACORN checkpoint and export it to ONNX",
        description=(
            "Rebuild the network of a checkpoint (TorchScript, Lightning or state dict) as a trackserve "
            "network, load its weights and export it to ONNX with a parity check against PyTorch."
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file (.pt, .ckpt, .pth)")
    parser.add_argument("--hparams", metavar="YAML", help="training hyperparameters (e.g. hparams_GNN.yaml)")
    parser.add_argument(
        "--kind", choices=("embedding", "filter", "gnn", "resagnn", "interaction"),
        help="network kind (default: detected from the checkpoint)",
    )
    parser.add_argument("--output", "-o", required=True, metavar="OUT.onnx",
                        help="ONNX file to write (its directory is created when missing)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT.onnx (a symbolic link's target: the link is kept; never the "
                        "checkpoint or hyperparameter file itself)")
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="allow a checkpoint that pickles arbitrary Python objects (runs code: trusted files only)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Import the checkpoint, export it to ONNX and print what was built."""
    from ..extras import require_export_extra

    require_export_extra("trackserve import")
    from ..export.checkpoint_import import import_with_notes
    from ..export.onnx_export import check_output_path, export_network

    check_output_path(args.output, "--output", overwrite=args.overwrite, inputs=(args.checkpoint, args.hparams))
    network = import_with_notes("trackserve import", args.checkpoint, kind=args.kind, hparams=args.hparams,
                                trust_pickle=args.trust_pickle)
    parameters = sum(parameter.numel() for parameter in network.parameters())
    print(f"imported {network.architecture} ({parameters:,} parameters) from {args.checkpoint}")
    print(f"config: {json.dumps(network.config, sort_keys=True)}")
    report = export_network(network, network.kind, args.output, follow_link=True)
    if report.validation is not None:
        print(report.validation.summary())
    print(f"wrote {report.path} (sha256 {report.sha256})")
    return 0
