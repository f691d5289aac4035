"""``trackserve train``: train an embedding, a filter and a GNN on TrackML events and write a bundle.

Training events are TrackML events with truth (``--events``), events simulated from
particle tables (``--particles TABLE --simulate N``) and events of random particles
(``--random-events N``), in any mix. The radius and the cuts are tuned on one validation
event: ``--validation``, or one more simulated event with seeds no training event uses
(from ``--validation-particles`` when given, else from the first table or random particles).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..bundle import TRACK_BUILDING_METHODS
from ..events.simulate import MAX_VERTEX_OFFSET_MM
from ..train.config import GNN_ARCHITECTURES, TrainingConfig
from ..train.precision import TRAINING_PRECISIONS

ORDER = 30

#: Training threads when --threads is not given (fewer on a machine with fewer cores).
DEFAULT_THREADS = 2
#: Particles per random event when --num-particles is not given (about 100k hits: TrackML's density).
RANDOM_PARTICLES = 8500

#: The metavariable of a per-stage option by its type (as the other options name theirs).
_METAVARS = {int: "N", float: "X", str: "TEXT"}
#: Per-stage options: (flag, stage, setting, type, help); a ``bool`` setting is an on switch.
_STAGE_OPTIONS = (
    ("--embedding-epochs", "embedding", "epochs", int, "epochs of metric learning"),
    ("--embedding-hidden", "embedding", "hidden", int, "width of the embedding MLP"),
    ("--embedding-layers", "embedding", "layers", int, "hidden layers of the embedding MLP"),
    ("--embedding-dim", "embedding", "dim", int, "embedding dimensions"),
    ("--embedding-lr", "embedding", "learning_rate", float, "peak learning rate of the embedding"),
    ("--margin", "embedding", "margin", float, "hinge margin (embedding distance)"),
    ("--hard-negatives", "embedding", "hard_negatives", int, "nearest neighbours mined per anchor"),
    ("--graph-efficiency", "embedding", "target_efficiency", float, "radius: fraction of validation truth edges kept"),
    ("--filter-epochs", "filter", "epochs", int, "epochs of the filter"),
    ("--filter-hidden", "filter", "hidden", int, "width of the filter"),
    ("--filter-layers", "filter", "layers", int, "linear layers of the filter before its output"),
    ("--filter-lr", "filter", "learning_rate", float, "peak learning rate of the filter"),
    ("--filter-pos-weight", "filter", "positive_weight", float, "weight of true edges in the filter loss"),
    ("--filter-efficiency", "filter", "target_efficiency", float, "filter cut: fraction of true graph edges kept"),
    ("--gnn", "gnn", "architecture", str, "GNN architecture: InteractionGNN or ResAGNN"),
    ("--gnn-epochs", "gnn", "epochs", int, "epochs of the GNN"),
    ("--gnn-hidden", "gnn", "hidden", int, "width of the GNN"),
    ("--gnn-iterations", "gnn", "iterations", int, "message-passing steps of the GNN"),
    ("--gnn-lr", "gnn", "learning_rate", float, "peak learning rate of the GNN"),
    ("--gnn-pos-weight", "gnn", "positive_weight", float, "weight of true edges in the GNN loss"),
    ("--sectors", "gnn", "sectors", int, "phi sectors per event (GNN sub-graphs)"),
    ("--gnn-halo", "gnn", "halo", float, "context around each GNN sector, in sector widths on each side; only the "
     "sector's own edges enter the loss"),
    ("--gnn-edge-update-new-nodes", "gnn", "edge_update_uses_new_nodes", bool,
     "each GNN step's edge update reads the hits as that step left them (as ACORN's network does): an edge hears "
     "its neighbouring edges in one step instead of two"),
)


def register(subparsers) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train an embedding, filter and GNN on TrackML events and write a bundle",
        description=(
            "Train the three networks of a pipeline (metric-learning embedding, edge filter, GNN) on TrackML events, "
            "read (--events) or simulated (--particles/--simulate, --random-events), choose the graph radius and "
            "the cuts on a validation event, and write a bundle (pipeline.json + ONNX files) to --output. "
            "Every setting, the data and the validation figures are recorded in the bundle's provenance."
        ),
    )
    parser.add_argument("--output", required=True, metavar="BUNDLE_DIR", help="directory to write the bundle to")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the bundle already in --output (default: refuse); it is replaced only when the "
                        "training succeeds")
    data = parser.add_argument_group("data")
    data.add_argument("--events", action="append", default=[], metavar="DIR",
                      help="TrackML events with truth to train on (prefix, file or directory; repeatable)")
    data.add_argument("--particles", action="append", default=[], metavar="TABLE.csv",
                      help="TrackML particles table to simulate training events from (repeatable)")
    data.add_argument("--simulate", type=int, default=0, metavar="N", help="events simulated from each --particles table (default 0)")
    data.add_argument("--random-events", type=int, default=0, metavar="N", help="events of random particles to simulate (default 0)")
    data.add_argument("--num-particles", type=int, default=None, metavar="P",
                      help=f"particles per random event (default {RANDOM_PARTICLES}): of --random-events, and of the "
                           "validation event when no --validation, --validation-particles or --particles gives it")
    data.add_argument("--vertex-offsets", type=float, default=0.0, metavar="MM",
                      help="move each simulated training event's collision region along the beam by its own offset "
                           "of up to MM (random size; towards -z and +z in turn for each source's events; default 0: "
                           "none; the validation event is not moved), so the networks see more particles produced far "
                           "from the centre")
    data.add_argument("--validation", metavar="EVENT", action="append",
                      help="TrackML event with truth to tune the radius and cuts on (default: one more simulated "
                           "event); once")
    data.add_argument("--validation-particles", metavar="TABLE.csv", action="append",
                      help="simulate the validation event from this particles table (default: the first --particles "
                           "table, else random particles); once")
    data.add_argument("--features", default="trackml-1000",
                      help="feature spec: a preset (trackml-1000, exatrkx-service) or scales (default trackml-1000)")
    data.add_argument("--geometry", metavar="detectors.csv", help="geometry for the simulation (default: data/detectors.csv)")
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0,
                     help="seed of the simulation and of the training (default 0); byte-identical networks at "
                          "--threads 1, at more threads they can differ slightly from run to run")
    run.add_argument("--threads", type=int, default=None,
                     help="torch and graph-building threads, at most the cores (default 2, or 1 on one core)")
    run.add_argument("--max-neighbours", type=int, default=None, metavar="K",
                     help=f"cap of the radius graph per hit (default {TrainingConfig().max_neighbours})")
    run.add_argument("--signal-min-pt", type=float, default=None, metavar="GEV",
                     help="filter and GNN learn to keep only edges of particles with at least this pT (default 0: all)")
    run.add_argument("--ignore-soft-edges", action="store_true",
                     help="with --signal-min-pt: leave the edges of softer particles out of the filter's and the "
                          "GNN's loss instead of teaching them as wrong edges")
    run.add_argument("--derive-eta", action="store_true",
                     help="networks compute eta from the r and z features themselves (the bundle reads r, phi, z only)")
    run.add_argument("--pair-geometry", action="store_true",
                     help="filter and GNN also read each edge's transverse curvature and r-z pointing (needs r, phi, z)")
    run.add_argument("--pair-intercept", action="store_true",
                     help="with --pair-geometry: also each edge's z intercept on the beam line (the same wherever "
                          "along the beam the collision happened)")
    run.add_argument("--pair-direction", action="store_true",
                     help="with --pair-geometry: also each edge's own pseudorapidity, from its slope along the beam "
                          "(the particle's eta wherever along the beam the collision happened)")
    run.add_argument("--gnn-blind-to", metavar="NAMES", default=None,
                     help="comma-separated hit features (for example z,eta) the GNN's hit encoder does not read: the "
                          "GNN sees them only through its edge inputs")
    run.add_argument("--track-building", choices=TRACK_BUILDING_METHODS, default=None,
                     help="the bundle's track building: plain connected components (default) or best_edges")
    run.add_argument("--prune-cut", type=float, default=None, metavar="P",
                     help="train a second GNN on the edges whose first GNN's score passes this low cut (for example "
                          "0.001: a graph of higher purity); the first GNN becomes the bundle's pruner")
    run.add_argument("--pruned-gnn-epochs", type=int, default=None, metavar="N",
                     help="with --prune-cut: epochs of the second GNN (default: --gnn-epochs)")
    run.add_argument("--pruned-gnn-hidden", type=int, default=None, metavar="W",
                     help="with --prune-cut: width of the second GNN (default: --gnn-hidden); it scores a graph "
                          "several times smaller than the first, so a wider one costs little")
    run.add_argument("--pruned-gnn-iterations", type=int, default=None, metavar="N",
                     help="with --prune-cut: message-passing steps of the second GNN (default: --gnn-iterations)")
    run.add_argument("--start-from", metavar="BUNDLE_DIR", default=None,
                     help="with --prune-cut: take the embedding, filter and GNN (and the radius and filter cut) of this "
                          "bundle, trained before by trackserve train on the same features, and train only the second GNN, on "
                          "this run's events (which may be more than that bundle's; its own are recorded)")
    run.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                     help="keep the whole training (with the --start-from bundle's) within SECONDS: the last GNN "
                          "trained (the second with --prune-cut) ends its learning-rate cycle early when its epochs "
                          "would pass the time left (30 s kept for choosing its cut); the stages before it are not "
                          "cut short")
    run.add_argument("--precision", choices=TRAINING_PRECISIONS, default="float32",
                     help="number type of the filter's and the GNNs' training steps: float32 (default), or bfloat16 "
                          "matrix products with everything else in float32 (mixed precision: faster on a CPU with "
                          "bfloat16 instructions; measure on one without, where they are emulated). The embedding trains in float32, and the exported "
                          "networks are float32 either way")
    run.add_argument("--displaced-weight", type=float, default=0.0, metavar="W",
                     help="weigh the true edges of particles produced away from the centre more in the GNNs' loss: "
                          "1 + W * min(|vz|, 200 mm) / 100 mm (default 0: off; needs each event's particles table)")
    run.add_argument("--quick", action="store_true", help="tiny networks, one epoch per stage (a smoke test)")
    run.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    stage = parser.add_argument_group("stages", "The defaults are a small recipe, not the shipped bundle's (its "
                                      "command and settings: models/default/README.md).")
    defaults, quick = TrainingConfig(), TrainingConfig.quick()
    for flag, stage_name, name, kind, text in _STAGE_OPTIONS:
        dest = flag[2:].replace("-", "_")
        if kind is bool:  # absent: None, so the stage keeps its default
            stage.add_argument(flag, dest=dest, action="store_true", default=None,
                               help=f"{text} (default: {'on' if getattr(getattr(defaults, stage_name), name) else 'off'})")
        elif (stage_name, name) == ("gnn", "architecture"):
            stage.add_argument(flag, dest=dest, choices=GNN_ARCHITECTURES, default=None,
                               help=f"{text} ({_stage_defaults(defaults, quick, stage_name, name)})")
        else:
            stage.add_argument(flag, dest=dest, type=kind, default=None, metavar=_METAVARS[kind],
                               help=f"{text} ({_stage_defaults(defaults, quick, stage_name, name)})")
    parser.set_defaults(handler=handle)


def _stage_defaults(defaults, quick, stage: str, name: str) -> str:
    """The help text's default of one stage setting, with --quick's where it differs."""
    value, quick_value = getattr(getattr(defaults, stage), name), getattr(getattr(quick, stage), name)
    text = f"default {value:g}" if isinstance(value, float) else f"default {value}"
    if quick_value != value:
        text += f"; --quick {quick_value:g}" if isinstance(quick_value, float) else f"; --quick {quick_value}"
    return text.replace("%", "%%")


def training_config(args: argparse.Namespace):
    """The :class:`~trackserve.train.config.TrainingConfig` the options describe."""
    from ..errors import InputError
    from ..train.config import TrainingConfig, TrainingSettingError

    config = TrainingConfig.quick() if args.quick else TrainingConfig()
    stages = {"embedding": {}, "filter": {}, "gnn": {}}
    for flag, stage, name, _, _ in _STAGE_OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            stages[stage][name] = value
    config = replace(
        config,
        embedding=replace(config.embedding, **stages["embedding"]),
        filter=replace(config.filter, **stages["filter"]),
        gnn=replace(config.gnn, **stages["gnn"]),
        seed=args.seed, threads=_threads(args.threads),
        **({"max_neighbours": args.max_neighbours} if args.max_neighbours is not None else {}),
        **({"signal_min_pt": args.signal_min_pt} if args.signal_min_pt is not None else {}),
        **({"ignore_soft_edges": True} if args.ignore_soft_edges else {}),
        **({"gnn_blind_to": tuple(name.strip() for name in args.gnn_blind_to.split(",") if name.strip())}
           if args.gnn_blind_to else {}),
        **({"derive_eta": True} if args.derive_eta else {}),
        **({"track_building": args.track_building} if args.track_building else {}),
        **({"pair_geometry": True} if args.pair_geometry else {}),
        **({"pair_intercept": True} if args.pair_intercept else {}),
        **({"pair_direction": True} if args.pair_direction else {}),
        **({"prune_cut": args.prune_cut} if args.prune_cut is not None else {}),
        **({"pruned_gnn_epochs": args.pruned_gnn_epochs} if args.pruned_gnn_epochs is not None else {}),
        **({"pruned_gnn_hidden": args.pruned_gnn_hidden} if args.pruned_gnn_hidden is not None else {}),
        **({"pruned_gnn_iterations": args.pruned_gnn_iterations} if args.pruned_gnn_iterations is not None else {}),
        **({"time_budget": args.time_budget} if args.time_budget is not None else {}),
        precision=args.precision, displaced_weight=args.displaced_weight,
    )
    try:
        config.validate()
    except TrainingSettingError as error:  # named by the option that set it, where one did
        option = setting_option(error.setting, args)
        if option is None:
            raise
        requirement = re.sub(r"\b[a-z]+(?:_[a-z]+)+\b",  # settings it refers to, by their options too
                             lambda match: setting_option(f"run.{match.group(0)}", args) or match.group(0),
                             error.requirement)
        raise InputError(f"{option} must be {requirement} (training setting {error.setting})") from None
    return config


def setting_option(setting: str, args: argparse.Namespace | None = None) -> str | None:
    """The option of ``trackserve train`` that sets training setting ``setting`` (``gnn.iterations``
    -> ``--gnn-iterations``; ``pruned_gnn.hidden`` -> ``--pruned-gnn-hidden``), None for one no
    option sets (``args``: the parsed options, whose names the run-wide settings share)."""
    stage, _, name = setting.partition(".")
    for flag, stage_name, field_name, _, _ in _STAGE_OPTIONS:
        if (stage_name, field_name) == (stage, name):
            return flag
    candidates = {"run": name, "pruned_gnn": f"pruned_gnn_{name}"}
    dest = candidates.get(stage)
    if dest is not None and args is not None and hasattr(args, dest):
        return "--" + dest.replace("_", "-")
    return None


def _threads(given: int | None) -> int:
    """The training's thread count: ``--threads`` (1 .. the cores), or 2 where the cores allow."""
    from ..errors import InputError
    from ..runtime.config import available_cores

    cores = available_cores()
    if given is None:
        return min(DEFAULT_THREADS, cores)
    if not 1 <= given <= cores:
        raise InputError(f"--threads {given} must be in 1..{cores} (the cores this process may use)")
    return given


def _validation_event(path: str, spec):
    """``(event, source)``: the ``--validation`` event prepared for training, refused with its
    option named when it lacks the truth or particles the radius and the cuts are chosen with."""
    from ..errors import InputError
    from ..events.trackml import find_event_prefixes, read_event
    from ..train.data import prepare_event

    prefix = find_event_prefixes(path)[0]
    event = read_event(prefix, parts=("truth", "particles"))
    missing = [part for part in ("truth", "particles") if getattr(event, part) is None]
    if missing:
        raise InputError(f"--validation {path}: event {prefix.name} has no {' and no '.join(missing)} file "
                         f"({', '.join(f'{prefix.name}-{part}.csv' for part in missing)}): the radius and the cuts are "
                         "chosen on the validation event's true edges and particles; give an event with both")
    return prepare_event(event, spec, name=str(prefix)), str(prefix)


def _check_not_trained_on(validation: Path, bundle: Path) -> None:
    """InputError when the ``--validation`` event is one the ``--start-from`` bundle's networks
    trained on (its provenance names them): the cuts and figures need a held-out event."""
    from ..bundle import load_bundle
    from ..errors import InputError

    from ..train.data import same_event, trained_event_paths

    provenance = load_bundle(bundle, check_files=False).provenance
    if any(same_event(trained, validation) for trained in trained_event_paths(provenance)):
        raise InputError(f"--validation {validation} is one of the events the --start-from bundle {bundle} trained "
                         "on: the cuts and the figures need an event its networks did not learn from; give a "
                         "held-out event")


def _one_validation(args: argparse.Namespace) -> None:
    """``--validation`` and ``--validation-particles`` as the one value each takes (None when
    not given); an InputError for either given more than once (the last one won before)."""
    from ..errors import InputError

    for name in ("validation", "validation_particles"):
        given = getattr(args, name) or []
        if len(given) > 1:
            raise InputError(f"--{name.replace('_', '-')} given {len(given)} times ({', '.join(given)}): training "
                             "validates on one event; give it once (trackserve tune-cut takes several)")
        setattr(args, name, given[0] if given else None)


def handle(args: argparse.Namespace) -> int:
    """Read or simulate the events, train, write the bundle and print the validation figures."""
    from ..extras import require_export_extra

    require_export_extra("trackserve train")
    from ..bundle_output import bundle_written_to, check_bundle_output
    from ..errors import InputError
    from ..events.features import feature_spec
    from ..events.metrics import figure_text
    from ..events.geometry import load_geometry
    from ..events.simulate import check_seed, check_simulation_memory
    from ..events.trackml import find_event_prefixes
    from ..train.data import (SimulatedSource, read_training_events, simulated_events,
                              simulated_validation_event)
    from ..train.precision import emulation_warning
    from ..train.time_budget import budget_summary
    from ..train.trainer import train_pipeline

    check_seed(args.seed)  # named by its option (the config's own check names run.seed)
    _one_validation(args)
    config = training_config(args)
    config.validate()  # settings out of range are refused before any event is read or simulated
    check_bundle_output(args.output, overwrite=args.overwrite, reads={"--start-from": args.start_from})
    if args.start_from is not None:
        if config.prune_cut is None:
            raise InputError("--start-from trains only the pruned GNN on a bundle trained before: give --prune-cut too")
        if not Path(args.start_from, "pipeline.json").is_file():
            raise InputError(f"--start-from {args.start_from}: no bundle there (no pipeline.json)")
    warning = emulation_warning(config.precision)
    if warning:
        print(warning, file=sys.stderr)
    spec = feature_spec(args.features)
    if config.derive_eta:
        from ..export.derived import eta_spec_for

        eta_spec_for(spec.names, spec.scales)  # refuses a spec without r and z, or with eta already
    if config.pair_geometry:
        from ..export.derived import geometry_spec_for

        geometry_spec_for(spec.names, spec.scales)  # refuses a spec without r, phi and z
    if config.gnn_blind_to:
        from ..train.trainer import blind_columns

        blind_columns(config.gnn_blind_to, spec.names, config.derive_eta)  # refuses a feature the GNN does not read
    if config.track_building == "best_edges" and not {"r", "z"} <= set(spec.names):
        raise InputError(f"--track-building best_edges orders hits by r and z; the features {list(spec.names)} lack them")
    random_particles = bool(args.random_events) or not (args.validation or args.validation_particles or args.particles)
    if args.num_particles is not None and not random_particles:
        raise InputError(f"--num-particles {args.num_particles}: no random event is simulated (it sets the particles "
                         "of --random-events N, and of the validation event when no --validation, "
                         "--validation-particles or --particles gives it)")
    args.num_particles = RANDOM_PARTICLES if args.num_particles is None else args.num_particles
    for name in ("simulate", "random_events", "num_particles"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if not (math.isfinite(args.vertex_offsets) and 0 <= args.vertex_offsets <= MAX_VERTEX_OFFSET_MM):
        raise InputError(f"--vertex-offsets must be a number of mm in 0..{MAX_VERTEX_OFFSET_MM:g} (each training event's "
                         f"collision region moves by up to MM); got {args.vertex_offsets!r}")
    if args.vertex_offsets and not (args.simulate or args.random_events):
        raise InputError("--vertex-offsets moves simulated training events: give --particles TABLE --simulate N or "
                         "--random-events N (events read with --events are taken as they are)")
    if args.simulate and not args.particles:
        raise InputError("--simulate N simulates events from --particles tables: give at least one --particles TABLE")
    if args.particles and not args.simulate:
        raise InputError("--particles given without --simulate N (the number of events to simulate from each table)")
    tables = [Path(path) for path in args.particles]
    for table in tables:
        if not table.is_file():
            raise InputError(f"--particles {table}: no such file")
    sources = [SimulatedSource(particles=table) for table in tables]
    if random_particles:
        check_simulation_memory(args.num_particles, option=f"--num-particles {args.num_particles}")
    random_source = SimulatedSource(num_particles=args.num_particles)
    show = not args.quiet
    # (read when given even if nothing is simulated: a wrong --geometry is named, not ignored)
    simulates = tables or args.random_events or not args.validation
    geometry = load_geometry(args.geometry) if (simulates or args.geometry) else None
    if args.validation and args.validation_particles:
        raise InputError("give --validation (an event) or --validation-particles (a table to simulate it from), not both")
    if args.validation_particles and not Path(args.validation_particles).is_file():
        raise InputError(f"--validation-particles {args.validation_particles}: no such file")

    if args.validation and len(find_event_prefixes(args.validation)) > 1:
        held = find_event_prefixes(args.validation)
        raise InputError(f"--validation {args.validation} holds {len(held)} events ({', '.join(p.name for p in held[:3])}"
                         f"{', ...' if len(held) > 3 else ''}); training validates on one: give one event's prefix, "
                         f"such as {held[0]}")
    if args.validation and args.events:
        from ..train.data import same_event

        held_out = find_event_prefixes(args.validation)[0]
        if any(same_event(prefix, held_out) for path in args.events for prefix in find_event_prefixes(path)):
            raise InputError(f"--validation {args.validation} is one of the training events: the cuts and the "
                             "figures need an event the networks did not learn from; give a held-out event")
    if args.validation and args.start_from is not None:
        _check_not_trained_on(find_event_prefixes(args.validation)[0], Path(args.start_from))
    start = time.perf_counter()
    if args.validation:  # read first: a validation event that cannot serve is refused before the training events
        validation, validation_source = _validation_event(args.validation, spec)
    events = read_training_events(args.events, spec) if args.events else []
    if args.simulate:
        events += simulated_events(sources, args.simulate, spec, seed=args.seed, stream=0, geometry=geometry,
                                   show_progress=show, vertex_offsets=args.vertex_offsets)
    if args.random_events:
        events += simulated_events([random_source], args.random_events, spec, seed=args.seed, stream=1,
                                   geometry=geometry, show_progress=show, vertex_offsets=args.vertex_offsets)
    if not events:
        raise InputError("no training events: give --events DIR, --particles TABLE --simulate N, or --random-events N")
    if not args.validation:
        if args.validation_particles:
            source = SimulatedSource(particles=Path(args.validation_particles))
        else:
            source = sources[0] if sources else random_source
        validation, validation_source = simulated_validation_event(source, spec, seed=args.seed, geometry=geometry)
    data_seconds = time.perf_counter() - start
    description = {
        "features": spec.to_dict(),
        "trackml_events": [str(Path(path).resolve()) for path in args.events],
        "simulated": {
            # tables by absolute path (the provenance then says which file it was from anywhere)
            "tables": [{"table": str(table.resolve()), "events": args.simulate} for table in tables],
            **({"random": {"events": args.random_events, "particles": args.num_particles}}
               if args.random_events else {}),
            "seed": args.seed, "simulation": "trackserve.events.simulate defaults (2 T, noise fraction 0.1)",
            **({"vertex_offsets_mm": args.vertex_offsets} if args.vertex_offsets else {}),
        },
        "validation_event": validation_source,
        "data_seconds": data_seconds,
    }
    with bundle_written_to(args.output) as directory:  # the bundle takes --output's place only when all went well
        result = train_pipeline(events, validation, config, directory, spec=spec, data_description=description,
                                show_progress=show, start_from=args.start_from)
    check = result.validation["bundle_check"]
    stages = result.bundle.stages
    print(f"bundle written to {args.output} in {time.perf_counter() - start:.0f} s "
          f"(radius {stages.radius:g}, filter cut {stages.filter_cut:g}, GNN cut {stages.gnn_cut:g})")
    last = "pruned_gnn" if config.prune_cut is not None else "gnn"
    budget = budget_summary(config.time_budget, result.seconds, result.history[last])
    if budget is not None:
        print(budget)
    print("validation event, edges after each stage (the trained PyTorch networks; the written bundle, run by "
          "ONNX Runtime, may keep an edge more or less from float rounding: provenance.validation.bundle_check):")
    for stage in (name for name in ("graph", "filter", "pruner", "gnn") if name in result.validation):
        figures = result.validation[stage]
        print(f"  {stage:6s} edges {figures['num_edges']:>9d}  efficiency {figures['efficiency']:.4f}  purity {figures['purity']:.4f}")
    print(f"  tracks of the written bundle (pT >= {config.min_pt:g} GeV, >= {config.min_hits} hits): efficiency "
          f"{figure_text(check['track_efficiency'])}, fake rate {figure_text(check['fake_rate'])}, duplicate rate "
          f"{figure_text(check['duplicate_rate'])}")
    if not check["track_efficiency"] > 0:  # 0 or NaN: the bundle was written, but finds nothing
        print(f"trackserve train: warning: the bundle finds no track of the validation event (efficiency "
              f"{check['track_efficiency']:.4f}): train longer or on more events before using it", file=sys.stderr)
    return 0
