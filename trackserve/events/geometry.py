"""The TrackML detector geometry: modules, layer surfaces and module lookup.

The geometry file (``detectors.csv``) has one row per sensitive module with the columns
``volume_id, layer_id, module_id, cx, cy, cz, rot_xu .. rot_zw, module_t, module_minhu,
module_maxhu, module_hv, pitch_u, pitch_v`` (lengths in mm).

Frames. A module is a flat trapezoid (a rectangle when ``minhu == maxhu``) in its local
``(u, v, w)`` frame, centred on ``(cx, cy, cz)``. The rotation matrix ``R`` has rows
``x, y, z`` and columns ``u, v, w`` (``rot_xu = R[0, 0]``, ``rot_xv = R[0, 1]``, ...), so
``global = centre + R @ local`` and ``local = R.T @ (global - centre)``; ``w`` is the
normal. The file's matrices, rounded to 6 digits, are replaced by the nearest exact
rotations (they move by about 1e-6). The active area is ``|v| <= hv`` and ``|u| <= hu(v)`` with the half-width growing
linearly from ``minhu`` at ``v = -hv`` to ``maxhu`` at ``v = +hv``; the sensor spans
``|w| <= module_t / 2``. This convention was checked against the real TrackML event in
``data/``: every true hit position lies inside its module that way, while with the
opposite one 4 % of the hits on trapezoids fall outside, up to 36 % beyond the edge.

Layers. Every ``(volume_id, layer_id)`` is one layer. A layer whose module normals are
perpendicular to the beam is a *barrel* layer, approximated by a cylinder at the mean
module-centre radius; a layer whose normals are along the beam is a *disc* (end-cap),
approximated by a plane at the mean module-centre ``z``. These reference surfaces are
used to find where a particle crosses a layer; the crossing with each module is then
computed on the module's own plane (see :mod:`trackserve.events.simulate`).

Lookup. Each layer is binned in ``(phi, z)`` (barrel) or ``(phi, r)`` (disc). A module is
registered in every bin that its area, widened by a margin, overlaps. The margin covers
the distance between the reference surface and the module planes (staggered, tilted
modules), so the candidates of the bin holding a reference crossing point include every
module the particle can cross on that layer, overlaps included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EventFormatError, GeometryError
from .stable_math import arctan2

#: Columns of the geometry file, in file order.
GEOMETRY_COLUMNS: tuple[str, ...] = (
    "volume_id", "layer_id", "module_id", "cx", "cy", "cz",
    "rot_xu", "rot_xv", "rot_xw", "rot_yu", "rot_yv", "rot_yw", "rot_zu", "rot_zv", "rot_zw",
    "module_t", "module_minhu", "module_maxhu", "module_hv", "pitch_u", "pitch_v",
)
_ROTATION_COLUMNS = GEOMETRY_COLUMNS[6:15]
_POSITIVE_COLUMNS = ("module_t", "module_minhu", "module_maxhu", "module_hv", "pitch_u", "pitch_v")
_ORTHONORMAL_TOLERANCE = 1e-4
#: Extra margin (mm) added to every lookup window, beyond the surface spread.
_LOOKUP_SLACK_MM = 1.0


def default_geometry_path() -> Path:
    """The geometry shipped with the repository: ``<package>/../data/detectors.csv``."""
    return Path(__file__).resolve().parents[2] / "data" / "detectors.csv"


@dataclass(frozen=True)
class Layer:
    """One detector layer and the reference surface that approximates it.

    ``kind`` is ``"barrel"`` (a cylinder of radius ``radius``) or ``"disc"`` (a plane at
    ``z``). ``r_min .. r_max`` and ``z_min .. z_max`` bound the layer's active area.
    ``margin_phi`` (rad) and ``margin_b`` (mm, in ``z`` for a barrel, ``r`` for a disc) are
    the widening of the module lookup windows. Modules ``first_module`` to
    ``first_module + num_modules - 1`` of the geometry belong to this layer.
    """

    index: int
    volume_id: int
    layer_id: int
    kind: str
    radius: float
    z: float
    r_min: float
    r_max: float
    z_min: float
    z_max: float
    margin_phi: float
    margin_b: float
    first_module: int
    num_modules: int


@dataclass(frozen=True)
class _LayerBins:
    """The ``(phi, b)`` binning of all layers, flattened into one candidate table."""

    num_phi: np.ndarray  # [L] int64
    num_b: np.ndarray  # [L] int64
    b_low: np.ndarray  # [L] float64, lower edge of the first b bin
    b_width: np.ndarray  # [L] float64
    offset: np.ndarray  # [L] int64, first global bin of each layer
    candidates: np.ndarray  # [total bins, K] int32 module indices, -1 padded


class Geometry:
    """The modules of a detector, its layers, and a fast module lookup.

    Module arrays are indexed by a *module index* ``0 .. num_modules - 1`` (modules sorted
    by volume, layer, module id). Build one with :func:`load_geometry`.
    """

    def __init__(self, columns: dict[str, np.ndarray], source: str = "<memory>"):
        """Build the geometry from validated, sorted column arrays (see :func:`load_geometry`)."""
        self.source = source
        self.volume_id = columns["volume_id"].astype(np.int64)
        self.layer_id = columns["layer_id"].astype(np.int64)
        self.module_id = columns["module_id"].astype(np.int64)
        self.center = np.stack([columns["cx"], columns["cy"], columns["cz"]], axis=1)
        rotation = np.stack([columns[name] for name in _ROTATION_COLUMNS], axis=1).reshape(-1, 3, 3)
        # The file rounds the matrices to 6 digits: use the nearest exact rotations, so that
        # to_local and to_global are inverse to rounding error.
        left, _, right = np.linalg.svd(rotation)
        self.rotation = left @ right
        self.thickness = columns["module_t"].astype(np.float64)
        self.min_hu = columns["module_minhu"].astype(np.float64)
        self.max_hu = columns["module_maxhu"].astype(np.float64)
        self.hv = columns["module_hv"].astype(np.float64)
        self.pitch_u = columns["pitch_u"].astype(np.float64)
        self.pitch_v = columns["pitch_v"].astype(np.float64)
        self._keys = (self.volume_id << 40) | (self.layer_id << 20) | self.module_id
        self.layers, self.module_layer = self._build_layers()
        self._bins = self._build_bins()

    @property
    def num_modules(self) -> int:
        """Number of modules."""
        return int(len(self.module_id))

    @property
    def normal(self) -> np.ndarray:
        """Unit normal (local ``w`` axis) of every module, ``[num_modules, 3]``."""
        return self.rotation[:, :, 2]

    # ----------------------------------------------------------------- module frames
    def module_indices(self, volume_id, layer_id, module_id) -> np.ndarray:
        """Module indices of ``(volume_id, layer_id, module_id)`` triples; GeometryError on an unknown one."""
        volume_id, layer_id, module_id = (np.asarray(a, dtype=np.int64) for a in (volume_id, layer_id, module_id))
        keys = (volume_id << 40) | (layer_id << 20) | module_id
        index = np.searchsorted(self._keys, keys)
        index = np.minimum(index, self.num_modules - 1)
        missing = self._keys[index] != keys
        if np.any(missing):
            first = int(np.flatnonzero(missing.ravel())[0])
            raise GeometryError(
                f"{np.count_nonzero(missing)} module(s) are not in the geometry {self.source}, first: volume "
                f"{volume_id.ravel()[first]}, layer {layer_id.ravel()[first]}, module {module_id.ravel()[first]}; "
                "use the geometry file the event was made with"
            )
        return index

    def to_local(self, modules: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Local ``(u, v, w)`` coordinates of global ``points [n, 3]`` in the frames of ``modules [n]``."""
        return np.einsum("nij,ni->nj", self.rotation[modules], points - self.center[modules])

    def to_global(self, modules: np.ndarray, local: np.ndarray) -> np.ndarray:
        """Global ``(x, y, z)`` of local ``(u, v, w)`` points ``[n, 3]`` in the frames of ``modules [n]``."""
        return self.center[modules] + np.einsum("nij,nj->ni", self.rotation[modules], local)

    def half_width_u(self, modules: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Half-width of the active area in ``u`` at local ``v`` (linear from ``minhu`` at ``-hv`` to ``maxhu`` at ``+hv``)."""
        hv = self.hv[modules]
        fraction = (np.asarray(v) + hv) / (2.0 * hv)
        return self.min_hu[modules] + (self.max_hu[modules] - self.min_hu[modules]) * fraction

    def contains(self, modules: np.ndarray, local: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
        """Whether local points ``[n, 3]`` lie inside their module's sensor volume (bounds widened by ``tolerance`` mm)."""
        u, v, w = local[:, 0], local[:, 1], local[:, 2]
        return (
            (np.abs(w) <= 0.5 * self.thickness[modules] + tolerance)
            & (np.abs(v) <= self.hv[modules] + tolerance)
            & (np.abs(u) <= self.half_width_u(modules, np.clip(v, -self.hv[modules], self.hv[modules])) + tolerance)
        )

    def clip_to_area(self, modules: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Local ``(u, v)`` moved to the nearest point of the active area along each axis (``v`` first, then ``u``)."""
        hv = self.hv[modules]
        v = np.clip(v, -hv, hv)
        hu = self.half_width_u(modules, v)
        return np.clip(u, -hu, hu), v

    def sample_points(self, modules: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Global points drawn uniformly over the active areas of ``modules [n]`` (on the mid-planes)."""
        a = self.min_hu[modules]
        b = self.max_hu[modules] - a
        # The density of t = (v + hv) / (2 hv) is proportional to the width a + b t: invert its CDF.
        cdf = rng.random(len(modules)) * (a + 0.5 * b)
        safe_b = np.where(b > 0, b, 1.0)
        t = np.where(b > 0, (-a + np.sqrt(a * a + 2.0 * safe_b * cdf)) / safe_b, cdf / a)
        hu = a + b * t
        u = (2.0 * rng.random(len(modules)) - 1.0) * hu
        v = (2.0 * t - 1.0) * self.hv[modules]
        local = np.stack([u, v, np.zeros_like(u)], axis=1)
        return self.to_global(modules, local)

    # ----------------------------------------------------------------- lookup
    def candidates(self, layers: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Modules that a particle crossing layer ``layers[i]`` near ``points[i]`` may cross.

        Returns ``[n, K]`` module indices padded with ``-1``. ``points`` are expected near
        the layer's reference surface (within the lookup margins).
        """
        bins = self._bins
        layers = np.asarray(layers, dtype=np.int64)
        phi = arctan2(points[:, 1], points[:, 0])
        barrel = self._layer_is_barrel[layers]
        b = np.where(barrel, points[:, 2], np.hypot(points[:, 0], points[:, 1]))
        num_phi = bins.num_phi[layers]
        num_b = bins.num_b[layers]
        i_phi = np.floor((phi + np.pi) / (2.0 * np.pi) * num_phi).astype(np.int64) % num_phi
        i_b = np.clip(np.floor((b - bins.b_low[layers]) / bins.b_width[layers]).astype(np.int64), 0, num_b - 1)
        return bins.candidates[bins.offset[layers] + i_phi * num_b + i_b]

    # ----------------------------------------------------------------- construction
    def _outline(self, modules: np.ndarray, steps: int = 5) -> np.ndarray:
        """Global points on a ``steps x steps`` grid over each module's active area, ``[n, steps*steps, 3]``."""
        s = np.linspace(-1.0, 1.0, steps)
        su, sv = np.meshgrid(s, s, indexing="ij")
        su, sv = su.ravel(), sv.ravel()
        v = sv[None, :] * self.hv[modules, None]
        u = su[None, :] * self.half_width_u(modules[:, None], v)
        local = np.stack([u, v, np.zeros_like(u)], axis=-1)
        return self.center[modules, None, :] + np.einsum("nij,nkj->nki", self.rotation[modules], local)

    def _build_layers(self) -> tuple[tuple[Layer, ...], np.ndarray]:
        """Group modules into layers, classify each as barrel or disc, and measure its extent."""
        layer_keys = (self.volume_id << 20) | self.layer_id
        starts = np.flatnonzero(np.r_[True, layer_keys[1:] != layer_keys[:-1]])
        ends = np.r_[starts[1:], self.num_modules]
        layers = []
        module_layer = np.empty(self.num_modules, dtype=np.int64)
        normal_z = np.abs(self.normal[:, 2])
        for index, (start, end) in enumerate(zip(starts, ends)):
            modules = np.arange(start, end)
            module_layer[start:end] = index
            volume, layer = int(self.volume_id[start]), int(self.layer_id[start])
            if np.all(normal_z[modules] < 0.01):
                kind = "barrel"
            elif np.all(normal_z[modules] > 0.99):
                kind = "disc"
            else:
                raise GeometryError(
                    f"{self.source}: volume {volume} layer {layer} mixes modules facing the beam and modules "
                    "parallel to it; each layer must be a barrel (normals perpendicular to z) or a disc (normals along z)"
                )
            outline = self._outline(modules)
            centre_r = np.hypot(self.center[modules, 0], self.center[modules, 1])
            points = np.concatenate([outline.reshape(-1, 3), self.center[modules]])
            half_t = 0.5 * float(self.thickness[modules].max())
            r = np.hypot(points[:, 0], points[:, 1])
            r_min, r_max = float(r.min()), float(r.max())
            z_min, z_max = float(points[:, 2].min()), float(points[:, 2].max())
            if kind == "barrel":
                spread = (r_max - r_min) + 2.0 * half_t
                slope = max(abs(z_min), abs(z_max)) / max(r_min, 1e-9)  # largest |cot(theta)| of a track from the origin
                margin_b = spread * slope + _LOOKUP_SLACK_MM
                margin_phi = (spread + _LOOKUP_SLACK_MM) / max(r_min, 1e-9)
            else:
                spread = (z_max - z_min) + 2.0 * half_t
                slope = r_max / max(min(abs(z_min), abs(z_max)), 1e-9)  # largest tan(theta) of a track from the origin
                margin_b = spread * slope + _LOOKUP_SLACK_MM
                margin_phi = margin_b / max(r_min, 1e-9)
            layers.append(
                Layer(
                    index=index, volume_id=volume, layer_id=layer, kind=kind,
                    radius=float(centre_r.mean()), z=float(self.center[modules, 2].mean()),
                    r_min=r_min, r_max=r_max, z_min=z_min, z_max=z_max,
                    margin_phi=float(margin_phi), margin_b=float(margin_b),
                    first_module=int(start), num_modules=int(end - start),
                )
            )
        self._layer_is_barrel = np.array([layer.kind == "barrel" for layer in layers])
        return tuple(layers), module_layer

    def _build_bins(self) -> _LayerBins:
        """Register every module in the ``(phi, b)`` bins its widened area overlaps."""
        num_phi, num_b, b_low, b_width, offsets = [], [], [], [], []
        all_bins, all_modules = [], []
        offset = 0
        for layer in self.layers:
            modules = np.arange(layer.first_module, layer.first_module + layer.num_modules)
            outline = self._outline(modules)
            centre_phi = arctan2(self.center[modules, 1], self.center[modules, 0])
            phi = arctan2(outline[..., 1], outline[..., 0])
            dphi = np.angle(np.exp(1j * (phi - centre_phi[:, None])))
            b = outline[..., 2] if layer.kind == "barrel" else np.hypot(outline[..., 0], outline[..., 1])
            phi_lo = centre_phi + dphi.min(axis=1)
            phi_hi = centre_phi + dphi.max(axis=1)
            b_lo, b_hi = b.min(axis=1), b.max(axis=1)
            # Bins about half a module wide in each direction.
            n_phi = int(np.clip(np.round(2.0 * 2.0 * np.pi / np.median(phi_hi - phi_lo)), 1, 4096))
            span_lo = float(b_lo.min() - layer.margin_b)
            span_hi = float(b_hi.max() + layer.margin_b)
            n_b = int(np.clip(np.round(2.0 * (span_hi - span_lo) / np.median(b_hi - b_lo)), 1, 4096))
            width = (span_hi - span_lo) / n_b
            phi_bin_width = 2.0 * np.pi / n_phi
            first_phi = np.floor((phi_lo - layer.margin_phi + np.pi) / phi_bin_width).astype(np.int64)
            last_phi = np.floor((phi_hi + layer.margin_phi + np.pi) / phi_bin_width).astype(np.int64)
            last_phi = np.minimum(last_phi, first_phi + n_phi - 1)
            first_b = np.clip(np.floor((b_lo - layer.margin_b - span_lo) / width).astype(np.int64), 0, n_b - 1)
            last_b = np.clip(np.floor((b_hi + layer.margin_b - span_lo) / width).astype(np.int64), 0, n_b - 1)
            count_phi = last_phi - first_phi + 1
            count_b = last_b - first_b + 1
            counts = count_phi * count_b
            module_rep = np.repeat(modules, counts)
            within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            local = np.repeat(np.arange(len(modules)), counts)
            i_phi = (first_phi[local] + within // count_b[local]) % n_phi
            i_b = first_b[local] + within % count_b[local]
            all_bins.append(offset + i_phi * n_b + i_b)
            all_modules.append(module_rep)
            num_phi.append(n_phi)
            num_b.append(n_b)
            b_low.append(span_lo)
            b_width.append(width)
            offsets.append(offset)
            offset += n_phi * n_b
        bins = np.concatenate(all_bins)
        modules = np.concatenate(all_modules)
        order = np.lexsort((modules, bins))
        bins, modules = bins[order], modules[order]
        per_bin = np.bincount(bins, minlength=offset)
        width_k = max(int(per_bin.max()), 1)
        rank = np.arange(len(bins)) - np.repeat(np.cumsum(per_bin) - per_bin, per_bin)
        table = np.full((offset, width_k), -1, dtype=np.int32)
        table[bins, rank] = modules
        return _LayerBins(
            num_phi=np.array(num_phi, dtype=np.int64), num_b=np.array(num_b, dtype=np.int64),
            b_low=np.array(b_low), b_width=np.array(b_width), offset=np.array(offsets, dtype=np.int64),
            candidates=table,
        )


def _read_columns(path: Path) -> dict[str, np.ndarray]:
    """Read and validate the geometry CSV into column arrays; GeometryError naming file, column and row."""
    from .trackml import read_text

    try:
        text = read_text(path).removeprefix("\ufeff")  # gzip-compressed or not; a byte-order mark some editors write
    except EventFormatError as error:
        raise GeometryError(f"the geometry {error}") from None
    except OSError as error:
        raise GeometryError(f"cannot read the geometry file {path}: {error.strerror or error}") from error
    header_line, _, body = text.partition("\n")
    header = [name.strip() for name in header_line.strip().split(",")]
    missing = [name for name in GEOMETRY_COLUMNS if name not in header]
    if missing:
        raise GeometryError(
            f"geometry file {path}: missing column(s) {', '.join(missing)}; expected the TrackML detectors.csv "
            f"columns {','.join(GEOMETRY_COLUMNS)}"
        )
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        raise GeometryError(f"geometry file {path} has a header but no module rows")
    values = np.empty((len(lines), len(header)), dtype=np.float64)
    try:
        values[:] = np.array([line.split(",") for line in lines], dtype=np.float64)
    except ValueError:
        for row, line in enumerate(lines, start=1):
            fields = line.split(",")
            if len(fields) != len(header):
                raise GeometryError(
                    f"geometry file {path}, row {row}: {len(fields)} fields, the header has {len(header)}"
                ) from None
            for name, text in zip(header, fields):
                try:
                    float(text)
                except ValueError:
                    raise GeometryError(
                        f"geometry file {path}, column '{name}', row {row}: '{text.strip()}' is not a number"
                    ) from None
        raise
    columns = {name: values[:, header.index(name)] for name in GEOMETRY_COLUMNS}
    for name, column in columns.items():
        bad = ~np.isfinite(column)
        if name in ("volume_id", "layer_id", "module_id"):
            bad |= (column != np.round(column)) | (column < 0) | (column >= 2**20)
        elif name in _POSITIVE_COLUMNS:
            bad |= column <= 0
        if np.any(bad):
            row = int(np.flatnonzero(bad)[0]) + 1
            what = {
                "volume_id": "a non-negative integer below 2^20", "layer_id": "a non-negative integer below 2^20",
                "module_id": "a non-negative integer below 2^20",
            }.get(name, "positive and finite" if name in _POSITIVE_COLUMNS else "finite")
            raise GeometryError(
                f"geometry file {path}, column '{name}', row {row}: value {float(column[row - 1]):g} must be {what}"
            )
    wide_low = columns["module_minhu"] > columns["module_maxhu"]
    if np.any(wide_low):
        row = int(np.flatnonzero(wide_low)[0]) + 1
        raise GeometryError(
            f"geometry file {path}, column 'module_minhu', row {row}: module_minhu exceeds module_maxhu"
        )
    rotation = np.stack([columns[name] for name in _ROTATION_COLUMNS], axis=1).reshape(-1, 3, 3)
    error = np.abs(np.einsum("nki,nkj->nij", rotation, rotation) - np.eye(3)).max(axis=(1, 2))
    if np.any(error > _ORTHONORMAL_TOLERANCE):
        row = int(np.argmax(error > _ORTHONORMAL_TOLERANCE)) + 1
        raise GeometryError(
            f"geometry file {path}, row {row}: the rotation rot_xu..rot_zw is not orthonormal "
            f"(|R^T R - 1| = {error[row - 1]:.2g})"
        )
    ids = columns["volume_id"].astype(np.int64), columns["layer_id"].astype(np.int64), columns["module_id"].astype(np.int64)
    keys = (ids[0] << 40) | (ids[1] << 20) | ids[2]
    order = np.argsort(keys, kind="stable")
    duplicated = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if len(duplicated):
        row = int(order[duplicated[0] + 1]) + 1
        raise GeometryError(
            f"geometry file {path}, row {row}: module (volume {ids[0][row - 1]}, layer {ids[1][row - 1]}, "
            f"module {ids[2][row - 1]}) appears more than once"
        )
    return {name: column[order] for name, column in columns.items()}


def load_geometry(path: str | Path | None = None) -> Geometry:
    """Load a TrackML ``detectors.csv`` (default: the repository's ``data/detectors.csv``).

    Raises :class:`~trackserve.errors.GeometryError` when the file is missing or malformed,
    naming the file, and where it applies the column and the 1-based data row.
    """
    path = default_geometry_path() if path is None else Path(path)
    if not path.is_file():
        raise GeometryError(
            f"geometry file {path} does not exist; pass the TrackML detectors.csv with --geometry "
            "(the repository ships one as data/detectors.csv)"
        )
    return Geometry(_read_columns(path), source=str(path))
