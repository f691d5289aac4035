"""``trackserve triton-repo``: write a Triton model repository that serves a bundle.

The custom model (the whole pipeline in one Python-backend model), the ensemble (one
model per stage, as the published ExaTrkX service), or both; ``config.pbtxt`` dims come
from the bundle. See :mod:`trackserve.serving.repository`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..paths import DEFAULT_BUNDLE
from ..runtime.config import DEFAULT_EDGE_CHUNK_SIZE, DEFAULT_MEMORY_LIMIT_BYTES

ORDER = 60


def register(subparsers) -> None:
    """Add the ``triton-repo`` subcommand."""
    from ..serving.interface import DEFAULT_ENSEMBLE_NAME, DEFAULT_MODEL_NAME

    parser = subparsers.add_parser(
        "triton-repo",
        help="write a Triton model repository serving a bundle (custom model, ensemble or both)",
        description=(
            "Write a Triton Inference Server model repository that serves a bundle: the custom model "
            f"('{DEFAULT_MODEL_NAME}', the whole pipeline in one Python-backend model) and/or the ensemble "
            f"('{DEFAULT_ENSEMBLE_NAME}', one model per stage). Both take FEATURES FP32 [-1, F] and return "
            "LABELS INT64 [-1], one request per event. The bundle is copied into the repository. "
            "Serve it with `trackserve serve OUTPUT`."
        ),
    )
    parser.add_argument("output", metavar="OUTPUT", help="directory to write the repository into")
    parser.add_argument("--bundle", default=None, help="bundle directory (default: the shipped models/default)")
    parser.add_argument("--layout", choices=("custom", "ensemble", "both"), default="custom",
                        help="which models to write (default: %(default)s)")
    parser.add_argument("--instances", type=int, default=1, metavar="N", help="instances of each model (default: 1)")
    parser.add_argument("--instance-kind", choices=("cpu", "gpu"), default="cpu",
                        help="instance_group kind of each model (default: %(default)s; gpu is refused until the runtime "
                             "has a CUDA device)")
    parser.add_argument("--dynamic-batching", action="store_true",
                        help="queue requests with Triton's dynamic batcher (each event is still run on its own)")
    parser.add_argument("--max-queue-delay-us", type=int, default=None, metavar="US",
                        help="dynamic batcher's max queue delay in microseconds, with --dynamic-batching (default: 0)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime and graph-building threads of each instance (default: the cores of the "
                             "serving machine shared among a model's instances, at least 1 each)")
    parser.add_argument("--edge-chunk-size", type=int, default=None, metavar="N",
                        help="edges the filter scores at once, bounding its memory (cut into a part per thread, each "
                             f"scored in blocks of a few thousand; default {DEFAULT_EDGE_CHUNK_SIZE:,})")
    parser.add_argument("--memory-limit-gb", type=float, default=None, metavar="GB",
                        help=f"refuse events whose estimated working memory exceeds this many GiB (2**30 bytes; default "
                             f"{DEFAULT_MEMORY_LIMIT_BYTES / 2**30:g}); "
                             "each instance (a process of its own) applies it to the event it runs")
    parser.add_argument("--vertex-shifts", default=None, metavar="MM,MM,...",
                        help="the custom model runs each event once per position along the beam and merges the "
                        "passes, as `trackserve run --vertex-shifts` does (mm, e.g. -100,-50,0,50,100; "
                        "--layout custom only; default: the bundle's stages.vertex_shifts, one pass for a bundle "
                        "without; 0: one pass)")
    parser.add_argument("--model-name", default=None,
                        help=f"name of the custom model (default: {DEFAULT_MODEL_NAME}; not with --layout ensemble)")
    parser.add_argument("--ensemble-name", default=None,
                        help=f"name of the ensemble model (default: {DEFAULT_ENSEMBLE_NAME}; not with --layout custom)")
    parser.add_argument("--overwrite", "--force", dest="force", action="store_true",
                        help="replace OUTPUT if it is an existing model repository")
    parser.set_defaults(handler=run)


def options_from_args(args: argparse.Namespace):
    """The :class:`~trackserve.serving.repository.RepositoryOptions` the command line gives."""
    from ..errors import InputError
    from ..runtime.config import memory_limit_from_gib
    from ..runtime.vertex_shifts import parse_vertex_shifts
    from ..serving.interface import DEFAULT_ENSEMBLE_NAME, DEFAULT_MODEL_NAME
    from ..serving.repository import RepositoryOptions

    memory = None
    if args.memory_limit_gb is not None:
        memory = memory_limit_from_gib(args.memory_limit_gb)
    for option, value in (("--threads", args.threads), ("--edge-chunk-size", args.edge_chunk_size)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be an integer >= 1, got {value}")
    if args.max_queue_delay_us is not None and not args.dynamic_batching:
        raise InputError(f"--max-queue-delay-us {args.max_queue_delay_us} applies only with --dynamic-batching; "
                         "give both or drop the delay")
    # a name of a model the layout does not write would be ignored: say so instead
    for option, value, layout in (("--model-name", args.model_name, "ensemble"),
                                  ("--ensemble-name", args.ensemble_name, "custom")):
        if value is not None and args.layout == layout:
            what = "the custom model" if layout == "ensemble" else "the ensemble"
            raise InputError(f"{option} {value} names {what}, which --layout {layout} does not write; drop it or use "
                             "--layout both")
    return RepositoryOptions(
        layout=args.layout,
        instance_count=args.instances,
        instance_kind=args.instance_kind,
        dynamic_batching=args.dynamic_batching,
        max_queue_delay_us=0 if args.max_queue_delay_us is None else args.max_queue_delay_us,
        model_name=DEFAULT_MODEL_NAME if args.model_name is None else args.model_name,
        ensemble_name=DEFAULT_ENSEMBLE_NAME if args.ensemble_name is None else args.ensemble_name,
        intra_op_threads=args.threads,
        graph_threads=args.threads,
        edge_chunk_size=args.edge_chunk_size,
        memory_limit_bytes=memory,
        vertex_shifts=None if args.vertex_shifts is None else parse_vertex_shifts(args.vertex_shifts),
    )


def run(args: argparse.Namespace) -> int:
    """Write the repository and say what it serves."""
    from ..paths import shipped_path
    from ..serving.repository import write_repository

    bundle = args.bundle or shipped_path(DEFAULT_BUNDLE, "default bundle")
    written = write_repository(bundle, args.output, options_from_args(args), overwrite=args.force)
    print(f"model repository written to {written.path}")
    print(f"  models: {', '.join(written.models)}")
    for kind, name in written.entry_points.items():
        print(f"  send events to '{name}' ({kind}): input FEATURES FP32 [-1, F], output LABELS INT64 [-1]")
    print(f"serve it with: trackserve serve {shlex.quote(str(written.path))}")
    _note_running_servers(written.path)
    return 0


def _note_running_servers(repository) -> None:
    """Say on stderr which running servers serve ``repository`` and whether they take the new
    models: in Triton's default model control mode a server keeps serving what it loaded."""
    from ..serving.server import servers_of

    for pid, mode in servers_of(repository):
        if mode == "poll":
            what = "polls the repository and reloads the models that changed itself"
        elif mode == "explicit":
            what = "loads models when asked (its model-control API): load them again to serve the new ones"
        else:
            what = ("does not reload models (Triton's default model control mode): it serves the models it loaded "
                    "until it is started again (stop its trackserve serve and start it)")
        print(f"trackserve triton-repo: note: a running tritonserver (pid {pid}) serves {repository}; it {what}",
              file=sys.stderr)
