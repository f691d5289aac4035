"""Training data: events (read or simulated) turned into features, particle ids and truth edges.

A :class:`TrainingEvent` is what every stage trains on. :func:`simulated_events` draws
events from particle tables (each table simulated again with new seeds) and from random
particles; :func:`read_training_events` reads TrackML events with their truth. Each
source also gives a short description for the bundle's provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import EventFormatError, InputError
from ..events.event import Event
from ..events.features import FeatureSpec, hit_features
from ..events.metrics import event_particle_pt, particle_values
from ..events.truth_graph import truth_graph


#: The ``stream`` of :func:`simulated_events` that a training's validation event comes from
#: (training events use 0 for particle tables and 1 for random particles; ``trackserve
#: simulate`` uses :data:`trackserve.events.simulate.SIMULATE_STREAM`).
VALIDATION_STREAM = 2
#: The last seed component of a simulated event's collision-region offset (:func:`vertex_offset`).
OFFSET_SEED = 7


@dataclass
class TrainingEvent:
    """One event ready for training: features ``[N, F]``, particle id per hit, truth edges ``[2, M]``.

    ``truth_edges`` is the event's truth graph (consecutive hits of each particle, see
    :func:`~trackserve.events.truth_graph.truth_graph`); ``hit_pt`` the pT (GeV) of each
    hit's particle (0 for noise); ``event`` the source event, for track metrics.
    """

    name: str
    features: np.ndarray
    particle_ids: np.ndarray
    truth_edges: np.ndarray
    hit_pt: np.ndarray
    event: Event

    @property
    def num_hits(self) -> int:
        """Number of hits."""
        return int(self.features.shape[0])

    @cached_property
    def hit_distance(self) -> np.ndarray:
        """Each hit's distance from the origin (mm, float64): the order of hits along a track (computed once)."""
        hits = self.event.hits
        return np.sqrt(sum(np.asarray(hits[axis], dtype=np.float64) ** 2 for axis in ("x", "y", "z")))

    @cached_property
    def hit_vz(self) -> np.ndarray:
        """``|vz|`` (mm, float64) of each hit's particle, where along the beam it was produced; 0 for
        noise (computed once). Needs the event's particles table (with ``particle_id`` and ``vz``)
        listing every particle of the truth; EventFormatError otherwise."""
        particles = self.event.particles
        if particles is None or "vz" not in particles or "particle_id" not in particles:
            raise EventFormatError(
                f"event {self.name}: the production point of each particle (the particles table's particle_id and vz) "
                "is needed to weigh edges by it; give events with their -particles.csv")
        signal = self.particle_ids != 0
        out = np.zeros(self.num_hits)
        table_ids = np.asarray(particles["particle_id"], dtype=np.int64)
        table_vz = np.abs(np.asarray(particles["vz"], dtype=np.float64))
        try:
            out[signal] = particle_values(self.particle_ids[signal], table_ids, table_vz,
                                          f"event {self.name}: the particles table", "production point (vz)")
        except InputError as error:
            raise EventFormatError(str(error)) from None
        return out

    def truth_edges_above(self, min_pt: float) -> np.ndarray:
        """The truth edges of particles with ``pT >= min_pt`` (GeV)."""
        if min_pt <= 0:
            return self.truth_edges
        return self.truth_edges[:, self.hit_pt[self.truth_edges[0]] >= min_pt]


def prepare_event(event: Event, spec: FeatureSpec, name: str | None = None) -> TrainingEvent:
    """The :class:`TrainingEvent` of a TrackML event with truth (and, best, particles)."""
    if event.truth is None:
        raise EventFormatError(
            "training needs the truth of every event (which particle made each hit): "
            f"{event.name} has no -truth.csv file", path=event.source,
        )
    truth_ids = np.asarray(event.truth["hit_id"], dtype=np.int64)
    if not np.array_equal(truth_ids, np.asarray(event.hits["hit_id"], dtype=np.int64)):
        raise EventFormatError("the truth rows must follow the hits rows (read the event with read_event)", path=event.source)
    event = event.in_hit_id_order()  # the order the networks learn and run on (read_event's)
    particle_ids = np.asarray(event.truth["particle_id"], dtype=np.int64)
    ids, pt = event_particle_pt(event)
    hit_pt = np.zeros(len(particle_ids))
    signal = particle_ids != 0
    hit_pt[signal] = pt[np.searchsorted(ids, particle_ids[signal])]
    return TrainingEvent(
        name=name or event.name,
        features=hit_features(event.hits, spec),
        particle_ids=particle_ids,
        truth_edges=truth_graph(event),
        hit_pt=hit_pt,
        event=event,
    )


@dataclass(frozen=True)
class SimulatedSource:
    """Where simulated events come from: a particle table (path) or random particles (count)."""

    particles: Path | None = None
    num_particles: int = 8500

    def __post_init__(self):
        if self.particles is not None and not isinstance(self.particles, Path):  # a path given as text
            object.__setattr__(self, "particles", Path(self.particles))

    def describe(self) -> str:
        """One line for the provenance."""
        if self.particles is not None:
            return f"particles of {self.particles.name}"
        return f"{self.num_particles} random particles (pions, dN/dpT ~ pT^-3 on [0.2, 50] GeV, |eta| < 3)"


def simulated_events(
    sources: Sequence[SimulatedSource],
    events_per_source: int,
    spec: FeatureSpec,
    *,
    seed: int,
    stream: int = 0,
    geometry=None,
    show_progress: bool = True,
    vertex_offsets: float = 0.0,
) -> list[TrainingEvent]:
    """Simulate ``events_per_source`` events of every source with :func:`~trackserve.events.simulate.simulate_event`.

    Event ``i`` of source ``k`` uses the seed ``(seed, stream, k, i)``: training and
    validation use different ``stream`` values, so they never share an event.
    ``vertex_offsets`` (mm; 0: none) moves each event's collision region along the beam
    by its own offset (:func:`vertex_offset`; ``SimulationConfig.vertex_offset_z``): the
    networks then see particles produced far from the centre more often. Its particles are
    the ones the same seed gives without it (its hits differ beyond the move: the
    scattering, smearing and noise draws follow the new paths).
    """
    from dataclasses import replace

    from ..events.geometry import load_geometry
    from ..events.simulate import SimulationConfig, read_simulation_particles, simulate_event
    from .progress import progress

    if events_per_source < 0:
        raise InputError(f"events per source must be >= 0, got {events_per_source}")
    geometry = load_geometry() if geometry is None else geometry
    jobs = [(k, i) for k in range(len(sources)) for i in range(events_per_source)]
    tables = {k: read_simulation_particles(source.particles)
              for k, source in enumerate(sources) if source.particles is not None}
    events = []
    for k, i in progress(jobs, "simulate", enabled=show_progress):
        source = sources[k]
        offset = vertex_offset(vertex_offsets, (seed, stream, k, i))
        if source.particles is not None:
            event = simulate_event(geometry, tables[k], seed=(seed, stream, k, i), event_id=i,
                                   config=replace(SimulationConfig(), vertex_offset_z=offset))
            label = f"sim-{source.particles.stem.split('-')[0]}-{stream}-{i}"
        else:
            config = replace(SimulationConfig(), num_particles=int(source.num_particles), vertex_offset_z=offset)
            event = simulate_event(geometry, config, seed=(seed, stream, k, i), event_id=i)
            label = f"sim-random{source.num_particles}-{stream}-{i}"
        events.append(prepare_event(event, spec, name=label))
    return events


def vertex_offset(spread: float, seed: tuple[int, ...]) -> float:
    """The collision-region offset (mm) of the simulated event of ``seed`` ``(run seed, stream,
    source, index)``: its size uniform in ``[0, spread]`` from the seed ``(*seed, OFFSET_SEED)``,
    towards -z for even indices and +z for odd ones (so each source's events go both ways in
    turn; a source of N events keeps the offsets of its first M < N); 0.0 for no spread.
    InputError unless ``spread`` is a number of mm in 0..``MAX_VERTEX_OFFSET_MM``."""
    from ..events.simulate import MAX_VERTEX_OFFSET_MM

    if isinstance(spread, (bool, np.bool_)) or not isinstance(spread, (int, float, np.integer, np.floating)) \
            or not 0 <= spread <= MAX_VERTEX_OFFSET_MM:  # (NaN fails the range)
        raise InputError(f"vertex_offsets must be a number of mm in 0..{MAX_VERTEX_OFFSET_MM:g} (the largest offset of a "
                         f"training event's collision region); got {spread!r}")
    if not spread:
        return 0.0
    size = float(np.random.default_rng((*seed, OFFSET_SEED)).uniform(0.0, spread))
    return size if seed[-1] % 2 else -size


def simulated_validation_event(source: SimulatedSource, spec: FeatureSpec, *, seed: int,
                               geometry=None) -> tuple[TrainingEvent, str]:
    """The validation event ``trackserve train --seed S`` simulates from ``source``
    (stream :data:`VALIDATION_STREAM`), and how the provenance describes it."""
    event = simulated_events([source], 1, spec, seed=seed, stream=VALIDATION_STREAM, geometry=geometry,
                             show_progress=False)[0]
    return event, f"simulated ({source.describe()}, seed {seed}, stream {VALIDATION_STREAM})"


def read_training_events(paths: Iterable[str | Path], spec: FeatureSpec) -> list[TrainingEvent]:
    """Every TrackML event (with truth) found under ``paths`` (prefixes, files or directories)."""
    from ..events.trackml import find_event_prefixes, read_event

    if isinstance(paths, (str, Path)):  # one path, not the characters of one
        paths = [paths]
    if not isinstance(paths, Iterable) or isinstance(paths, Event):
        raise InputError(f"read_training_events takes paths (a path, or a list of them), got {type(paths).__name__}")
    paths = list(paths)
    strays = sorted({type(path).__name__ for path in paths if not isinstance(path, (str, Path))})
    if strays:
        raise InputError(f"read_training_events takes paths of TrackML events, got {', '.join(strays)} (events "
                         "already read go to train_pipeline, or to prepare_event, as they are)")
    events, seen, contents = [], {}, {}
    for path in paths:
        for prefix in find_event_prefixes(path):
            if prefix.resolve() in seen:
                raise InputError(f"the training event {prefix} is given twice ({seen[prefix.resolve()]} and {path}): "
                                 "it would weigh double; give each event once")
            seen[prefix.resolve()] = path
            fingerprint = hits_fingerprint(prefix)
            if fingerprint is not None and fingerprint in contents:
                raise InputError(f"the training event {prefix} is a copy of {contents[fingerprint]} (the same hits): "
                                 "it would weigh double; give each event once")
            contents[fingerprint] = prefix
            event = read_event(prefix, parts=("truth", "particles"))
            # named by its absolute path: the provenance then says which event it was from anywhere
            events.append(prepare_event(event, spec, name=str(prefix.resolve())))
    if not events:
        raise InputError(f"no TrackML event found in {', '.join(map(str, paths))}")
    return events


def describe_events(events: Sequence[TrainingEvent]) -> dict:
    """Counts of a set of events for the provenance: names, hits, truth edges."""
    return {
        "num_events": len(events),
        "events": [event.name for event in events],
        "num_hits": int(sum(event.num_hits for event in events)),
        "num_truth_edges": int(sum(event.truth_edges.shape[1] for event in events)),
    }


def trained_event_paths(provenance: dict) -> list[Path]:
    """The TrackML events a bundle's networks trained on, from its provenance (its own
    ``data.training.events`` and, for a bundle trained ``--start-from`` another, that one's
    too). Bundles record them by absolute path; earlier ones recorded them as given,
    relative to a directory no later run can know, and those are left out."""
    def field(record, key):  # provenance is free-form: anything may be missing or of another type
        return record.get(key) if isinstance(record, dict) else None

    names = []
    for record in (provenance, field(provenance, "started_from")):
        events = field(field(field(record, "data"), "training"), "events")
        names += [name for name in events if isinstance(name, str)] if isinstance(events, list) else []
    return [Path(name) for name in names if Path(name).is_absolute()]


def hits_fingerprint(prefix: Path) -> str | None:
    """The sha256 of an event's hits file as text (a ``.gz`` file decompressed first), or None
    when the event has no hits file: the same for a copy of the event under another name or
    in the other compression."""
    from ..events.trackml import event_file

    path = event_file(prefix, "hits")
    return None if path is None else text_fingerprint(path)


def text_fingerprint(path: Path) -> str:
    """The sha256 of a file's text (a ``.gz`` file decompressed first): the same for a copy of
    the file under another name or in the other compression."""
    import gzip
    import hashlib

    digest = hashlib.sha256()
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def same_event(first: Path, second: Path) -> bool:
    """Whether two TrackML event prefixes are one event: the same files, or hits files of the
    same text (a copy of an event under another name, or in the other compression, is still
    that event)."""
    if first.resolve() == second.resolve():
        return True
    fingerprint = hits_fingerprint(first)
    return fingerprint is not None and fingerprint == hits_fingerprint(second)


