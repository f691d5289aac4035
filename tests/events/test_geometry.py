"""Tests of the TrackML geometry: loading, frames, layers, module lookup, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trackserve.errors import GeometryError
from trackserve.events.geometry import GEOMETRY_COLUMNS, default_geometry_path, load_geometry
from trackserve.events.trackml import read_event

REPO = Path(__file__).resolve().parents[2]
REAL_EVENT = REPO / "data" / "event000000001"


@pytest.fixture(scope="module")
def geometry():
    return load_geometry()


@pytest.fixture(scope="module")
def real_event():
    return read_event(REAL_EVENT)


def test_loads_the_trackml_detector(geometry):
    assert default_geometry_path() == REPO / "data" / "detectors.csv"
    assert geometry.num_modules == 18728
    assert len(geometry.layers) == 48
    kinds = {(layer.volume_id, layer.kind) for layer in geometry.layers}
    assert {volume for volume, kind in kinds if kind == "barrel"} == {8, 13, 17}
    assert {volume for volume, kind in kinds if kind == "disc"} == {7, 9, 12, 14, 16, 18}
    pixel_barrel = [layer.radius for layer in geometry.layers if layer.volume_id == 8]
    np.testing.assert_allclose(pixel_barrel, [32.0, 72.0, 116.0, 172.0], atol=0.1)
    discs = [layer for layer in geometry.layers if layer.volume_id == 9]
    np.testing.assert_allclose([layer.z for layer in discs], [600, 700, 820, 960, 1100, 1300, 1500], atol=0.1)
    # Pixel disc modules reach from r = 66 - 36 to about sqrt((140 + 36)^2 + 8.4^2).
    assert discs[0].r_min == pytest.approx(30.0, abs=0.1)
    assert discs[0].r_max == pytest.approx(176.2, abs=0.1)
    # Modules are sorted by (volume, layer, module) and each layer is a contiguous range.
    keys = geometry.volume_id * 10**8 + geometry.layer_id * 10**5 + geometry.module_id
    assert np.all(np.diff(keys) > 0)
    for layer in geometry.layers:
        rows = slice(layer.first_module, layer.first_module + layer.num_modules)
        assert np.all(geometry.volume_id[rows] == layer.volume_id)
        assert np.all(geometry.layer_id[rows] == layer.layer_id)
        assert np.all(geometry.module_layer[rows] == layer.index)


def test_frames_round_trip_and_match_the_file(geometry):
    rng = np.random.default_rng(0)
    modules = rng.integers(0, geometry.num_modules, 1000)
    local = rng.normal(0.0, 20.0, (1000, 3))
    points = geometry.to_global(modules, local)
    np.testing.assert_allclose(geometry.to_local(modules, points), local, atol=1e-9)
    # Local origin is the module centre; local w is the module normal (rot_?w column).
    np.testing.assert_allclose(geometry.to_global(modules, np.zeros((1000, 3))), geometry.center[modules])
    # Data row 1 of the file: volume 7 layer 2 module 1, rot_xu=0.0784591, rot_xv=-0.996917, rot_zw=-1.
    index = geometry.module_indices([7], [2], [1])[0]
    assert geometry.rotation[index, 0, 0] == pytest.approx(0.0784591, abs=2e-6)
    assert geometry.rotation[index, 0, 1] == pytest.approx(-0.996917, abs=2e-6)
    assert geometry.rotation[index, 2, 2] == pytest.approx(-1.0, abs=2e-6)
    np.testing.assert_allclose(np.einsum("nki,nkj->nij", geometry.rotation, geometry.rotation), np.broadcast_to(np.eye(3), (geometry.num_modules, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(geometry.center[index], [-65.7965, -5.1783, -1502.5])


def test_real_hits_lie_inside_their_modules(geometry, real_event):
    """The frame and trapezoid convention reproduces the real TrackML event; the flipped trapezoid does not."""
    hits, truth = real_event.hits, real_event.truth
    modules = geometry.module_indices(hits["volume_id"], hits["layer_id"], hits["module_id"])
    true_points = np.stack([truth["tx"], truth["ty"], truth["tz"]], axis=1)
    local = geometry.to_local(modules, true_points)
    assert np.all(geometry.contains(modules, local, tolerance=0.01))
    trapezoid = geometry.min_hu[modules] < geometry.max_hu[modules]
    assert trapezoid.sum() > 500
    flipped = local.copy()
    flipped[:, 1] *= -1.0
    outside = ~geometry.contains(modules[trapezoid], flipped[trapezoid], tolerance=0.01)
    assert outside.sum() > 20


def test_module_indices_reject_unknown_modules(geometry):
    index = geometry.module_indices([8, 18, 7], [2, 12, 2], [1, 98, 1])
    assert [int(i) for i in index] == [
        int(np.flatnonzero((geometry.volume_id == v) & (geometry.layer_id == l) & (geometry.module_id == m))[0])
        for v, l, m in [(8, 2, 1), (18, 12, 98), (7, 2, 1)]
    ]
    with pytest.raises(GeometryError, match="volume 8, layer 2, module 99999"):
        geometry.module_indices([8, 8], [2, 2], [1, 99999])
    with pytest.raises(GeometryError, match="volume 10"):
        geometry.module_indices([10], [2], [1])


def test_lookup_finds_the_module_of_every_real_hit(geometry, real_event):
    hits, truth = real_event.hits, real_event.truth
    modules = geometry.module_indices(hits["volume_id"], hits["layer_id"], hits["module_id"])
    points = np.stack([truth["tx"], truth["ty"], truth["tz"]], axis=1)
    candidates = geometry.candidates(geometry.module_layer[modules], points)
    assert np.all(np.any(candidates == modules[:, None], axis=1))


def _reference_surface_point(geometry, modules, points):
    """Where a straight track from the origin through ``points`` crosses their layers' reference surfaces."""
    out = np.empty_like(points)
    for i, (module, point) in enumerate(zip(modules, points)):
        layer = geometry.layers[geometry.module_layer[module]]
        if layer.kind == "barrel":
            out[i] = point * layer.radius / np.hypot(point[0], point[1])
        else:
            out[i] = point * layer.z / point[2]
    return out


def test_lookup_from_the_reference_surface_matches_brute_force(geometry):
    """Candidates at the reference crossing hold every module that the straight track crosses (brute force)."""
    rng = np.random.default_rng(1)
    modules = rng.integers(0, geometry.num_modules, 3000)
    points = geometry.sample_points(modules, rng)
    on_surface = _reference_surface_point(geometry, modules, points)
    layers = geometry.module_layer[modules]
    candidates = geometry.candidates(layers, on_surface)
    assert np.all(np.any(candidates == modules[:, None], axis=1))
    # Brute force for a subset: every module of the layer that the ray through the point crosses.
    for i in range(0, 3000, 60):
        layer = geometry.layers[layers[i]]
        everyone = np.arange(layer.first_module, layer.first_module + layer.num_modules)
        direction = points[i] / np.linalg.norm(points[i])
        normal = geometry.normal[everyone]
        s = np.einsum("ni,ni->n", normal, geometry.center[everyone]) / (normal @ direction)
        crossing = s[:, None] * direction[None, :]
        inside = geometry.contains(everyone, geometry.to_local(everyone, crossing))
        crossed = set(everyone[inside & (s > 0)].tolist())
        assert modules[i] in crossed
        assert crossed <= set(candidates[i][candidates[i] >= 0].tolist())


def test_sample_points_cover_the_active_area_uniformly(geometry):
    rng = np.random.default_rng(2)
    index = geometry.module_indices([16], [2], [1])[0]  # a long-strip trapezoid
    assert geometry.min_hu[index] < geometry.max_hu[index]
    modules = np.full(40000, index)
    points = geometry.sample_points(modules, rng)
    local = geometry.to_local(modules, points)
    assert np.all(geometry.contains(modules, local, tolerance=1e-9))
    np.testing.assert_allclose(local[:, 2], 0.0, atol=1e-9)
    a, b, hv = geometry.min_hu[index], geometry.max_hu[index], geometry.hv[index]
    middle = 0.5 * (a + b)
    upper_fraction = (middle + b) / (a + 2 * middle + b)  # area with v > 0 over the whole area
    assert np.mean(local[:, 1] > 0) == pytest.approx(upper_fraction, abs=0.01)
    assert np.abs(local[:, 1]).max() > 0.99 * hv


def test_clip_to_area_moves_points_inside(geometry):
    rng = np.random.default_rng(3)
    modules = rng.integers(0, geometry.num_modules, 500)
    u = rng.normal(0.0, 100.0, 500)
    v = rng.normal(0.0, 100.0, 500)
    cu, cv = geometry.clip_to_area(modules, u, v)
    assert np.all(geometry.contains(modules, np.stack([cu, cv, np.zeros(500)], axis=1), tolerance=1e-9))
    inside = geometry.contains(modules, np.stack([u, v, np.zeros(500)], axis=1))
    np.testing.assert_array_equal(cu[inside], u[inside])
    np.testing.assert_array_equal(cv[inside], v[inside])


# ----------------------------------------------------------------------------- bad files
def _write(tmp_path, lines, name="detectors.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def file_lines():
    return default_geometry_path().read_text().splitlines()


def test_small_valid_file_loads(tmp_path, file_lines):
    geometry = load_geometry(_write(tmp_path, file_lines[:109]))  # header and the 108 modules of one disc
    assert geometry.num_modules == 108
    assert [layer.kind for layer in geometry.layers] == ["disc"]


def test_a_compressed_or_bom_headed_file_loads_as_the_plain_one(tmp_path, file_lines):
    import gzip

    text = "\n".join(file_lines[:109]) + "\n"
    (tmp_path / "detectors.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    for name in ("detectors.csv.gz", "bom.csv"):
        geometry = load_geometry(tmp_path / name)
        assert geometry.num_modules == 108
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(text.encode())[:200])
    with pytest.raises(GeometryError, match=f"the geometry file {cut}: is a gzip file cut short"):
        load_geometry(cut)
    (tmp_path / "binary.csv").write_bytes(b"\x00\xff\xfe" * 10)
    with pytest.raises(GeometryError, match="is not UTF-8 text"):
        load_geometry(tmp_path / "binary.csv")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(GeometryError, match="does not exist"):
        load_geometry(tmp_path / "nothing.csv")


def test_missing_column_is_named(tmp_path, file_lines):
    header = file_lines[0].replace("module_hv", "module_hw")
    with pytest.raises(GeometryError, match="missing column.*module_hv"):
        load_geometry(_write(tmp_path, [header] + file_lines[1:5]))


def test_bad_number_names_column_and_row(tmp_path, file_lines):
    lines = file_lines[:6]
    fields = lines[3].split(",")
    fields[GEOMETRY_COLUMNS.index("cz")] = "abc"
    lines[3] = ",".join(fields)
    with pytest.raises(GeometryError, match=r"column 'cz', row 3: 'abc' is not a number"):
        load_geometry(_write(tmp_path, lines))


def test_wrong_field_count_names_row(tmp_path, file_lines):
    lines = file_lines[:6]
    lines[2] = lines[2] + ",1"
    with pytest.raises(GeometryError, match="row 2: 22 fields, the header has 21"):
        load_geometry(_write(tmp_path, lines))


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("module_t", "-0.15", r"column 'module_t', row 4: value -0.15 must be positive"),
        ("module_id", "1.5", r"column 'module_id', row 4: value 1.5 must be a non-negative integer"),
        ("cx", "nan", r"column 'cx', row 4: value nan must be finite"),
        ("module_minhu", "50", r"column 'module_minhu', row 4: module_minhu exceeds module_maxhu"),
        ("rot_xu", "0.5", r"row 4: the rotation rot_xu..rot_zw is not orthonormal"),
    ],
)
def test_bad_values_name_column_and_row(tmp_path, file_lines, column, value, message):
    lines = file_lines[:8]
    fields = lines[4].split(",")
    fields[GEOMETRY_COLUMNS.index(column)] = value
    lines[4] = ",".join(fields)
    with pytest.raises(GeometryError, match=message):
        load_geometry(_write(tmp_path, lines))


def test_duplicate_module_is_named(tmp_path, file_lines):
    lines = file_lines[:8] + [file_lines[3]]
    with pytest.raises(GeometryError, match=r"row 8: module \(volume 7, layer 2, module 3\) appears more than once"):
        load_geometry(_write(tmp_path, lines))


def test_header_only_and_mixed_layers_are_refused(tmp_path, file_lines):
    with pytest.raises(GeometryError, match="no module rows"):
        load_geometry(_write(tmp_path, file_lines[:1]))
    barrel_row = next(line for line in file_lines[1:] if line.startswith("8,2,"))
    disc_row = file_lines[1].split(",")
    disc_row[:3] = ["8", "2", "99999"]
    with pytest.raises(GeometryError, match="volume 8 layer 2 mixes"):
        load_geometry(_write(tmp_path, [file_lines[0], barrel_row, ",".join(disc_row)]))
