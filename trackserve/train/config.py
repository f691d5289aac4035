"""Every setting of a training run, with its default: one dataclass per stage and one for the run.

The defaults train the shipped default bundle; :meth:`TrainingConfig.quick` shrinks every
network and step count for smoke tests. :meth:`TrainingConfig.to_dict` is what the bundle's
provenance records.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from ..errors import InputError
from ..export.limits import MAX_DEPTH, MAX_WIDTH
from .time_budget import RESERVE_SECONDS

#: GNN architectures ``trackserve train`` can train.
GNN_ARCHITECTURES = ("InteractionGNN", "ResAGNN")


#: The most φ sectors, or hard negatives and random partners per anchor, a stage may take: as
#: with the networks' widths and depths (MAX_WIDTH, MAX_DEPTH), a typo of a few digits would
#: otherwise take the machine's memory or run without end instead of being refused; the
#: published ExaTrkX sectors are a few degrees wide.
MAX_SECTORS = 1024
#: The least value of each ``pruned_gnn_*`` override (iterations as the first GNN's: no message
#: passing is a GNN too).
_PRUNED_LEAST = {"epochs": 1, "hidden": 1, "iterations": 0}
#: The most epochs a stage may take: an epoch of the default recipe takes tens of seconds on
#: 2 cores, so 10,000 is days; beyond it a count is a typo that would run until stopped.
MAX_EPOCHS = 10_000
MAX_PAIRS_PER_ANCHOR = 1024
#: The highest learning rate a stage takes: AdamW steps of that size already diverge on these networks.
MAX_LEARNING_RATE = 1.0


#: The largest hinge margin (embedding distance) and loss weight or input scale a setting
#: may take: beyond them float32 losses overflow, and training diverges after the stages before.
MAX_MARGIN = 1e4
MAX_WEIGHT = 1e6


def _bounded_weight(value) -> bool:
    """Whether ``value`` is a number in (0, :data:`MAX_WEIGHT`] (NaN and infinity are not)."""
    return 0 < value <= MAX_WEIGHT


#: The largest seed (numpy seeds take non-negative integers; trackserve keeps them to 63 bits).
MAX_TRAINING_SEED = 2**63 - 1

_TYPE_CHECKS = {
    "int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), "True or False"),
    "tuple[str, ...]": (lambda v: isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v),
                        "a tuple of strings"),
    "tuple[int, ...]": (lambda v: isinstance(v, (tuple, list)) and all(isinstance(x, numbers.Integral)
                                                                        and not isinstance(x, bool) for x in v),
                        "a tuple of integers"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _check_types(settings, where: str) -> None:
    """Raise InputError naming the first field of the dataclass ``settings`` whose value is not
    of its declared type (``int``, ``float``, ``bool``, ``str``, each optionally ``| None``):
    the range checks after it compare values, and training would otherwise fail deep inside
    numpy or torch (an epoch count of 1.5, a seed given as text)."""
    for item in fields(settings):
        declared = str(item.type)
        optional = declared.endswith(" | None")
        check = _TYPE_CHECKS.get(declared.removesuffix(" | None"))
        value = getattr(settings, item.name)
        if check is None or (optional and value is None):
            continue
        accepts, expected = check
        if not accepts(value):
            raise TrainingSettingError(f"{where}.{item.name}", expected + (" or None" if optional else "")
                                       + f", got {value!r}")


class TrainingSettingError(InputError):
    """A training setting of the wrong type or out of range: ``setting`` names it
    (``gnn.iterations``), ``requirement`` says what it must be (a command line names its option)."""

    def __init__(self, setting: str, requirement: str):
        super().__init__(f"training setting {setting} must be {requirement}")
        self.setting, self.requirement = setting, requirement


def _check(conditions: list[tuple[str, bool, str]], where: str) -> None:
    for name, ok, expected in conditions:
        if not ok:
            raise TrainingSettingError(f"{where}.{name}", expected)


@dataclass(frozen=True)
class EmbeddingSettings:
    """Metric learning of the embedding network (ExaTrkX ``LayerlessEmbedding``).

    Network: ``hidden`` wide, ``layers`` hidden layers, ``dim`` output coordinates,
    ``activation``, with LayerNorm. Each step takes ``anchors`` random hits of one event;
    its pairs are every truth-graph edge touching an anchor (true pairs), ``random_pairs``
    random partners per anchor, and the ``hard_negatives`` nearest neighbours of each anchor
    in the current embedding that lie within ``margin`` (hard negatives when they belong
    to another particle). Loss: :func:`~trackserve.train.losses.hinge_loss` with ``margin``
    and ``positive_weight``. An epoch passes every hit of every training event once as
    an anchor. The radius is then chosen on the validation event so that the graph keeps
    ``target_efficiency`` of its truth edges of particles with ``pT >= min_pt`` (the run's
    track selection): the low-pT particles, which bend most, would otherwise set the radius
    and blow the graph up, while the quality target concerns the others.
    """

    hidden: int = 64
    layers: int = 4
    dim: int = 8
    activation: str = "Tanh"
    epochs: int = 2
    learning_rate: float = 3e-3
    anchors: int = 2048
    random_pairs: int = 2
    hard_negatives: int = 12
    margin: float = 1.0
    positive_weight: float = 2.0
    pair_min_pt: float = 0.75
    target_efficiency: float = 0.99

    def validate(self) -> None:
        """Raise InputError naming the first setting of the wrong type or out of range."""
        _check_types(self, "embedding")
        _check([
            ("hidden", 1 <= self.hidden <= MAX_WIDTH, f"an integer in 1..{MAX_WIDTH}"),
            ("layers", 1 <= self.layers <= MAX_DEPTH, f"an integer in 1..{MAX_DEPTH}"),
            ("dim", 1 <= self.dim <= MAX_WIDTH, f"an integer in 1..{MAX_WIDTH}"),
            ("epochs", 1 <= self.epochs <= MAX_EPOCHS, f"an integer in 1..{MAX_EPOCHS}"),
            ("learning_rate", 0 < self.learning_rate <= MAX_LEARNING_RATE, f"in (0, {MAX_LEARNING_RATE:g}]"),
            ("anchors", self.anchors >= 1, "an integer >= 1"),
            ("random_pairs", 0 <= self.random_pairs <= MAX_PAIRS_PER_ANCHOR, f"an integer in 0..{MAX_PAIRS_PER_ANCHOR}"),
            ("hard_negatives", 0 <= self.hard_negatives <= MAX_PAIRS_PER_ANCHOR,
             f"an integer in 0..{MAX_PAIRS_PER_ANCHOR}"),
            ("margin", 0 < self.margin <= MAX_MARGIN, f"in (0, {MAX_MARGIN:g}] (embedding distance; the hinge "
             "loss squares it in float32)"),
            ("positive_weight", _bounded_weight(self.positive_weight), f"in (0, {MAX_WEIGHT:g}]"),
            ("pair_min_pt", 0 <= self.pair_min_pt < math.inf, "a finite number >= 0 GeV"),
            ("target_efficiency", 0 < self.target_efficiency <= 1, "in (0, 1]"),
        ], "embedding")


@dataclass(frozen=True)
class FilterSettings:
    """The edge filter (ExaTrkX ``VanillaFilter``), trained on the embedding's radius graphs.

    Network: ``hidden`` wide, ``layers`` linear layers before the output. Each step takes
    ``batch_edges`` random edges of one event's graph (with ``edge_differences`` the
    network also reads the two hits' feature differences times ``difference_scale``,
    φ wrapped); loss:
    :func:`~trackserve.train.losses.weighted_bce` with ``positive_weight``. An epoch passes
    every edge of every training graph once. The cut is chosen on the validation event to
    keep ``target_efficiency`` of the graph's true edges of particles with ``pT >= min_pt``.
    """

    hidden: int = 64
    layers: int = 3
    activation: str = "Tanh"
    epochs: int = 3
    learning_rate: float = 1e-2
    batch_edges: int = 131072
    positive_weight: float = 2.0
    target_efficiency: float = 0.99
    edge_differences: bool = True
    difference_scale: float = 20.0

    def validate(self) -> None:
        """Raise InputError naming the first setting of the wrong type or out of range."""
        _check_types(self, "filter")
        _check([
            ("hidden", 1 <= self.hidden <= MAX_WIDTH, f"an integer in 1..{MAX_WIDTH}"),
            ("layers", 1 <= self.layers <= MAX_DEPTH, f"an integer in 1..{MAX_DEPTH}"),
            ("epochs", 1 <= self.epochs <= MAX_EPOCHS, f"an integer in 1..{MAX_EPOCHS}"),
            ("learning_rate", 0 < self.learning_rate <= MAX_LEARNING_RATE, f"in (0, {MAX_LEARNING_RATE:g}]"),
            ("batch_edges", self.batch_edges >= 1, "an integer >= 1"),
            ("positive_weight", _bounded_weight(self.positive_weight), f"in (0, {MAX_WEIGHT:g}]"),
            ("target_efficiency", 0 < self.target_efficiency <= 1, "in (0, 1]"),
            ("difference_scale", _bounded_weight(self.difference_scale), f"in (0, {MAX_WEIGHT:g}]"),
        ], "filter")


@dataclass(frozen=True)
class GNNSettings:
    """The GNN edge classifier, trained on the filter-cut graphs split into φ sectors.

    ``architecture`` is one of :data:`GNN_ARCHITECTURES`; ``hidden``, ``iterations``
    (message-passing steps), ``node_layers`` and ``edge_layers`` size it. Each step
    trains on the edges whose two hits both lie in one φ sector of width ``2π / sectors``
    centred at random (a sub-graph, to keep steps small); an epoch is ``sectors`` steps
    per training event. With ``halo`` above 0 each step's sub-graph reaches ``halo`` sector
    widths further on each side, and only the edges of the sector itself (both hits inside)
    enter the loss: the others give them the neighbourhood messages come from, as the whole
    graph does at inference, where a bare sector cuts every track and neighbourhood at its
    borders. ``edge_update_uses_new_nodes`` makes each step's edge update read the hits as
    that step's node update left them (as ACORN's interaction network does), so what an
    edge learns reaches the edges next to it in one step instead of two; off, the edge
    update reads the hits as they entered the step. Loss: weighted BCE with
    ``positive_weight``. ``edge_differences``
    and ``difference_scale`` as for the filter (edge encoder input). The cut is chosen on
    the validation event to maximise the track efficiency minus the fake rate.
    """

    architecture: str = "InteractionGNN"
    hidden: int = 32
    iterations: int = 4
    node_layers: int = 2
    edge_layers: int = 2
    epochs: int = 3
    learning_rate: float = 3e-3
    sectors: int = 16
    positive_weight: float = 1.0
    edge_differences: bool = True
    difference_scale: float = 20.0
    halo: float = 0.0
    edge_update_uses_new_nodes: bool = False

    def validate(self, where: str = "gnn") -> None:
        """Raise InputError naming the first setting of the wrong type or out of range."""
        _check_types(self, where)
        _check([
            ("architecture", self.architecture in GNN_ARCHITECTURES, f"one of {', '.join(GNN_ARCHITECTURES)}"),
            ("halo", 0 <= self.halo <= MAX_SECTORS, f"a number in 0..{MAX_SECTORS} (sector widths of context on each "
             "side; the whole event from half the sectors on)"),
            ("hidden", 1 <= self.hidden <= MAX_WIDTH, f"an integer in 1..{MAX_WIDTH}"),
            ("iterations", 0 <= self.iterations <= MAX_DEPTH, f"an integer in 0..{MAX_DEPTH}"),
            ("node_layers", 1 <= self.node_layers <= MAX_DEPTH, f"an integer in 1..{MAX_DEPTH}"),
            ("edge_layers", 1 <= self.edge_layers <= MAX_DEPTH, f"an integer in 1..{MAX_DEPTH}"),
            ("epochs", 1 <= self.epochs <= MAX_EPOCHS, f"an integer in 1..{MAX_EPOCHS}"),
            ("learning_rate", 0 < self.learning_rate <= MAX_LEARNING_RATE, f"in (0, {MAX_LEARNING_RATE:g}]"),
            ("sectors", 1 <= self.sectors <= MAX_SECTORS, f"an integer in 1..{MAX_SECTORS}"),
            ("positive_weight", _bounded_weight(self.positive_weight), f"in (0, {MAX_WEIGHT:g}]"),
            ("difference_scale", _bounded_weight(self.difference_scale), f"in (0, {MAX_WEIGHT:g}]"),
            ("edge_update_uses_new_nodes", not (self.edge_update_uses_new_nodes and self.architecture == "ResAGNN"),
             "off for the ResAGNN (it is a setting of the interaction network)"),
        ], where)


@dataclass(frozen=True)
class TrainingConfig:
    """A whole training run: the three stages, the graph settings, the seed and the threads.

    ``max_neighbours`` caps the radius graph (as in the bundle); ``edge_direction`` is the
    graph's convention (see :data:`trackserve.bundle.EDGE_DIRECTIONS`); ``threads`` sizes
    torch's pool and the graph builder; ``min_pt`` (GeV) and ``min_hits`` select the
    particles of the validation track efficiency. ``signal_min_pt`` (GeV) sets what the
    filter and the GNN learn to keep: edges joining two hits of one particle with at least
    this pT (:func:`~trackserve.train.pairs.edge_targets`); 0 keeps every particle's edges.
    ``ignore_soft_edges`` (with ``signal_min_pt > 0``) leaves the edges of softer particles
    out of both losses instead of teaching them as wrong (the same function).
    ``derive_eta`` makes every network compute η from the r and z features itself
    (:mod:`trackserve.export.derived`), so the bundle reads only r, φ, z; ``pair_geometry``
    gives the filter and the GNN each edge's transverse curvature and r-z pointing
    (:class:`~trackserve.export.derived.PairGeometry`), and ``pair_intercept`` (with it)
    its z intercept on the beam line too, ``pair_direction`` (with it) the segment's own
    pseudorapidity. ``track_building``
    is the bundle's method (:data:`trackserve.bundle.TRACK_BUILDING_METHODS`), used to
    choose the GNN cut. ``gnn_blind_to`` names hit features (of the feature spec, or
    ``eta`` when derived) that the interaction GNN's hit encoder does not read: its
    first-layer weights for them start at zero and get no gradient, so the GNN sees those
    features only through its edge inputs (differences, geometry). ``prune_cut`` (a
    probability; None: off) trains a second GNN, of the same settings with
    ``pruned_gnn_epochs`` epochs (None: ``gnn.epochs``), ``pruned_gnn_hidden`` wide (None:
    ``gnn.hidden``) and ``pruned_gnn_iterations`` message-passing steps (None:
    ``gnn.iterations``), on the edges whose first GNN's score passes it; the first GNN
    becomes the bundle's ``pruner`` (:data:`trackserve.bundle.OPTIONAL_NETWORKS`). The
    second GNN sees a graph several times smaller than the first, so it can be wider or
    deeper for little more time (:meth:`pruned_gnn_settings`). ``time_budget`` (seconds;
    None: none) bounds the whole training, with the training of a bundle it starts from:
    the last GNN trained (the second with ``prune_cut``) ends its learning-rate cycle by
    the time left, less :data:`~trackserve.train.time_budget.RESERVE_SECONDS`, if its
    epochs would not (:mod:`trackserve.train.time_budget`); the stages before it are not
    cut short. ``precision`` (:data:`~trackserve.train.precision.TRAINING_PRECISIONS`) is
    the number type of the filter's and the GNNs' training steps: ``bfloat16`` runs their
    matrix products in bfloat16 under autocast, everything else in float32
    (:mod:`trackserve.train.precision`). ``displaced_weight`` (0: off) weighs the true edges of
    particles produced away from the centre more in the GNNs' loss (the first, the pruner when
    there is one, and the second): ``1 + displaced_weight * min(|vz|, 200 mm) / 100 mm``
    (:func:`~trackserve.train.pairs.displaced_weights`); it needs each event's particles table.
    """

    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    filter: FilterSettings = field(default_factory=FilterSettings)
    gnn: GNNSettings = field(default_factory=GNNSettings)
    max_neighbours: int = 32
    edge_direction: str = "i<j"
    seed: int = 0
    threads: int = 2
    min_pt: float = 1.0
    min_hits: int = 5
    signal_min_pt: float = 0.0
    ignore_soft_edges: bool = False
    derive_eta: bool = False
    pair_geometry: bool = False
    pair_intercept: bool = False
    pair_direction: bool = False
    track_building: str = "components"
    gnn_blind_to: tuple[str, ...] = ()
    prune_cut: float | None = None
    pruned_gnn_epochs: int | None = None
    pruned_gnn_hidden: int | None = None
    pruned_gnn_iterations: int | None = None
    time_budget: float | None = None
    precision: str = "float32"
    displaced_weight: float = 0.0
    #: The hit-encoder input columns of ``gnn_blind_to``; set from the feature spec by the trainer.
    gnn_blind_columns: tuple[int, ...] = ()
    #: Feature columns that are angles (φ over its scale); set from the feature spec by the trainer.
    periodic_features: tuple[int, ...] = ()
    #: Their period: 2π over φ's scale (2 for the usual φ/π); set from the feature spec by the trainer.
    phi_period: float = 2.0
    #: The networks' ``derived_eta`` config (columns and scales of r and z); set by the trainer when ``derive_eta``.
    eta_columns: dict | None = None
    #: The filter's and GNN's ``pair_geometry`` config; set by the trainer when ``pair_geometry``.
    geometry_columns: dict | None = None

    def validate(self) -> None:
        """Raise InputError naming the first setting out of range."""
        from ..bundle import EDGE_DIRECTIONS, TRACK_BUILDING_METHODS
        from .precision import TRAINING_PRECISIONS

        self.embedding.validate()
        self.filter.validate()
        self.gnn.validate()
        _check_types(self, "run")
        _check([
            ("seed", 0 <= self.seed <= MAX_TRAINING_SEED, f"an integer in 0..{MAX_TRAINING_SEED}"),
            ("max_neighbours", self.max_neighbours >= 1, "an integer >= 1"),
            ("edge_direction", self.edge_direction in EDGE_DIRECTIONS, f"one of {', '.join(EDGE_DIRECTIONS)}"),
            ("threads", self.threads >= 1, "an integer >= 1"),
            ("min_pt", self.min_pt >= 0, ">= 0"),
            ("min_hits", self.min_hits >= 1, "an integer >= 1"),
            ("signal_min_pt", self.signal_min_pt >= 0, ">= 0 GeV"),
            ("ignore_soft_edges", self.signal_min_pt > 0 or not self.ignore_soft_edges,
             "off unless signal_min_pt is above 0 (it says which particles are soft)"),
            ("track_building", self.track_building in TRACK_BUILDING_METHODS, f"one of {', '.join(TRACK_BUILDING_METHODS)}"),
            ("pair_intercept", self.pair_geometry or not self.pair_intercept, "off unless pair_geometry is on "
             "(the intercept is part of the edge geometry)"),
            ("pair_direction", self.pair_geometry or not self.pair_direction, "off unless pair_geometry is on "
             "(the direction is part of the edge geometry)"),
            ("gnn_blind_to", not self.gnn_blind_to or self.gnn.architecture == "InteractionGNN",
             "empty unless the GNN is an InteractionGNN (the only one with a hit encoder)"),
            ("prune_cut", self.prune_cut is None or 0.0 < self.prune_cut < 0.5,
             "a probability in (0, 0.5): the first GNN's low cut, below any track-building cut"),
            ("time_budget", self.time_budget is None or (isinstance(self.time_budget, (int, float))
                                                         and math.isfinite(self.time_budget)
                                                         and self.time_budget > RESERVE_SECONDS),
             f"a finite number of seconds above the {RESERVE_SECONDS:g} s kept for choosing the last GNN's cut"),
            ("precision", self.precision in TRAINING_PRECISIONS, f"one of {', '.join(TRAINING_PRECISIONS)}"),
            ("displaced_weight", isinstance(self.displaced_weight, (int, float)) and math.isfinite(self.displaced_weight)
             and self.displaced_weight >= 0, "a finite number >= 0"),
        ] + [
            (f"pruned_gnn_{name}", value is None or (self.prune_cut is not None and value >= _PRUNED_LEAST[name]),
             f"an integer >= {_PRUNED_LEAST[name]}, and only with prune_cut")
            for name, value in self._pruned_gnn_overrides().items()
        ], "run")
        if self.prune_cut is not None:
            self.pruned_gnn_settings().validate("pruned_gnn")  # the second GNN's own settings, widths included

    def _pruned_gnn_overrides(self) -> dict:
        """The ``pruned_gnn_*`` settings by the ``gnn`` setting each replaces (None: not replaced)."""
        return {"epochs": self.pruned_gnn_epochs, "hidden": self.pruned_gnn_hidden,
                "iterations": self.pruned_gnn_iterations}

    def pruned_gnn_settings(self) -> GNNSettings:
        """The second GNN's settings (with ``prune_cut``): ``gnn`` with the ``pruned_gnn_*`` values that are set."""
        return replace(self.gnn, **{name: value for name, value in self._pruned_gnn_overrides().items()
                                    if value is not None})

    @classmethod
    def quick(cls, **overrides) -> "TrainingConfig":
        """Tiny networks and one epoch per stage: a smoke test that runs in seconds."""
        config = cls(
            embedding=EmbeddingSettings(hidden=16, layers=2, dim=4, epochs=1, anchors=256, hard_negatives=4),
            filter=FilterSettings(hidden=16, layers=2, epochs=1, batch_edges=4096),
            gnn=GNNSettings(hidden=8, iterations=2, node_layers=1, edge_layers=1, epochs=1, sectors=2),
        )
        return replace(config, **overrides)

    def to_dict(self) -> dict:
        """Every setting as nested plain dicts (for the bundle's provenance)."""
        return asdict(self)
