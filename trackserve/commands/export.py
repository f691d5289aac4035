"""``trackserve export``: export a torch network to ONNX with a parity check, into a file or a bundle.

Four uses, all comparing ONNX Runtime with PyTorch at shapes other than the traced
ones (see :mod:`trackserve.export.onnx_export`):

* ``trackserve export NET.pt -o OUT.onnx``: export to a file (an existing file only
  with ``--overwrite``, and never NET.pt itself);
* ``trackserve export NET.pt --bundle DIR --network gnn``: export into a bundle,
  replacing that network's file and updating ``pipeline.json`` (this also repairs a
  bundle whose file was changed or lost);
* ``trackserve export NET.pt --check OUT.onnx``: validate an existing ONNX file;
* ``trackserve export NET.pt --bundle DIR --network gnn --check``: validate the
  bundle's file against the network;
* ``trackserve export --bundle DIR --network gnn``: export the bundle's own network again
  from the torch weights and config the bundle records (so a bundle written by an older
  trackserve gets this version's export, e.g. its cheaper factored form), or with
  ``--check`` validate the file against them.

``NET.pt`` is anything :func:`trackserve.export.checkpoint_import.import_checkpoint`
reads: a TorchScript module, a Lightning checkpoint or a state dict.
"""

from __future__ import annotations

import argparse
import sys

ORDER = 35


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a torch network to ONNX (file or bundle) with a parity check, or check an existing export",
        description=(
            "Export a trained network to ONNX and compare ONNX Runtime with PyTorch on the spot: names, "
            "then shapes, then values at sizes other than the traced ones (down to one hit, up to a "
            "50,000-edge graph with heavily repeated destinations), several runs at ONNX Runtime's default "
            "threading. Any difference above 1e-4 * max(1, max|torch|) refuses the export and lists every "
            "output's difference. With --check, validate an existing ONNX file instead of writing one."
        ),
    )
    parser.add_argument("network", metavar="NET.pt", nargs="?", default=None,
                        help="the torch network: TorchScript, Lightning checkpoint or state dict (with --bundle, "
                        "default: the bundle's own weights of --network)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", "-o", metavar="OUT.onnx", help="ONNX file to write (or to check, with --check)")
    target.add_argument("--bundle", metavar="DIR", help="bundle whose network (--network) is written or checked")
    parser.add_argument("--network", dest="name", choices=("embedding", "filter", "pruner", "gnn"),
                        help="which network of the bundle (required with --bundle; pruner: a bundle's first GNN)")
    parser.add_argument("--check", action="store_true", help="validate the existing ONNX file; write nothing")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing OUT.onnx (a symbolic link's target: the link is kept; never the "
                        "input NET.pt itself; a bundle's network file is always replaced)")
    parser.add_argument("--kind", choices=("embedding", "filter", "gnn", "resagnn", "interaction"),
                        help="network kind when the file does not tell (default: detected, or --network)")
    parser.add_argument("--hparams", metavar="YAML", help="training hyperparameters (e.g. hparams_GNN.yaml)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a file that pickles arbitrary Python objects (runs code: trusted files only)")
    parser.add_argument("--opset", type=_positive_int, default=None, metavar="N",
                        help="ONNX opset (default 17; 16 to the highest the installed torch writes)")
    parser.add_argument("--runs", type=_positive_int, default=3, metavar="N",
                        help="ONNX Runtime runs per validation shape (default %(default)s)")
    parser.set_defaults(handler=run)


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """Load the network, then export or check as the arguments say; print the comparisons."""
    from ..errors import BundleError, InputError, MissingHyperparameterError
    from ..extras import require_export_extra

    if args.bundle and not args.name:
        raise BundleError("--bundle needs --network embedding|filter|pruner|gnn: which network of the bundle")
    if args.name and not args.bundle:
        raise InputError(f"--network {args.name} names a network of a bundle and needs --bundle DIR; "
                         "to say which kind of network NET.pt holds, use --kind")
    if args.network is None and not args.bundle:
        doing = "to check the ONNX file against" if args.check else "to export"
        raise BundleError(f"give the torch network NET.pt {doing} (only with --bundle can it be left out: "
                          "the bundle's own weights are then used)")
    for option, given in (("--opset", args.opset is not None), ("--overwrite", args.overwrite)):
        if args.check and given:
            raise InputError(f"{option} is for writing, and --check writes nothing: leave one of them out")
    if args.network is None:
        described_by = [option for option, given in (("--kind", args.kind), ("--hparams", args.hparams),
                                                     ("--trust-pickle", args.trust_pickle)) if given]
        if described_by:
            raise InputError(f"{' and '.join(described_by)} describe{'s' if len(described_by) == 1 else ''} NET.pt, "
                             f"but NET.pt is not given: without it the bundle's own weights of {args.name} are read with "
                             "the config the bundle records; give NET.pt, or leave "
                             + ("it" if len(described_by) == 1 else "them") + " out")
    require_export_extra("trackserve export")
    from ..bundle import load_bundle, replace_network
    from ..export.checkpoint_import import import_with_notes
    from ..export.onnx_export import (
        DEFAULT_OPSET, check_opset, check_output_path, export_network, read_onnx_model, validate_onnx,
    )

    opset = check_opset(args.opset or DEFAULT_OPSET, "--opset")
    if args.output and args.check:
        read_onnx_model(args.output)  # refused before the network is loaded
    elif args.output:
        check_output_path(args.output, "--output", overwrite=args.overwrite, inputs=(args.network, args.hparams))
    if args.network is None:
        from ..export.bundle_networks import load_torch_network

        from ..bundle.checks import onnx_metadata, recorded_network, recorded_network_problems
        from ..export.bundle_networks import weights_fit

        described = load_bundle(args.bundle, check_files=False)  # its ONNX file may be the one to repair
        metadata = onnx_metadata(described.network_path(args.name))
        differs = recorded_network_problems(args.name, described.networks[args.name], metadata)
        record = recorded_network(metadata) if differs else None
        # The file records another network than the entry. If the bundle's weights fit the
        # file's network as well, the entry may have been edited by hand, and exporting would
        # build the weights into the edited config: refuse. If they do not, the file is
        # another network's, put in its place: exporting from the weights repairs it.
        if record is not None and weights_fit(described, args.name, *record):
            raise BundleError(f"{differs[0]}; the bundle's weights fit the network the file records, so the entry "
                              "may have been edited, and exporting would build the weights into the entry's config "
                              "as it now stands: restore the entry first (or, if the file is another network's of "
                              "the same shape, put the network's own file back)")
        network = load_torch_network(described, args.name)
        source = f"the bundle's own weights ({described.networks[args.name].weights['file']})"
    else:
        slot = "gnn" if args.name == "pruner" else args.name  # the network kind --network takes
        kind = args.kind or slot
        try:
            network = import_with_notes("trackserve export", args.network, kind=kind, hparams=args.hparams,
                                        trust_pickle=args.trust_pickle)
        except MissingHyperparameterError as error:
            if args.bundle and not args.hparams:
                raise MissingHyperparameterError(f"{error}; or, for the bundle's own weights of {args.name} with the "
                                                 "config it records, leave NET.pt out") from None
            raise
        source = args.network
        if args.bundle and getattr(network, "kind", slot) != slot:
            raise InputError(f"{args.network} holds a {network.architecture} ({network.kind} network), but the bundle's "
                             f"{args.name} is a {slot} network: give a {slot} network, or another --network")
    print(f"network: {getattr(network, 'architecture', type(network).__name__)} from {source}")

    if args.check:
        if args.bundle:
            bundle = load_bundle(args.bundle)
            path, export_kind = bundle.network_path(args.name), bundle.networks[args.name].kind
        else:
            path, export_kind = args.output, None
        report = validate_onnx(path, network, export_kind, runs=args.runs)
        print(report.summary())
        print(f"ok: {path} computes what {source} computes")
        return 0

    if args.bundle:
        bundle, report = replace_network(args.bundle, args.name, network, opset=opset, runs=args.runs)
        entry = bundle.networks[args.name]
        print(report.validation.summary())
        print(f"wrote {bundle.network_path(args.name)} (sha256 {entry.sha256}) and updated {args.bundle}/pipeline.json")
        if bundle.provenance["exported_again"][-1]["replaced"]:
            print(f"trackserve export: note: the {args.name} network is now another than the one {args.bundle} was "
                  "trained and tuned with: its cuts were chosen for that one; choose them again (trackserve "
                  "tune-cut) before relying on its tracks", file=sys.stderr)
        return 0

    report = export_network(network, None, args.output, opset=opset, runs=args.runs, follow_link=True)
    print(report.validation.summary())
    print(f"wrote {report.path} (opset {report.opset}, sha256 {report.sha256})")
    return 0
