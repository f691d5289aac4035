"""The whole training run: embedding, radius, filter, GNN, cuts, then the bundle.

:func:`train_pipeline` trains the three networks in order, each on what the previous
stage produces (with ``prune_cut``, a second GNN on the edges the first one keeps above
that low cut, the first becoming the bundle's pruner; with ``start_from``, the embedding,
filter and GNN of a bundle trained before, so that only the second GNN is trained),
picks the radius and the cuts on the validation event, writes the bundle
with :func:`~trackserve.bundle.make_bundle` (ONNX export with parity checks) and finally
runs the written bundle through the runtime :class:`~trackserve.runtime.pipeline.Pipeline`
on the validation event, recording every figure and setting in the provenance.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..events.event import Event
from ..events.features import FeatureSpec
from ..jsonout import json_ready
from .config import TrainingConfig
from .data import TrainingEvent, describe_events, prepare_event
from .embedding import embed, radius_for_efficiency, train_embedding
from .filter import filtered_graph, radius_graph, train_filter
from .classifier import passing
from .gnn import choose_gnn_cut, gnn_scores, train_gnn
from .progress import report, seed_everything
from .time_budget import stage_deadline, training_seconds
from .validation import format_figures, graph_figures, track_figures


@dataclass
class TrainingResult:
    """What a training run produced: the bundle, the per-epoch history, the final validation figures, the times."""

    bundle: object
    history: dict
    validation: dict
    seconds: dict


def _check_events(events: list[TrainingEvent], validation: TrainingEvent, spec: FeatureSpec,
                  config: TrainingConfig) -> None:
    """Refuse, before any training, events that cannot train or validate the pipeline."""
    from ..runtime.cut_tuning import check_counted_particles

    if not events:
        raise InputError("training needs at least one training event (give --events, or --simulate with sources)")
    for event in list(events) + [validation]:
        if event.features.shape[1] != spec.num_features:
            raise InputError(f"event {event.name} has {event.features.shape[1]} features, the spec {spec.names} has {spec.num_features}")
        if event.truth_edges.shape[1] == 0:
            use = ("validate a pipeline (the radius and the cuts are chosen on its truth edges)" if event is validation
                   else "train a pipeline")
            raise InputError(f"event {event.name} has no truth edge (no particle with two hits): it cannot {use}")
    # The radius and the cuts keep a fraction of the validation's truth edges of particles above
    # min_pt, and the figures count its tracks: with none, they would be made up.
    check_counted_particles([validation.event], min_pt=config.min_pt, min_hits=config.min_hits, names=None,
                            needed_for="validating the training (its radius and cuts)",
                            advice="the radius and the cuts are chosen on them: give a validation event "
                                   "(--validation, --validation-particles) with such particles")
    if config.signal_min_pt > 0 and not any(event.truth_edges_above(config.signal_min_pt).shape[1] for event in events):
        highest = max(float(event.hit_pt.max()) if event.hit_pt.size else 0.0 for event in events)
        raise InputError(f"--signal-min-pt {config.signal_min_pt:g}: no training event has a truth edge of a particle "
                         f"with pT >= {config.signal_min_pt:g} GeV (the highest pT of a training hit's particle: "
                         f"{highest:.3g} GeV), so the filter and the GNN would learn no edge to keep; lower it")


def blind_columns(names, feature_names, derive_eta: bool) -> tuple[int, ...]:
    """The GNN hit-encoder input columns of the feature ``names`` (``eta`` is the column the
    networks append when they derive it); InputError for a name the GNN does not read."""
    columns = list(feature_names) + (["eta"] if derive_eta and "eta" not in feature_names else [])
    unknown = [name for name in names if name not in columns]
    if unknown:
        raise InputError(f"--gnn-blind-to: {', '.join(unknown)} is not a feature the GNN reads (it reads {', '.join(columns)})")
    return tuple(sorted({columns.index(name) for name in names}))


@dataclass
class StartingPoint:
    """The networks and graph settings a training run takes from a bundle trained before."""

    embedding: object
    filter: object
    gnn: object
    radius: float
    filter_cut: float
    #: Its per-epoch training history (``embedding``, ``filter``, ``gnn``), carried into the new bundle's.
    history: dict
    #: What the new bundle's provenance records of it (``started_from``).
    record: dict


#: The settings of a run that shape the stages ``--start-from`` takes as they are (the
#: embedding, the filter and the first GNN, with their inputs and training targets).
REUSED_STAGE_SETTINGS = ("embedding", "filter", "gnn")
REUSED_RUN_SETTINGS = ("derive_eta", "pair_geometry", "pair_intercept", "pair_direction", "signal_min_pt",
                       "ignore_soft_edges", "gnn_blind_to")


def reused_setting_differences(settings: dict, started: dict) -> list[str]:
    """Where this run's ``settings`` (``TrainingConfig.to_dict()``) differ from those the
    started-from bundle was trained with (``started``), for the stages it gives as they
    are: ``"embedding.hidden 64 (the bundle's 16)"``, one entry each; settings the bundle
    does not record are not compared."""
    found = []
    for stage in REUSED_STAGE_SETTINGS:
        ours, theirs = settings.get(stage) or {}, started.get(stage) or {}
        found += [f"{stage}.{key} {ours[key]!r} (the bundle's {theirs[key]!r})"
                  for key in ours if key in theirs and ours[key] != theirs[key]]
    found += [f"{key} {settings[key]!r} (the bundle's {started[key]!r})"
              for key in REUSED_RUN_SETTINGS if key in settings and key in started and settings[key] != started[key]]
    return found


def starting_point(path: str | Path, spec: FeatureSpec, config: TrainingConfig) -> StartingPoint:
    """The embedding, filter and GNN (torch) of the bundle at ``path``, with its radius and
    filter cut, to train a pruned GNN on; InputError when the bundle does not fit this run
    (other features, another graph cap or direction, a pruner already, no torch weights)."""
    from ..bundle import file_sha256, load_bundle, PIPELINE_FILE
    from ..errors import BundleError
    from ..export.bundle_networks import load_torch_network

    bundle = load_bundle(path)
    where = f"--start-from {path}"
    if tuple(bundle.feature_names) != tuple(spec.names) or \
            any(abs(a - b) > 1e-12 * abs(b) for a, b in zip(bundle.feature_scales, spec.scales)):
        raise InputError(f"{where}: its features {list(bundle.feature_names)} with scales {list(bundle.feature_scales)} "
                         f"are not this run's {list(spec.names)} with scales {list(spec.scales)}; give the --features "
                         "it was trained with (a rescaled bundle cannot be trained on)")
    if "pruner" in bundle.networks:
        raise InputError(f"{where}: the bundle has a pruner already; start from the bundle trained before it")
    stages = bundle.stages
    for name, theirs, ours in (("max neighbours", stages.max_neighbours, config.max_neighbours),
                               ("edge direction", stages.edge_direction, config.edge_direction)):
        if theirs != ours:
            raise InputError(f"{where}: its graph's {name} is {theirs!r}, this run's {ours!r}; give the settings it was "
                             "trained with")
    try:
        networks = {name: load_torch_network(bundle, name) for name in ("embedding", "filter", "gnn")}
    except BundleError as error:
        raise InputError(f"{where}: {error}") from error
    provenance = bundle.provenance
    record = {"bundle": str(path), "pipeline_sha256": file_sha256(Path(bundle.directory) / PIPELINE_FILE),
              "seconds": provenance.get("seconds"), "settings": provenance.get("settings"),
              "data": provenance.get("data")}
    return StartingPoint(networks["embedding"], networks["filter"], networks["gnn"], stages.radius, stages.filter_cut,
                         provenance.get("history") or {}, record)


def train_pipeline(events: list[TrainingEvent], validation: TrainingEvent, config: TrainingConfig, output: str | Path,
                   *, spec: FeatureSpec, data_description: dict | None = None, show_progress: bool = True,
                   start_from: str | Path | None = None) -> TrainingResult:
    """Train a pipeline on ``events``, tune it on ``validation`` and write the bundle to ``output``.

    ``events`` and ``validation``: TrackML :class:`~trackserve.events.event.Event` objects with
    truth (prepared here, in hit_id order) or :class:`TrainingEvent` objects already prepared.

    ``start_from``: a bundle trained before on the same features, whose embedding, filter
    and GNN are taken as they are (with its radius and filter cut); the run then trains
    only the pruned GNN, so ``config.prune_cut`` must be set."""
    import torch

    from ..bundle import StageParameters, load_bundle, make_bundle, write_pipeline_json

    from ..export.derived import eta_spec_for, geometry_spec_for

    if not isinstance(spec, FeatureSpec):
        raise InputError(f"spec must be a FeatureSpec, got {type(spec).__name__} {spec!r}: "
                         "trackserve.events.features.feature_spec(text) makes one from a preset name or scales")
    if not isinstance(config, TrainingConfig):
        raise InputError(f"config must be a TrainingConfig (trackserve.train.config), got {type(config).__name__}")
    if isinstance(events, (Event, TrainingEvent)):
        raise InputError("train_pipeline takes a list of training events, got one event: give [event]")
    # Events as read (trackserve.events.Event) are prepared here; TrainingEvents are taken as they are.
    events = [prepare_event(event, spec) if isinstance(event, Event) else event for event in events]
    if isinstance(validation, Event):
        validation = prepare_event(validation, spec)
    strays = [type(event).__name__ for event in [*events, validation] if not isinstance(event, TrainingEvent)]
    if strays:
        raise InputError(f"train_pipeline takes Events (trackserve.events.read_event) or TrainingEvents "
                         f"(trackserve.train.data.prepare_event), got {', '.join(sorted(set(strays)))}")
    periodic = tuple(i for i, name in enumerate(spec.names) if name == "phi")
    config = replace(config, periodic_features=periodic,
                     phi_period=2 * math.pi / spec.scales[periodic[0]] if periodic else 2.0,
                     eta_columns=eta_spec_for(spec.names, spec.scales) if config.derive_eta else None,
                     geometry_columns=geometry_spec_for(spec.names, spec.scales, intercept=config.pair_intercept,
                                                       direction=config.pair_direction)
                     if config.pair_geometry else None)
    config = replace(config, gnn_blind_columns=blind_columns(config.gnn_blind_to, spec.names, config.derive_eta))
    config.validate()
    if start_from is not None and config.prune_cut is None:
        raise InputError("--start-from takes the networks of a bundle trained before and trains only a pruned GNN: "
                         "give --prune-cut too")
    _check_events(events, validation, spec, config)
    if config.displaced_weight > 0:
        for event in events:
            _ = event.hit_vz  # refuses an event without its production points now, not after an hour of training
    torch.set_num_threads(config.threads)
    rng = seed_everything(config.seed)
    seconds, started = {}, time.perf_counter()
    start = None if start_from is None else starting_point(start_from, spec, config)
    used_before = 0.0 if start is None else training_seconds(start.record["seconds"] or {})
    if start is not None:
        as_recorded = json.loads(json.dumps(json_ready(config.to_dict())))  # tuples as lists, as the bundle has them
        unused = reused_setting_differences(as_recorded, start.record.get("settings") or {})
        if unused:
            start.record["settings_not_used"] = unused
            print(f"trackserve train: note: --start-from {start_from}: its embedding, filter and first GNN are taken "
                  f"as they were trained, so where this run's settings differ from theirs they are not used for them "
                  f"({'; '.join(unused)}); the new GNN is trained with this run's", file=sys.stderr)
        theirs, ours = (((data or {}).get("simulated") or {}).get("vertex_offsets_mm", 0.0)
                        for data in (start.record.get("data"), data_description))
        if data_description is not None and start.record.get("data") is not None and theirs != ours:
            start.record["vertex_offsets_differ"] = {"bundle": theirs, "this_run": ours}
            print(f"trackserve train: note: --start-from {start_from}: its networks were trained on simulated events "
                  f"moved along the beam by up to {theirs:g} mm, this run's are moved by up to {ours:g} mm "
                  "(--vertex-offsets): the new GNN trains on other events than theirs, even of the same seeds",
                  file=sys.stderr)
    if config.time_budget is not None:
        stage_deadline(config.time_budget, used_before, started)  # refused now when nothing is left, not after training

    def last_gnn_deadline() -> float | None:
        """When the last GNN's steps must end for the run to keep within ``config.time_budget``."""
        return None if config.time_budget is None else stage_deadline(config.time_budget, used_before, started)

    mark = time.perf_counter()
    if start is None:
        embedding_net, embedding_history = train_embedding(events, validation, config, rng, show_progress=show_progress)
        radius = radius_for_efficiency(embed(embedding_net, validation.features),
                                       validation.truth_edges_above(config.min_pt), config.embedding.target_efficiency)
        radius = float(np.format_float_positional(radius, precision=5, unique=True, fractional=False, trim="-"))
        seconds["embedding"] = time.perf_counter() - mark
    else:
        embedding_net, radius = start.embedding, start.radius
        embedding_history = start.history.get("embedding")

    mark = time.perf_counter()
    graphs = [radius_graph(embedding_net, event, radius, config) for event in events]
    validation_graph = radius_graph(embedding_net, validation, radius, config)
    report(f"radius {radius:.5g}: validation graph {format_figures(graph_figures(validation, validation_graph, config.min_pt))}",
           enabled=show_progress)
    if start is None:
        filter_net, filter_cut, filter_history = train_filter(events, graphs, validation, validation_graph, config, rng,
                                                              show_progress=show_progress)
        seconds["filter"] = time.perf_counter() - mark
    else:
        filter_net, filter_cut = start.filter, start.filter_cut
        filter_history = start.history.get("filter")

    mark = time.perf_counter()
    filtered = [filtered_graph(filter_net, event, graph, filter_cut) for event, graph in zip(events, graphs)]
    validation_filtered = filtered_graph(filter_net, validation, validation_graph, filter_cut)
    if start is None:
        gnn_net, gnn_history = train_gnn(events, filtered, validation, validation_filtered, config, rng,
                                         show_progress=show_progress,
                                         deadline=last_gnn_deadline() if config.prune_cut is None else None)
        seconds["gnn"] = time.perf_counter() - mark
    else:
        gnn_net, gnn_history = start.gnn, start.history.get("gnn")
    history = {"embedding": embedding_history, "filter": filter_history, "gnn": gnn_history}
    networks = {"embedding": embedding_net, "filter": filter_net, "gnn": gnn_net}
    gnn_graph = validation_filtered
    if config.prune_cut is not None:
        mark = time.perf_counter()
        networks["pruner"] = gnn_net
        pruned = [np.ascontiguousarray(graph[:, passing(gnn_scores(gnn_net, event, graph), config.prune_cut)])
                  for event, graph in zip(events, filtered)]
        gnn_graph = np.ascontiguousarray(
            validation_filtered[:, passing(gnn_scores(gnn_net, validation, validation_filtered), config.prune_cut)])
        report(f"pruned at {config.prune_cut:g}: validation graph {format_figures(graph_figures(validation, gnn_graph, config.min_pt))}",
               enabled=show_progress)
        second = replace(config, gnn=config.pruned_gnn_settings())
        gnn_net, history["pruned_gnn"] = train_gnn(events, pruned, validation, gnn_graph, second, rng,
                                                   show_progress=show_progress, deadline=last_gnn_deadline())
        networks["gnn"] = gnn_net
        seconds["pruned_gnn"] = time.perf_counter() - mark
    gnn_cut, gnn_figures = choose_gnn_cut(gnn_net, validation, gnn_graph, config)
    seconds["training"] = time.perf_counter() - started
    if start is not None:  # this run's training and the training of the bundle it started from
        seconds["training_total"] = seconds["training"] + used_before

    final = {
        "graph": graph_figures(validation, validation_graph, config.min_pt),
        "filter": graph_figures(validation, validation_filtered, config.min_pt),
        **({} if config.prune_cut is None else {"pruner": graph_figures(validation, gnn_graph, config.min_pt)}),
        "gnn": gnn_figures,
    }
    report(f"validation: gnn cut {gnn_cut}: {format_figures(gnn_figures)}", enabled=show_progress)
    stages = StageParameters(radius=radius, max_neighbours=config.max_neighbours, filter_cut=filter_cut,
                             gnn_cut=gnn_cut, edge_direction=config.edge_direction, track_building=config.track_building,
                             prune_cut=config.prune_cut)
    provenance = json_ready({
        "trained_by": "trackserve train",
        "data": {**(data_description or {}), "training": describe_events(events), "validation": describe_events([validation])},
        "settings": config.to_dict(),
        "history": history,
        "validation": final,
        "seconds": seconds,
        "torch_threads": config.threads,
        **({} if start is None else {"started_from": start.record}),
    })
    mark = time.perf_counter()
    make_bundle(output, networks, features=spec, stages=stages, provenance=provenance)
    seconds["export"] = time.perf_counter() - mark

    bundle_check = run_bundle_check(output, validation, config)
    report(f"bundle check (ONNX Runtime pipeline on the validation event): {format_figures(bundle_check)}",
           enabled=show_progress)
    bundle = load_bundle(output)
    data = bundle.to_dict()
    data["provenance"]["validation"]["bundle_check"] = json_ready(bundle_check)
    data["provenance"]["seconds"] = json_ready(seconds)
    write_pipeline_json(data, output)
    return TrainingResult(load_bundle(output), history, {**final, "bundle_check": bundle_check}, seconds)


def run_bundle_check(bundle_path: str | Path, event: TrainingEvent, config: TrainingConfig) -> dict:
    """Run the written bundle with the runtime pipeline (ONNX Runtime) on ``event``; its track figures."""
    from ..runtime.config import RuntimeConfig
    from ..runtime.pipeline import Pipeline

    pipeline = Pipeline(bundle_path, config=RuntimeConfig(intra_op_threads=config.threads, graph_threads=config.threads))
    result = pipeline.run(event.features)
    figures = track_figures(event, result.labels, config.min_pt, config.min_hits)
    return {**figures, "edges_graph": result.num_edges["graph"], "edges_filter": result.num_edges["filter"],
            "edges_gnn": result.num_edges["gnn"], "seconds": result.timings.get("total", float("nan"))}
