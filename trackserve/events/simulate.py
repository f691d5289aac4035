"""Detector simulation on the TrackML geometry: charged particles on helices to TrackML events.

Model
-----
* Field: a uniform solenoid field ``B`` along ``+z``. A particle of charge ``q`` and
  transverse momentum ``pT`` moves on a helix of radius ``R = pT / (0.2998 |q| B)`` (``R``
  in m, ``pT`` in GeV, ``B`` in T). From the Lorentz force ``F = q v x B`` with
  ``v = v (cos phi, sin phi, .)`` and ``B = B z``, ``F`` is ``q v B (sin phi, -cos phi, 0)``:
  to the right of the motion for ``q > 0``, so a positive particle turns clockwise seen
  from ``+z`` (the direction angle ``phi`` decreases, and the azimuth of its points
  decreases with radius: ``dphi/dr < 0``); a negative one turns anticlockwise.
* Propagation: all particles are stepped together, one layer crossing per step. In each
  step the helix of every particle is intersected analytically with every layer's
  reference surface (barrel cylinders, end-cap discs; see
  :mod:`trackserve.events.geometry`), and the nearest crossing ahead is taken.
* Hits: at a layer crossing, the helix is intersected (Newton's method on the helix
  turning angle) with the plane of every module the lookup returns; each crossing that
  lies inside a module's active area is a hit, so a particle leaves one hit in each of
  two overlapping modules, and none in a gap. The true position is the crossing on the
  module's mid-plane; the measured position is smeared with a Gaussian in the module's
  local ``u`` and ``v`` (default resolution ``pitch / sqrt(12)``), moved back into the
  active area if the smearing pushed it out, and kept on the mid-plane.
* Material: after a layer crossing that left at least one hit, the direction is kicked
  by multiple scattering: two independent Gaussian angles of width given by the
  Highland formula, for a thickness of ``x_over_x0 / cos(incidence)`` radiation lengths
  (incidence against the reference surface's normal, the path factor capped at 10).
  The momentum magnitude is kept (no energy loss).
* Loopers: a particle is followed along the outgoing half of its first turn only, i.e.
  until its distance from the beam line stops increasing (half a turn for a particle from
  the beam line), and at most one full turn for a secondary produced moving inwards.
  Particles that leave the instrumented volume find no further crossing and stop.
* Inefficiency drops each hit independently; noise hits are points drawn uniformly over
  the active area of modules drawn uniformly from the geometry.
* Weights (``truth.weight``), TrackML-like: the score weight of a hit is the product of
  an order weight and a momentum weight. Order weight: 10, 8, 6 for the first, second and
  third hit of the particle's trajectory and likewise for the last three (the larger
  where they meet), 5 for the hits in between. Momentum weight: 0.2 for ``pT <= 0.5``
  GeV, rising linearly to 1 at 3 GeV, 1 above. Hits of particles with fewer than 4 hits
  and noise hits weigh 0. Weights are normalised to sum to 1 over the event (all zero
  when no hit has a positive weight). The numbers are this module's choice, shaped after
  the TrackML score, not taken from it.

Everything random comes from one ``numpy.random.Generator`` seeded with ``seed``, drawn
in a fixed order, so an event is a function of its inputs and seed.
"""

from __future__ import annotations

import math
import numbers
import os

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..errors import EventFormatError, InputError
from ..values import finite_real, shown
from .event import MAX_EVENT_ID, PARTICLES_COLUMNS, Event, Table, table_length
from .geometry import Geometry
from .stable_math import arctan2

#: ``pT [GeV] = C * |q| * B [T] * R [mm]``.
GEV_PER_TESLA_MM = 0.299792458e-3
#: Masses (GeV) by absolute PDG code; other particles are simulated with the pion mass.
PARTICLE_MASSES_GEV: dict[int, float] = {
    11: 0.000510999, 13: 0.105658, 211: 0.139570, 321: 0.493677, 2212: 0.938272,
}
_PION_MASS_GEV = PARTICLE_MASSES_GEV[211]
#: The largest momentum (GeV) a simulated particle may have (pt_max * cosh(eta_max)): ten
#: times the LHC's beam energy per nucleon pair and more; above, the helix arithmetic overflows.
MAX_MOMENTUM_GEV = 1e6
#: Memory of a simulation: about this much for the process and geometry, plus
#: :data:`BYTES_PER_PARTICLE` per particle (measured on the TrackML geometry with the default
#: options: 20,000 particles peaked at 374 MiB, 100,000 at 1,512 MiB).
BASE_MEMORY_BYTES = 100 * 2**20
BYTES_PER_PARTICLE = 15_000
#: Hits a particle leaves on average (12.0 on the TrackML geometry with the default options:
#: 5,000 random particles, 60,451 hits) and the memory each noise hit adds at the peak (5,000
#: particles at noise fraction 0.95: 1,148,569 noise hits, 1,125 MiB against 125 MiB at 0.1):
#: the noise hits are ``noise_fraction / (1 - noise_fraction)`` times the particles' hits.
HITS_PER_PARTICLE = 12
BYTES_PER_NOISE_HIT = 1_000


#: The largest seed the jobs take (simulation, training, tune-cut): numpy and torch seed
#: from a signed 64-bit integer.
MAX_SEED = 2**63 - 1

#: The seed component after the run seed that ``trackserve simulate`` gives its events: event
#: ``i`` uses ``(S, SIMULATE_STREAM, i)``. The training's events use ``(S, 0 or 1, source, i)``
#: and its validation event ``(S, 2, 0, 0)`` (:mod:`trackserve.train.data`); numpy's
#: ``SeedSequence`` ignores trailing zeros, so a plain ``(S, i)`` would be the training's
#: stream ``i``: events simulated to hold out would be training events.
SIMULATE_STREAM = 3


def check_seed(seed: int, option: str = "--seed") -> None:
    """Refuse a seed outside ``0 .. MAX_SEED`` with an InputError naming ``option``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"{option} {seed} must be in 0..{MAX_SEED}")


def estimated_noise_hits(num_particles: int, noise_fraction: float) -> float:
    """About how many noise hits an event of ``num_particles`` particles gets: ``noise_fraction``
    (in ``[0, 1)``) of all its hits, so that fraction over the rest times the particles' hits."""
    return noise_fraction / (1.0 - noise_fraction) * HITS_PER_PARTICLE * int(num_particles)


def estimated_memory_bytes(num_particles: int, noise_fraction: float = 0.1) -> int:
    """The peak memory (bytes) a simulated event of ``num_particles`` particles is expected to
    take, with its noise hits (:func:`estimated_noise_hits`)."""
    return int(BASE_MEMORY_BYTES + BYTES_PER_PARTICLE * int(num_particles)
               + BYTES_PER_NOISE_HIT * estimated_noise_hits(num_particles, noise_fraction))


def check_simulation_memory(num_particles: int, noise_fraction: float = 0.1, option: str = "",
                            noise_option: str = "noise fraction") -> None:
    """InputError where simulating one event of ``num_particles`` particles would take more
    memory than the machine has free (:func:`estimated_memory_bytes`), before it starts;
    ``option`` (``"--num-particles 100000000"``) is named first, ``noise_option`` where a
    lower noise fraction would help."""
    needed = estimated_memory_bytes(num_particles, noise_fraction)
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > free:
        noise = estimated_noise_hits(num_particles, noise_fraction)
        raise InputError(f"{option + ': ' if option else ''}an event of {num_particles:,} particles at noise fraction "
                         f"{noise_fraction:.12g} (about {noise:,.0f} noise hits) needs about {needed / 2**30:.1f} GiB, "
                         f"more than the {free / 2**30:.1f} GiB of memory free; simulate fewer particles per event"
                         + (f" or a lower {noise_option}" if noise > HITS_PER_PARTICLE * num_particles else ""))
#: Path length (mm) below which a crossing counts as the one just made.
_MIN_STEP_MM = 0.05
#: A module crossing must lie within this path length (mm) of the layer crossing.
_MAX_MODULE_DISTANCE_MM = 200.0
_MAX_PATH_FACTOR = 10.0
_NEWTON_ITERATIONS = 30
#: Newton's method stops when the distance to the module plane is below this (mm).
_NEWTON_TOLERANCE_MM = 1e-9
_TWO_PI = 2.0 * np.pi
#: The largest ``vertex_offset_z`` (mm): collisions lie within a few hundred mm of the centre.
MAX_VERTEX_OFFSET_MM = 500.0


@dataclass(frozen=True)
class SimulationConfig:
    """Every option of the simulation, with its default (lengths in mm, momenta in GeV).

    Random particles (used when :func:`simulate_event` is given this config instead of a
    particle table): ``num_particles`` particles with ``pT`` drawn from
    ``dN/dpT ~ pT^-pt_power`` on ``[pt_min, pt_max]``, pseudorapidity uniform in
    ``[-eta_max, eta_max]``, azimuth uniform, charge +1 or -1 with equal probability
    (pions), vertex Gaussian with widths ``vertex_sigma_xy`` (x and y) and ``vertex_sigma_z``.
    ``vertex_offset_z`` moves the collision region along the beam: every particle's
    production point (random or from a table) moves by it, before the particles are
    propagated through the detector (the event's particles table gives the moved ``vz``).

    Detector: ``magnetic_field`` (T, along +z); ``smearing`` on or off; ``resolution_u``
    and ``resolution_v``: Gaussian widths of the local position smearing for every module,
    or ``None`` for each module's ``pitch / sqrt(12)``; ``x_over_x0``: material of one
    layer in radiation lengths at normal incidence (0 turns multiple scattering off);
    ``inefficiency``: probability to lose each hit; ``noise_fraction``: fraction of the
    event's hits that are noise (``n_noise = round(f / (1 - f) * n_particle_hits)``).
    """

    num_particles: int = 10_000
    pt_min: float = 0.2
    pt_max: float = 50.0
    pt_power: float = 3.0
    eta_max: float = 3.0
    vertex_sigma_xy: float = 0.015
    vertex_sigma_z: float = 55.0
    vertex_offset_z: float = 0.0
    magnetic_field: float = 2.0
    smearing: bool = True
    resolution_u: float | None = None
    resolution_v: float | None = None
    x_over_x0: float = 0.02
    inefficiency: float = 0.0
    noise_fraction: float = 0.1

    def validate(self) -> None:
        """Raise InputError naming the first option with a value outside its range (or not a number)."""
        for option in fields(self):
            value = getattr(self, option.name)
            if option.name == "smearing" or value is None and option.name in ("resolution_u", "resolution_v"):
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise InputError(f"simulation option {option.name} = {value!r} must be a number")
        checks = [
            ("num_particles", self.num_particles >= 0 and int(self.num_particles) == self.num_particles, "an integer >= 0"),
            ("pt_min", self.pt_min > 0, "> 0 GeV"),
            ("pt_max", self.pt_max >= self.pt_min, f">= pt_min ({self.pt_min})"),
            ("pt_power", finite_real(self.pt_power), "finite"),
            ("eta_max", self.eta_max >= 0, ">= 0"),
            ("vertex_sigma_xy", self.vertex_sigma_xy >= 0, ">= 0 mm"),
            ("vertex_sigma_z", self.vertex_sigma_z >= 0, ">= 0 mm"),
            ("vertex_offset_z", abs(self.vertex_offset_z) <= MAX_VERTEX_OFFSET_MM,
             f"within {MAX_VERTEX_OFFSET_MM:g} mm of the centre"),
            ("magnetic_field", self.magnetic_field > 0, "> 0 T"),
            ("resolution_u", self.resolution_u is None or self.resolution_u >= 0, ">= 0 mm or None (pitch/sqrt(12))"),
            ("resolution_v", self.resolution_v is None or self.resolution_v >= 0, ">= 0 mm or None (pitch/sqrt(12))"),
            ("x_over_x0", self.x_over_x0 >= 0, ">= 0"),
            ("inefficiency", 0 <= self.inefficiency <= 1, "between 0 and 1"),
            ("noise_fraction", 0 <= self.noise_fraction < 1, "in [0, 1)"),
        ]
        for name, ok, expected in checks:
            value = getattr(self, name)
            if value is not None and not finite_real(value):
                raise InputError(f"simulation option {name} = {shown(value)} must be a finite number")
            if not ok:
                raise InputError(f"simulation option {name} = {value!r} must be {expected}")
        if abs(self.pt_power - 1.0) >= 1e-12:  # the spectrum is sampled through pt**(1 - pt_power)
            k = 1.0 - self.pt_power
            try:
                ends = (self.pt_min ** k, self.pt_max ** k)
            except (OverflowError, ZeroDivisionError):
                ends = (math.inf, math.inf)
            if not all(math.isfinite(end) and end > 0 for end in ends) or (ends[0] == ends[1] and self.pt_max > self.pt_min):
                raise InputError(
                    f"simulation options pt_min = {self.pt_min!r}, pt_max = {self.pt_max!r} and pt_power = "
                    f"{self.pt_power!r} give a spectrum float64 cannot sample (pt**(1 - pt_power) overflows or "
                    "underflows at its ends); bring pt_min, pt_max or pt_power closer to 1"
                )
        with np.errstate(over="ignore"):
            largest_momentum = self.pt_max * np.cosh(self.eta_max)
        if not largest_momentum < MAX_MOMENTUM_GEV:
            raise InputError(
                f"simulation options pt_max = {self.pt_max!r} and eta_max = {self.eta_max!r} give momenta up to "
                f"{largest_momentum:.3g} GeV; keep pt_max * cosh(eta_max) below {MAX_MOMENTUM_GEV:g} GeV"
            )


# --------------------------------------------------------------------------- particles
def generate_particles(config: SimulationConfig, rng: np.random.Generator) -> Table:
    """Random particles as described by ``config`` (particle ids 1..N, pions, ``nhits`` 0)."""
    config.validate()
    n = int(config.num_particles)
    u = rng.random(n)
    if abs(config.pt_power - 1.0) < 1e-12:
        pt = config.pt_min * (config.pt_max / config.pt_min) ** u
    else:
        k = 1.0 - config.pt_power
        lo, hi = config.pt_min**k, config.pt_max**k
        pt = (lo + u * (hi - lo)) ** (1.0 / k)
    eta = rng.uniform(-config.eta_max, config.eta_max, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    q = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int64)
    vx = rng.normal(0.0, config.vertex_sigma_xy, n)
    vy = rng.normal(0.0, config.vertex_sigma_xy, n)
    vz = rng.normal(0.0, config.vertex_sigma_z, n)
    return {
        "particle_id": np.arange(1, n + 1, dtype=np.int64),
        "particle_type": 211 * q,
        "vx": vx, "vy": vy, "vz": vz,
        "px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pt * np.sinh(eta),
        "q": q,
        "nhits": np.zeros(n, dtype=np.int64),
    }


def read_simulation_particles(path: str | Path) -> Table:
    """A particle table file for :func:`simulate_event` (TrackML particles columns; ``nhits``
    optional), checked as the simulation checks it: an :class:`EventFormatError` names the
    file, the column and the row of the first unusable value (a momentum too large, an id 0
    or repeated, a value not finite)."""
    from .trackml import read_particles

    table = read_particles(path, need_nhits=False)
    try:
        _checked_particles(table)
    except EventFormatError as error:  # rows of the table are the file's data rows, in order
        raise EventFormatError(error.reason, path=path, column=error.column, row=error.row) from None
    return table


def _checked_particles(particles: Table) -> Table:
    """The particle table with its columns as arrays of the schema dtypes; EventFormatError if unusable."""
    where = "particle table"
    required = [name for name in PARTICLES_COLUMNS if name != "nhits"]
    missing = [name for name in required if name not in particles]
    if missing:
        raise EventFormatError(f"{where} lacks column(s) {', '.join(missing)}", column=missing[0])
    table = {name: np.asarray(particles[name]) for name in required}
    if "particle_type" in particles:
        table["particle_type"] = np.asarray(particles["particle_type"])
    n = len(table["particle_id"])
    for name, column in table.items():
        if column.ndim != 1 or len(column) != n:
            raise EventFormatError(f"{where}: column has shape {column.shape}, expected ({n},)", column=name)
        if not np.all(np.isfinite(column.astype(np.float64))):
            row = int(np.flatnonzero(~np.isfinite(column.astype(np.float64)))[0]) + 1
            raise EventFormatError(f"{where}: value is not finite", column=name, row=row)
    for name in ("particle_id", "q", "particle_type"):
        if name in table:
            exact = table[name].astype(np.int64)
            if np.any(exact != table[name]):
                row = int(np.flatnonzero(exact != table[name])[0]) + 1
                raise EventFormatError(f"{where}: value must be an integer", column=name, row=row)
            table[name] = exact
    for name in ("vx", "vy", "vz", "px", "py", "pz"):
        table[name] = table[name].astype(np.float64)
    with np.errstate(over="ignore"):
        momentum = np.sqrt(table["px"] ** 2 + table["py"] ** 2 + table["pz"] ** 2)
    if np.any(momentum >= MAX_MOMENTUM_GEV):
        row = int(np.flatnonzero(momentum >= MAX_MOMENTUM_GEV)[0]) + 1
        largest = max(("px", "py", "pz"), key=lambda name: abs(float(table[name][row - 1])))
        raise EventFormatError(f"{where}: a momentum of {momentum[row - 1]:.3g} GeV is beyond what the simulation's "
                               f"helix arithmetic resolves (below {MAX_MOMENTUM_GEV:g} GeV)", column=largest, row=row)
    ids = table["particle_id"]
    if np.any(ids == 0):
        row = int(np.flatnonzero(ids == 0)[0]) + 1
        raise EventFormatError(f"{where}: particle id 0 is reserved for noise hits", column="particle_id", row=row)
    order = np.argsort(ids, kind="stable")
    repeated = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(repeated):
        row = int(order[repeated[0] + 1]) + 1
        raise EventFormatError(f"{where}: particle id {ids[row - 1]} appears more than once", column="particle_id", row=row)
    return table


def _masses(table: Table) -> np.ndarray:
    """Mass of each particle from its PDG code (pion mass where unknown or absent)."""
    n = table_length(table)
    if "particle_type" not in table:
        return np.full(n, _PION_MASS_GEV)
    codes = np.abs(table["particle_type"])
    masses = np.full(n, _PION_MASS_GEV)
    for code, mass in PARTICLE_MASSES_GEV.items():
        masses[codes == code] = mass
    return masses


# --------------------------------------------------------------------------- helix
@dataclass
class _Helices:
    """Helix parameters of a set of particles at their current points (all arrays [n])."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    phi: np.ndarray  # direction angle of the transverse momentum
    radius: np.ndarray  # R (mm)
    dz: np.ndarray  # dz / d(alpha) = R cot(theta) = pz / (C |q| B)
    turn: np.ndarray  # +1 anticlockwise (q < 0), -1 clockwise (q > 0)

    @classmethod
    def from_state(cls, position: np.ndarray, momentum: np.ndarray, charge: np.ndarray, field: float) -> "_Helices":
        """Helices of particles at ``position [n, 3]`` with ``momentum [n, 3]`` and integer ``charge [n]``."""
        pt = np.hypot(momentum[:, 0], momentum[:, 1])
        scale = GEV_PER_TESLA_MM * np.abs(charge) * field
        return cls(
            x=position[:, 0], y=position[:, 1], z=position[:, 2],
            phi=arctan2(momentum[:, 1], momentum[:, 0]),
            radius=pt / scale, dz=momentum[:, 2] / scale,
            turn=-np.sign(charge).astype(np.float64),
        )

    def take(self, rows: np.ndarray) -> "_Helices":
        """The helices of ``rows``."""
        return _Helices(**{field.name: getattr(self, field.name)[rows] for field in fields(self)})

    def point(self, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Position ``(x, y, z)`` after turning by ``alpha`` ([n] or [n, m], one row per helix)."""
        def column(values: np.ndarray) -> np.ndarray:
            return values[:, None] if np.ndim(alpha) == 2 else values

        chord = 2.0 * column(self.radius) * np.sin(0.5 * alpha)
        mid = column(self.phi) + 0.5 * column(self.turn) * alpha
        return column(self.x) + chord * np.cos(mid), column(self.y) + chord * np.sin(mid), column(self.z) + column(self.dz) * alpha

    def tangent(self, alpha: np.ndarray) -> np.ndarray:
        """d(position)/d(alpha) after turning by ``alpha`` ([n, 3])."""
        direction = self.phi + self.turn * alpha
        return np.stack([self.radius * np.cos(direction), self.radius * np.sin(direction), self.dz], axis=1)

    def centre(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre of the transverse circle."""
        return self.x - self.turn * self.radius * np.sin(self.phi), self.y + self.turn * self.radius * np.cos(self.phi)

    def turn_to_max_radius(self) -> np.ndarray:
        """Turning angle in ``[0, 2 pi)`` at which the distance from the beam line is largest."""
        cx, cy = self.centre()
        psi = arctan2(cy, cx)
        beta0 = arctan2(self.y - cy, self.x - cx)
        return np.mod(self.turn * (psi - beta0), _TWO_PI)


def _momentum_after(momentum: np.ndarray, turn: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Momentum vectors ``[n, 3]`` after turning by ``alpha`` in the transverse plane."""
    pt = np.hypot(momentum[:, 0], momentum[:, 1])
    phi = arctan2(momentum[:, 1], momentum[:, 0]) + turn * alpha
    return np.stack([pt * np.cos(phi), pt * np.sin(phi), momentum[:, 2]], axis=1)


@dataclass(frozen=True)
class _Surfaces:
    """The layers' reference surfaces as arrays, barrels and discs apart."""

    barrel_layer: np.ndarray
    barrel_radius: np.ndarray
    barrel_z_lo: np.ndarray
    barrel_z_hi: np.ndarray
    disc_layer: np.ndarray
    disc_z: np.ndarray
    disc_r_lo: np.ndarray
    disc_r_hi: np.ndarray

    @classmethod
    def of(cls, geometry: Geometry) -> "_Surfaces":
        """Reference surfaces of ``geometry``'s layers, with acceptance windows widened by the lookup margins."""
        barrels = [layer for layer in geometry.layers if layer.kind == "barrel"]
        discs = [layer for layer in geometry.layers if layer.kind == "disc"]
        return cls(
            barrel_layer=np.array([layer.index for layer in barrels], dtype=np.int64),
            barrel_radius=np.array([layer.radius for layer in barrels]),
            barrel_z_lo=np.array([layer.z_min - layer.margin_b for layer in barrels]),
            barrel_z_hi=np.array([layer.z_max + layer.margin_b for layer in barrels]),
            disc_layer=np.array([layer.index for layer in discs], dtype=np.int64),
            disc_z=np.array([layer.z for layer in discs]),
            disc_r_lo=np.array([layer.r_min - layer.margin_b for layer in discs]),
            disc_r_hi=np.array([layer.r_max + layer.margin_b for layer in discs]),
        )


def _next_crossing(helices: _Helices, limit: np.ndarray, last_layer: np.ndarray, surfaces: _Surfaces):
    """Nearest layer crossing ahead of each helix within turning angle ``limit``: ``(alpha, layer)``; ``inf, -1`` if none."""
    n = len(limit)
    min_alpha = _MIN_STEP_MM / helices.radius
    best_alpha = np.full(n, np.inf)
    best_layer = np.full(n, -1, dtype=np.int64)

    def consider(alpha: np.ndarray, ok: np.ndarray, layers: np.ndarray) -> None:
        alpha = np.where(ok, alpha, np.inf)
        column = np.argmin(alpha, axis=1) if alpha.shape[1] else np.zeros(n, dtype=np.int64)
        value = alpha[np.arange(n), column] if alpha.shape[1] else np.full(n, np.inf)
        better = value < best_alpha
        best_alpha[better] = value[better]
        best_layer[better] = layers[column[better]]

    def usable(alpha: np.ndarray, layers: np.ndarray) -> np.ndarray:
        same = layers[None, :] == last_layer[:, None]
        return (alpha > min_alpha[:, None]) & (alpha <= limit[:, None]) & ~(same & (alpha * helices.radius[:, None] < 1.0))

    if len(surfaces.barrel_layer):
        cx, cy = helices.centre()
        d = np.maximum(np.hypot(cx, cy), 1e-12)
        psi = arctan2(cy, cx)
        beta0 = arctan2(helices.y - cy, helices.x - cx)
        radius = helices.radius[:, None]
        cosine = (surfaces.barrel_radius[None, :] ** 2 - d[:, None] ** 2 - radius**2) / (2.0 * radius * d[:, None])
        meets = np.abs(cosine) <= 1.0
        opening = np.arccos(np.clip(cosine, -1.0, 1.0))
        for sign in (1.0, -1.0):
            alpha = np.mod(helices.turn[:, None] * (psi[:, None] + sign * opening - beta0[:, None]), _TWO_PI)
            alpha = np.where(alpha > _TWO_PI - min_alpha[:, None], 0.0, alpha)
            z = helices.z[:, None] + helices.dz[:, None] * alpha
            ok = meets & usable(alpha, surfaces.barrel_layer) & (z >= surfaces.barrel_z_lo) & (z <= surfaces.barrel_z_hi)
            consider(alpha, ok, surfaces.barrel_layer)
    if len(surfaces.disc_layer):
        moving = np.abs(helices.dz) > 1e-12
        safe_dz = np.where(moving, helices.dz, 1.0)
        alpha = (surfaces.disc_z[None, :] - helices.z[:, None]) / safe_dz[:, None]
        ok = moving[:, None] & usable(alpha, surfaces.disc_layer)
        x, y, _ = helices.point(np.where(ok, alpha, 0.0))
        r = np.hypot(x, y)
        ok &= (r >= surfaces.disc_r_lo) & (r <= surfaces.disc_r_hi)
        consider(alpha, ok, surfaces.disc_layer)
    return best_alpha, best_layer


def _module_crossings(geometry: Geometry, helices: _Helices, layers: np.ndarray):
    """Crossings of helices (at their layer crossing points) with the candidate modules of ``layers``.

    Returns ``(row, module, alpha, position, local)`` for every crossing inside a module's
    active area; ``row`` indexes the helices, ``alpha`` is the turning angle from the
    layer crossing point (negative when the module lies before it).
    """
    points = np.stack([helices.x, helices.y, helices.z], axis=1)
    candidates = geometry.candidates(layers, points)
    row, column = np.nonzero(candidates >= 0)
    module = candidates[row, column].astype(np.int64)
    pairs = helices.take(row)
    normal = geometry.normal[module]
    centre = geometry.center[module]
    alpha = np.zeros(len(row))
    todo = np.arange(len(row))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(_NEWTON_ITERATIONS):
            helix = pairs.take(todo)
            x, y, z = helix.point(alpha[todo])
            n, c = normal[todo], centre[todo]
            residual = n[:, 0] * (x - c[:, 0]) + n[:, 1] * (y - c[:, 1]) + n[:, 2] * (z - c[:, 2])
            slope = np.einsum("ni,ni->n", n, helix.tangent(alpha[todo]))
            alpha[todo] -= residual / slope
            todo = todo[np.abs(residual) > _NEWTON_TOLERANCE_MM]  # no longer finite ones drop out here too
            if not len(todo):
                break
        alpha[todo] = np.nan  # not converged: no crossing near this layer
    x, y, z = pairs.point(alpha)
    position = np.stack([x, y, z], axis=1)
    path = np.abs(alpha) * np.hypot(pairs.radius, pairs.dz)
    finite = np.isfinite(alpha) & (path <= _MAX_MODULE_DISTANCE_MM) & (np.abs(alpha) < np.pi / 2)
    local = np.full_like(position, np.inf)
    local[finite] = geometry.to_local(module[finite], position[finite])
    inside = finite & geometry.contains(module, local)
    return row[inside], module[inside], alpha[inside], position[inside], local[inside]


def _scatter(momentum: np.ndarray, normal: np.ndarray, charge: np.ndarray, mass: np.ndarray,
             x_over_x0: float, rng: np.random.Generator) -> np.ndarray:
    """Momenta ``[n, 3]`` after a multiple-scattering kick in a layer of surface normal ``normal [n, 3]``."""
    p = np.linalg.norm(momentum, axis=1)
    direction = momentum / p[:, None]
    cos_incidence = np.abs(np.einsum("ni,ni->n", direction, normal))
    thickness = x_over_x0 * np.minimum(1.0 / np.maximum(cos_incidence, 1e-12), _MAX_PATH_FACTOR)
    beta = p / np.sqrt(p * p + mass * mass)
    z2 = charge.astype(np.float64) ** 2
    theta0 = 0.0136 / (beta * p) * np.sqrt(z2 * thickness) * (1.0 + 0.038 * np.log(thickness * z2 / beta**2))
    theta0 = np.maximum(theta0, 0.0)
    # Two unit vectors perpendicular to the direction.
    helper = np.where(np.abs(direction[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    first = np.cross(helper, direction)
    first /= np.linalg.norm(first, axis=1)[:, None]
    second = np.cross(direction, first)
    angles = rng.normal(0.0, 1.0, (len(p), 2)) * theta0[:, None]
    kicked = direction + np.tan(angles[:, :1]) * first + np.tan(angles[:, 1:]) * second
    kicked /= np.linalg.norm(kicked, axis=1)[:, None]
    return kicked * p[:, None]


def _propagate(geometry: Geometry, position: np.ndarray, momentum: np.ndarray, charge: np.ndarray,
               mass: np.ndarray, config: SimulationConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Step all particles through the layers; the raw hits (before inefficiency and noise) as arrays."""
    surfaces = _Surfaces.of(geometry)
    layer_is_barrel = np.array([layer.kind == "barrel" for layer in geometry.layers])
    field = config.magnetic_field
    active = np.arange(len(position))
    position, momentum = position.copy(), momentum.copy()
    last_layer = np.full(len(active), -1, dtype=np.int64)
    budget = _Helices.from_state(position, momentum, charge, field).turn_to_max_radius()
    budget = np.where(budget < 1e-9, _TWO_PI, budget)  # moving exactly tangentially: allow one turn
    out: dict[str, list[np.ndarray]] = {key: [] for key in ("particle", "module", "true", "momentum", "local", "order")}
    # Within the outgoing half turn a helix meets a cylinder at most twice and a disc once:
    # the step count is bounded; the bound only guards against a numerical pathology.
    max_steps = 2 * len(geometry.layers) + 2
    for step in range(max_steps):
        if not len(active):
            break
        helices = _Helices.from_state(position, momentum, charge[active], field)
        limit = np.minimum(budget, helices.turn_to_max_radius())
        alpha, layer = _next_crossing(helices, limit, last_layer, surfaces)
        going = np.isfinite(alpha)
        active, position, momentum, budget = active[going], position[going], momentum[going], budget[going]
        helices, alpha, layer = helices.take(np.flatnonzero(going)), alpha[going], layer[going]
        if not len(active):
            break
        x, y, z = helices.point(alpha)
        position = np.stack([x, y, z], axis=1)
        momentum = _momentum_after(momentum, helices.turn, alpha)
        budget = budget - alpha
        last_layer = layer
        at_layer = _Helices.from_state(position, momentum, charge[active], field)
        row, module, hit_alpha, true_position, local = _module_crossings(geometry, at_layer, layer)
        out["particle"].append(active[row])
        out["module"].append(module)
        out["true"].append(true_position)
        out["momentum"].append(_momentum_after(momentum[row], at_layer.turn[row], hit_alpha))
        out["local"].append(local)
        out["order"].append(step + 0.5 + np.arctan(hit_alpha) / np.pi)  # along the trajectory
        if config.x_over_x0 > 0 and len(row):
            hit_rows = np.unique(row)
            is_barrel = layer_is_barrel[layer[hit_rows]]
            radial = position[hit_rows, :2] / np.hypot(position[hit_rows, 0], position[hit_rows, 1])[:, None]
            normal = np.where(is_barrel[:, None], np.c_[radial, np.zeros(len(hit_rows))], np.array([[0.0, 0.0, 1.0]]))
            momentum[hit_rows] = _scatter(
                momentum[hit_rows], normal, charge[active[hit_rows]], mass[active[hit_rows]], config.x_over_x0, rng
            )
    if not out["particle"]:
        return {
            "particle": np.zeros(0, dtype=np.int64), "module": np.zeros(0, dtype=np.int64),
            "true": np.zeros((0, 3)), "momentum": np.zeros((0, 3)), "local": np.zeros((0, 3)), "order": np.zeros(0),
        }
    return {key: np.concatenate(values) for key, values in out.items()}


# --------------------------------------------------------------------------- hits
def _measure(geometry: Geometry, module: np.ndarray, local: np.ndarray, config: SimulationConfig,
             rng: np.random.Generator) -> np.ndarray:
    """Measured global positions: local ``u, v`` smeared, kept in the active area, on the mid-plane."""
    u, v = local[:, 0].copy(), local[:, 1].copy()
    if config.smearing:
        sigma_u = geometry.pitch_u[module] / np.sqrt(12.0) if config.resolution_u is None else np.full(len(module), config.resolution_u)
        sigma_v = geometry.pitch_v[module] / np.sqrt(12.0) if config.resolution_v is None else np.full(len(module), config.resolution_v)
        noise = rng.normal(0.0, 1.0, (len(module), 2))
        u, v = geometry.clip_to_area(module, u + sigma_u * noise[:, 0], v + sigma_v * noise[:, 1])
    return geometry.to_global(module, np.stack([u, v, np.zeros_like(u)], axis=1))


def hit_weights(particle: np.ndarray, order: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """TrackML-like score weights of hits (see the module docstring), normalised to sum 1.

    ``particle`` is each hit's particle index (``-1`` for noise), ``order`` its position
    along the trajectory (any increasing key) and ``pt`` the transverse momentum of each
    particle, indexed by ``particle``.
    """
    weights = np.zeros(len(particle))
    signal = np.flatnonzero(particle >= 0)
    if not len(signal):
        return weights
    sorted_hits = signal[np.lexsort((order[signal], particle[signal]))]
    owner = particle[sorted_hits]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    counts = np.diff(np.r_[starts, len(owner)])
    count = np.repeat(counts, counts)
    rank = np.arange(len(owner)) - np.repeat(starts, counts)
    from_end = np.minimum(rank, count - 1 - rank)
    order_weight = np.select([from_end == 0, from_end == 1, from_end == 2], [10.0, 8.0, 6.0], 5.0)
    momentum_weight = np.clip(0.2 + 0.8 * (pt[owner] - 0.5) / 2.5, 0.2, 1.0)
    weights[sorted_hits] = np.where(count >= 4, order_weight * momentum_weight, 0.0)
    total = weights.sum()
    return weights / total if total > 0 else weights


def simulate_event(geometry: Geometry, source: Table | SimulationConfig, *, seed: int | Sequence[int],
                   config: SimulationConfig | None = None, event_id: int = 0) -> Event:
    """Simulate one event on ``geometry``: hits, truth and particles as TrackML tables.

    ``source`` is either a particle table (TrackML particles columns; ``nhits`` is
    ignored and recomputed, ``particle_type`` is used for the masses when present) or a
    :class:`SimulationConfig`, whose random-particle options then generate the particles.
    ``config`` holds the detector options (default: ``source`` when it is a config,
    otherwise ``SimulationConfig()``). ``seed`` is an integer or a sequence of integers
    (e.g. ``(run_seed, event_id)``) for ``numpy.random.default_rng``; the same inputs and
    seed give the same event.
    """
    if not isinstance(geometry, Geometry):
        raise InputError(f"simulate_event takes the detector geometry loaded, not {type(geometry).__name__} "
                         f"{geometry!r}: trackserve.events.geometry.load_geometry() (the shipped one) or "
                         "load_geometry(path)")
    if isinstance(source, SimulationConfig):
        if config is not None and config != source:
            raise InputError("simulate_event: give the options once, as source or as config, not two different configs")
        config = source
    config = SimulationConfig() if config is None else config
    config.validate()
    for value in ((seed,) if isinstance(seed, numbers.Integral) else seed if isinstance(seed, (list, tuple)) else (seed,)):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise InputError(f"seed must be an integer or a sequence of integers, e.g. (run_seed, event_id); got {seed!r}")
        check_seed(int(value), "seed")
    if isinstance(event_id, (bool, np.bool_)) or not isinstance(event_id, numbers.Integral) \
            or not 0 <= event_id <= MAX_EVENT_ID:
        raise InputError(f"event_id must be an integer in 0..{MAX_EVENT_ID} (a TrackML event id); got {event_id!r}")
    rng = np.random.default_rng(seed)
    particles = generate_particles(config, rng) if isinstance(source, SimulationConfig) else _checked_particles(source)
    if config.vertex_offset_z:
        particles = {**particles, "vz": np.asarray(particles["vz"], dtype=np.float64) + config.vertex_offset_z}
    n = table_length(particles)
    momentum = np.stack([particles["px"], particles["py"], particles["pz"]], axis=1).astype(np.float64)
    position = np.stack([particles["vx"], particles["vy"], particles["vz"]], axis=1).astype(np.float64)
    pt = np.hypot(momentum[:, 0], momentum[:, 1])
    charge = particles["q"].astype(np.int64)
    tracked = np.flatnonzero((charge != 0) & (pt > 1e-6))
    raw = _propagate(geometry, position[tracked], momentum[tracked], charge[tracked], _masses(particles)[tracked], config, rng)
    particle = tracked[raw["particle"]]
    measured = _measure(geometry, raw["module"], raw["local"], config, rng)
    if config.inefficiency > 0:
        kept = rng.random(len(particle)) >= config.inefficiency
        particle, measured = particle[kept], measured[kept]
        raw = {key: value[kept] for key, value in raw.items()}
    num_noise = int(round(config.noise_fraction / (1.0 - config.noise_fraction) * len(particle)))
    noise_module = rng.integers(0, geometry.num_modules, num_noise)
    noise_position = geometry.sample_points(noise_module, rng)

    module = np.r_[raw["module"], noise_module]
    owner = np.r_[particle, np.full(num_noise, -1, dtype=np.int64)]
    order = np.r_[raw["order"], np.zeros(num_noise)]
    hit_position = np.r_[measured, noise_position].reshape(-1, 3)
    true_position = np.r_[raw["true"], noise_position].reshape(-1, 3)
    true_momentum = np.r_[raw["momentum"], np.zeros((num_noise, 3))].reshape(-1, 3)
    weight = hit_weights(owner, order, pt)

    sort = np.lexsort((order, owner, module))  # TrackML order: volume, layer, module
    module, owner, weight = module[sort], owner[sort], weight[sort]
    hit_position, true_position, true_momentum = hit_position[sort], true_position[sort], true_momentum[sort]
    hit_id = np.arange(1, len(module) + 1, dtype=np.int64)
    hits = {
        "hit_id": hit_id,
        "x": hit_position[:, 0], "y": hit_position[:, 1], "z": hit_position[:, 2],
        "volume_id": geometry.volume_id[module], "layer_id": geometry.layer_id[module],
        "module_id": geometry.module_id[module],
    }
    truth = {
        "hit_id": hit_id.copy(),
        "particle_id": np.where(owner >= 0, particles["particle_id"][np.maximum(owner, 0)], 0).astype(np.int64),
        "tx": true_position[:, 0], "ty": true_position[:, 1], "tz": true_position[:, 2],
        "tpx": true_momentum[:, 0], "tpy": true_momentum[:, 1], "tpz": true_momentum[:, 2],
        "weight": weight,
    }
    out_particles = {name: np.asarray(particles[name], dtype=dtype) for name, dtype in PARTICLES_COLUMNS.items() if name != "nhits"}
    if "particle_type" in particles:
        out_particles["particle_type"] = np.asarray(particles["particle_type"], dtype=np.int64)
    out_particles["nhits"] = np.bincount(particle, minlength=n).astype(np.int64)
    return Event(event_id=int(event_id), hits=hits, truth=truth, particles=out_particles)
