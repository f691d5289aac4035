"""The stage parameters of a bundle (``stages`` of ``pipeline.json``): the graph's radius and
cap, the cuts, the edge direction, the track building method, gap filling, piece joining and
the pruning cut, with the checks that name every invalid value."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from ..errors import BundleError, InputError
from ..runtime.vertex_shifts import is_shifted, validate_vertex_shifts
from ..values import finite_real, shown

#: Edge direction conventions of the graph stage: how each neighbouring pair ``{i, j}`` is stored.
EDGE_DIRECTIONS: dict[str, str] = {
    "i<j": "each pair once, as edge_index[:, k] = (i, j) with i < j",
    "i>j": "each pair once, as edge_index[:, k] = (i, j) with i > j",
    "both": "each pair twice, as (i, j) and (j, i)",
}


#: Track building methods (``stages.track_building``; see :mod:`trackserve.runtime.track_building`).
#: ``best_edges`` orders hits by their distance from the origin, so it needs r and z features.
TRACK_BUILDING_METHODS = ("components", "best_edges")


#: The keys of ``stages`` in ``pipeline.json``; the last five are optional.
STAGE_KEYS = ("radius", "max_neighbours", "filter_cut", "gnn_cut", "edge_direction", "track_building", "gap_cut",
              "join_pieces", "prune_cut", "vertex_shifts")


#: float32's smallest normal number and its largest finite one (graph building squares the radius in float32).
_FLOAT32_TINY, _FLOAT32_MAX = 2.0**-126, 3.4028234663852886e38


def _python_numbers(settings, names) -> None:
    """Set numpy scalars among the fields ``names`` of a frozen dataclass to Python numbers
    (a radius or cut computed from float32 arrays is an ``np.float32``); numpy booleans are
    left for the checks to refuse, as Python's are."""
    for name in names:
        value = getattr(settings, name)
        if isinstance(value, np.integer):
            object.__setattr__(settings, name, int(value))
        elif isinstance(value, np.floating):
            object.__setattr__(settings, name, float(value))


def _is_number(value) -> bool:
    """Whether ``value`` is a real number that is not NaN (an int or a float, not a bool; an
    infinity passes, an integer beyond any float does not)."""
    return isinstance(value, (int, float)) and (finite_real(value) or isinstance(value, float) and math.isinf(value))


def stage_problems(radius, max_neighbours, filter_cut, gnn_cut, edge_direction,
                    track_building="components", gap_cut=None, join_pieces=None, prune_cut=None) -> list[str]:
    """What is wrong with these stage parameters, each problem naming its ``stages.`` key
    (empty when nothing is). ``join_pieces`` is a :class:`JoinSettings` or its mapping."""
    problems = []
    join_settings = join_pieces.to_dict() if isinstance(join_pieces, JoinSettings) else join_pieces
    if not isinstance(radius, (int, float)) or not finite_real(radius) or radius <= 0:
        problems.append(f"stages.radius: {shown(radius)} is not a positive finite number (the graph radius in embedding "
                        "space)")
    elif not _FLOAT32_TINY < float(radius) * float(radius) < _FLOAT32_MAX:  # inf beyond, no OverflowError
        problems.append(f"stages.radius: {radius!r} is out of range: graph building compares float32 squared "
                        "distances, so the radius must lie between about 1.1e-19 and 1.8e19")
    if isinstance(max_neighbours, bool) or not isinstance(max_neighbours, int) or max_neighbours < 1:
        problems.append(f"stages.max_neighbours: {shown(max_neighbours)} is not an integer >= 1")
    for name, cut in (("filter_cut", filter_cut), ("gnn_cut", gnn_cut)):
        if not _is_number(cut):
            problems.append(f"stages.{name}: {shown(cut)} is not a number (a probability in [0, 1], applied after the "
                            "sigmoid of the logits)")
        elif not 0.0 <= cut <= 1.0:
            problems.append(
                f"stages.{name}: {cut!r} is outside [0, 1] (cuts are probabilities, applied after the sigmoid of the logits)"
            )
        elif cut == 1.0:
            problems.append(f"stages.{name}: 1 keeps no edge (an edge passes when the sigmoid of its logit is above the "
                            "cut, and no sigmoid is); use a cut below 1")
    if not isinstance(edge_direction, str) or edge_direction not in EDGE_DIRECTIONS:
        problems.append(f"stages.edge_direction: {shown(edge_direction)} is not one of {', '.join(map(repr, EDGE_DIRECTIONS))}")
    if not isinstance(track_building, str) or track_building not in TRACK_BUILDING_METHODS:
        problems.append(
            f"stages.track_building: {shown(track_building)} is not one of {', '.join(map(repr, TRACK_BUILDING_METHODS))}"
        )
    if gap_cut is not None:
        if not _is_number(gap_cut):
            problems.append(f"stages.gap_cut: {shown(gap_cut)} is not a number (a probability in [0, 1], like gnn_cut)")
        elif not 0.0 <= gap_cut <= 1.0:
            problems.append(f"stages.gap_cut: {gap_cut!r} is outside [0, 1] (a probability, like gnn_cut)")
        elif isinstance(gnn_cut, (int, float)) and not isinstance(gnn_cut, bool) and gap_cut > gnn_cut:
            problems.append(f"stages.gap_cut: {gap_cut!r} is above gnn_cut {gnn_cut!r} (it fills the gaps that cut leaves)")
        if track_building != "best_edges":
            problems.append(f"stages.gap_cut: gap filling needs track_building 'best_edges', not {track_building!r}")
    if prune_cut is not None:
        if not _is_number(prune_cut):
            problems.append(f"stages.prune_cut: {shown(prune_cut)} is not a number (a probability in [0, 1), like gnn_cut)")
        elif not 0.0 <= prune_cut < 1.0:
            problems.append(f"stages.prune_cut: {prune_cut!r} is outside [0, 1) (a probability, like gnn_cut)")
        else:
            join_score = join_settings.get("min_score") if isinstance(join_settings, dict) else None
            for name, cut in (("gnn_cut", gnn_cut), ("gap_cut", gap_cut), ("join_pieces.min_score", join_score)):
                if isinstance(cut, (int, float)) and not isinstance(cut, bool) and prune_cut > cut:
                    problems.append(f"stages.prune_cut: {prune_cut!r} is above {name} {cut!r} (a pruned edge keeps the "
                                    f"pruner's score, so the pruning cut must not be above a later cut)")
    if join_pieces is not None:
        problems.extend(f"stages.join_pieces: {problem}" for problem in join_settings_problems(join_settings))
        if track_building != "best_edges":
            problems.append(f"stages.join_pieces: joining track pieces needs track_building 'best_edges', "
                            f"not {track_building!r}")
    return problems


#: The fields of ``stages.join_pieces`` (:class:`JoinSettings`).
JOIN_FIELDS = ("min_score", "transverse_mm", "z_mm", "single_hit_scale", "rounds")


@dataclass(frozen=True)
class JoinSettings:
    """How track pieces are joined (:func:`trackserve.runtime.piece_joining.join_pieces`).

    ``min_score``: the probability a candidate edge's score must pass (``sigmoid(score) >
    min_score`` for logits), in ``[0, 1]``; ``transverse_mm`` and ``z_mm``: the tolerances
    (> 0, mm); ``single_hit_scale``: in ``[0, 1]``, the tolerances' factor for attaching a
    lone hit (0: never); ``rounds``: an integer >= 1. Invalid values raise BundleError
    naming each.
    """

    min_score: float
    transverse_mm: float
    z_mm: float
    single_hit_scale: float
    rounds: int

    def __post_init__(self):
        _python_numbers(self, JOIN_FIELDS)
        problems = join_settings_problems(asdict(self))
        if problems:
            raise BundleError("invalid piece-joining settings: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, data) -> "JoinSettings":
        """Settings from a mapping with exactly the five fields (a bundle's ``stages.join_pieces``)."""
        problems = join_settings_problems(data)
        if problems:
            raise BundleError("invalid piece-joining settings: " + "; ".join(problems))
        return cls(**{name: data[name] for name in JOIN_FIELDS})

    def to_dict(self) -> dict:
        """The five fields as a plain dict (as written in a bundle)."""
        return asdict(self)

    def describe(self) -> str:
        """One line for tables and messages."""
        return (f"join above {self.min_score:g} within {self.transverse_mm:g} mm / {self.z_mm:g} mm, "
                f"lone hits x{self.single_hit_scale:g}, {self.rounds} round{'s' if self.rounds != 1 else ''}")


def join_settings_problems(data) -> list[str]:
    """What is wrong with a mapping of piece-joining settings (empty when nothing is)."""
    if not isinstance(data, Mapping):
        return [f"expected an object with {', '.join(JOIN_FIELDS)}; got {data!r}"]
    problems = []
    missing = [name for name in JOIN_FIELDS if name not in data]
    unknown = [name for name in data if name not in JOIN_FIELDS]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unknown:
        problems.append(f"unknown {', '.join(map(str, unknown))} (the fields are {', '.join(JOIN_FIELDS)})")

    def real(name):
        value = data.get(name)
        if not isinstance(value, (int, float)) or not finite_real(value):
            problems.append(f"{name} must be a finite number; got {shown(value)}")
            return None
        return float(value)

    if "min_score" in data and (value := real("min_score")) is not None and not 0.0 <= value <= 1.0:
        problems.append(f"min_score {value!r} is outside [0, 1] (a probability, like the cuts)")
    for name in ("transverse_mm", "z_mm"):
        if name in data and (value := real(name)) is not None and value <= 0.0:
            problems.append(f"{name} must be above 0 mm; got {value!r}")
    if "single_hit_scale" in data and (value := real("single_hit_scale")) is not None and not 0.0 <= value <= 1.0:
        problems.append(f"single_hit_scale {value!r} is outside [0, 1]")
    if "rounds" in data:
        rounds = data["rounds"]
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            problems.append(f"rounds must be an integer >= 1; got {rounds!r}")
    return problems


@dataclass(frozen=True)
class StageParameters:
    """The parameters of the non-network stages.

    ``radius`` and ``max_neighbours``: the graph keeps pairs closer than ``radius`` in the
    embedding, at most ``max_neighbours`` per hit. ``filter_cut`` and ``gnn_cut``: an edge is
    kept when ``sigmoid(logit) > cut``. ``edge_direction``: one of :data:`EDGE_DIRECTIONS`.
    ``track_building``: one of :data:`TRACK_BUILDING_METHODS` (default ``"components"``,
    also for bundles written before the key existed). ``gap_cut``: for ``best_edges``, a
    cut in ``[0, gnn_cut]`` whose edges fill the gaps ``gnn_cut`` leaves
    (:func:`~trackserve.runtime.track_building.gap_edges`); None (default): no gap filling.
    ``join_pieces``: for ``best_edges``, :class:`JoinSettings` for joining the track pieces
    that fit one trajectory (:mod:`trackserve.runtime.piece_joining`; it needs the features
    r, phi and z); None (default): no joining. ``prune_cut``: set exactly when the bundle
    has a ``pruner`` network (:data:`OPTIONAL_NETWORKS`): the GNN scores only the filtered
    edges whose pruner score passes it, in ``[0, gnn_cut]`` and not above ``gap_cut`` or
    the joining's ``min_score``. ``vertex_shifts``: positions along the beam (mm) to run
    each event at, the passes merged edge by edge (:mod:`trackserve.runtime.vertex_shifts`;
    a bundle whose cuts were tuned for them, ``trackserve tune-cut --vertex-shifts
    --write``); None (default) for one pass (``(0,)`` is stored as None). A runtime's
    ``RuntimeConfig(vertex_shifts=...)`` overrides it.
    Invalid values raise :class:`~trackserve.errors.BundleError` naming each.
    """

    radius: float
    max_neighbours: int
    filter_cut: float
    gnn_cut: float
    edge_direction: str
    track_building: str = "components"
    gap_cut: float | None = None
    join_pieces: JoinSettings | None = None
    prune_cut: float | None = None
    vertex_shifts: tuple[float, ...] | None = None

    def __post_init__(self):
        _python_numbers(self, ("radius", "max_neighbours", "filter_cut", "gnn_cut", "gap_cut", "prune_cut"))
        problem = vertex_shift_problem(self.vertex_shifts)
        if problem:
            raise BundleError(f"invalid stage parameters:\n  - {problem}")
        shifts = validate_vertex_shifts(self.vertex_shifts)
        object.__setattr__(self, "vertex_shifts", shifts if is_shifted(shifts) else None)
        problems = stage_problems(self.radius, self.max_neighbours, self.filter_cut, self.gnn_cut, self.edge_direction,
                                   self.track_building, self.gap_cut, self.join_pieces, self.prune_cut)
        if problems:
            raise BundleError("invalid stage parameters:\n" + "\n".join(f"  - {p}" for p in problems))
        if self.join_pieces is not None and not isinstance(self.join_pieces, JoinSettings):
            raise BundleError(f"invalid stage parameters: join_pieces must be JoinSettings or None; got {self.join_pieces!r}")

    def to_dict(self) -> dict:
        """The JSON form (the ``stages`` object of ``pipeline.json``)."""
        return {
            "radius": self.radius,
            "max_neighbours": self.max_neighbours,
            "filter_cut": self.filter_cut,
            "gnn_cut": self.gnn_cut,
            "edge_direction": self.edge_direction,
            "track_building": self.track_building,
            **({} if self.gap_cut is None else {"gap_cut": self.gap_cut}),
            **({} if self.join_pieces is None else {"join_pieces": self.join_pieces.to_dict()}),
            **({} if self.prune_cut is None else {"prune_cut": self.prune_cut}),
            **({} if self.vertex_shifts is None else {"vertex_shifts": list(self.vertex_shifts)}),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> "StageParameters":
        """Inverse of :meth:`to_dict`; missing or unknown keys or invalid values raise BundleError."""
        if not isinstance(data, Mapping):
            raise BundleError(f"stages: expected StageParameters or a mapping of their keys, got {type(data).__name__}")
        missing = [k for k in STAGE_KEYS[:5] if k not in data]
        if missing:
            raise BundleError(f"stages: missing key(s) {', '.join(map(repr, missing))}")
        unknown = [k for k in data if k not in STAGE_KEYS]
        if unknown:
            raise BundleError(unknown_stage_keys(unknown))
        join = data.get("join_pieces")
        if join is not None and not join_settings_problems(join):
            join = JoinSettings.from_mapping(join)  # a faulty mapping is refused by __post_init__, naming each problem
        return cls(data["radius"], data["max_neighbours"], data["filter_cut"], data["gnn_cut"], data["edge_direction"],
                   data.get("track_building", "components"), data.get("gap_cut"), join, data.get("prune_cut"),
                   data.get("vertex_shifts"))


def vertex_shift_problem(shifts) -> str | None:
    """What is wrong with ``stages.vertex_shifts`` (a list of mm, or None), or None."""
    if isinstance(shifts, (str, bytes)):
        return f"stages.vertex_shifts: {shifts!r} is not a list of positions along the beam (mm)"
    try:
        validate_vertex_shifts(shifts)
    except InputError as error:
        return f"stages.vertex_shifts: {error}"
    return None


def unknown_stage_keys(unknown: list) -> str:
    """The problem of ``stages`` keys this trackserve does not know (a newer bundle's)."""
    return (f"stages: unknown key(s) {', '.join(map(repr, unknown))} (this trackserve knows "
            f"{', '.join(STAGE_KEYS)}; a bundle written by a newer trackserve needs that version)")
