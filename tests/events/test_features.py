"""Hit features: the spec, its presets and parser, and the computed values against references."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from trackserve.errors import BundleError, EventFormatError, InputError
from trackserve.events.event import HITS_COLUMNS, empty_table
from trackserve.events.features import (
    EXATRKX_SERVICE,
    FEATURE_PRESETS,
    KNOWN_FEATURES,
    TRACKML_1000,
    FeatureSpec,
    beyond_detector,
    feature_spec,
    hit_features,
)
from trackserve.events.trackml import read_event, read_feature_csv

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared" / "data"


def hits_of(points) -> dict:
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return {"hit_id": np.arange(1, len(points) + 1), "x": points[:, 0], "y": points[:, 1], "z": points[:, 2]}


def test_presets():
    assert EXATRKX_SERVICE == FeatureSpec(("r", "phi", "z"), (3000.0, math.pi, 400.0))
    assert TRACKML_1000 == FeatureSpec(("r", "phi", "z"), (1000.0, math.pi, 1000.0))
    assert FEATURE_PRESETS == {"exatrkx-service": EXATRKX_SERVICE, "trackml-1000": TRACKML_1000}
    assert EXATRKX_SERVICE.num_features == 3


def test_spec_is_frozen_and_normalised():
    spec = FeatureSpec(["r", "z"], [1000, 400])
    assert spec.names == ("r", "z") and spec.scales == (1000.0, 400.0)
    assert isinstance(spec.scales[0], float)
    with pytest.raises(AttributeError):
        spec.names = ("x",)
    assert hash(spec) == hash(FeatureSpec(("r", "z"), (1000.0, 400.0)))


@pytest.mark.parametrize(
    "names,scales,fragment",
    [
        ((), (), "at least one"),
        (("r", "phi"), (1.0,), "but 1 scales"),
        (("r", "rho"), (1.0, 1.0), "unknown feature name(s) ['rho']"),
        (("r", "r"), (1.0, 1.0), "repeat"),
        (("r",), (0.0,), "finite and positive"),
        (("r",), (math.inf,), "finite and positive"),
        (("r",), (math.nan,), "finite and positive"),
        (("r", "z"), (1000.0, -400.0), "finite and positive"),
        ("rz", (1.0, 1.0), "not a string: got 'rz'"),  # was read as the names ('r', 'z')
        (("r", "z"), "12", "not a string: got ('r', 'z') and '12'"),  # was read as the scales (1.0, 2.0)
        (("r",), None, "got names ('r',) and scales None"),  # was a bare TypeError
        (("r",), ("wide",), "a sequence of numbers"),
    ],
)
def test_invalid_specs(names, scales, fragment):
    with pytest.raises(ValueError) as error:
        FeatureSpec(names, scales)
    assert fragment in str(error.value)


def test_dict_round_trip_through_json():
    for spec in (EXATRKX_SERVICE, TRACKML_1000, FeatureSpec(("x", "y", "z", "eta"), (1.0, 2.0, 3.0, 4.0))):
        data = json.loads(json.dumps(spec.to_dict()))
        assert data == {"names": list(spec.names), "scales": list(spec.scales)}
        assert FeatureSpec.from_dict(data) == spec


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"names": ["r"]}, "keys 'names' and 'scales'"),
        ({"names": ["r"], "scales": [1.0], "extra": 1}, "keys 'names' and 'scales'"),
        ([1, 2], "keys 'names' and 'scales'"),
        ({"names": "r", "scales": [1.0]}, "features.names must be a list of strings"),
        ({"names": ["r"], "scales": ["1"]}, "features.scales must be a list of numbers"),
        ({"names": ["r"], "scales": [True]}, "features.scales must be a list of numbers"),
        ({"names": ["r", "q"], "scales": [1.0, 2.0]}, "unknown feature name"),
        ({"names": ["r"], "scales": [0]}, "finite and positive"),
    ],
)
def test_from_dict_errors(data, fragment):
    with pytest.raises(BundleError) as error:
        FeatureSpec.from_dict(data)
    assert fragment in str(error.value)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("exatrkx-service", EXATRKX_SERVICE),
        ("EXATRKX_SERVICE", EXATRKX_SERVICE),
        ("trackml_1000", TRACKML_1000),
        ("3000,pi,400", EXATRKX_SERVICE),
        (" 1000 , PI , 1e3 ", TRACKML_1000),
        ("r:3000,phi:pi,z:400", EXATRKX_SERVICE),
        ("z:2,eta:1", FeatureSpec(("z", "eta"), (2.0, 1.0))),
        ("phi:3.141592653589793,r:1", FeatureSpec(("phi", "r"), (math.pi, 1.0))),
        ("3000,+PI,400", FeatureSpec(("r", "phi", "z"), (3000.0, math.pi, 400.0))),
    ],
)
def test_feature_spec_parser(text, expected):
    assert feature_spec(text) == expected
    assert feature_spec(expected) is expected


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("nonsense", "could not convert"),
        ("1000,pi", "without names give 3"),
        ("r:1000,pi,z:3", "for every scale or for none"),
        ("r:1000,q:2", "unknown feature name"),
        ("0,pi,400", "finite and positive"),
        ("", "invalid feature spec"),
        ("r:1000,phi:pi,z:1000,", "item 4 of 4 is empty (a stray comma?)"),  # was "a name for every scale"
        ("3000,,400", "item 2 of 3 is empty"),
        ("3000,-pi,400", "finite and positive"),  # QA, 2026-12-02: "could not convert string to float: '-pi'"
    ],
)
def test_feature_spec_parser_errors(text, fragment):
    with pytest.raises(InputError) as error:
        feature_spec(text)
    message = str(error.value)
    assert fragment in message and "exatrkx-service" in message


def reference_features(hits, spec):
    """Per-hit, per-feature reference with the math module."""
    functions = {
        "r": lambda x, y, z: math.hypot(x, y),
        "phi": lambda x, y, z: math.atan2(y, x),
        "z": lambda x, y, z: z,
        "x": lambda x, y, z: x,
        "y": lambda x, y, z: y,
        "eta": lambda x, y, z: math.asinh(z / math.hypot(x, y)),
    }
    rows = []
    for x, y, z in zip(hits["x"].tolist(), hits["y"].tolist(), hits["z"].tolist()):
        rows.append([functions[name](x, y, z) / scale for name, scale in zip(spec.names, spec.scales)])
    return np.array(rows, dtype=np.float32).reshape(-1, spec.num_features)


@pytest.mark.parametrize(
    "spec", [EXATRKX_SERVICE, TRACKML_1000, FeatureSpec(("z", "eta", "x", "y", "phi", "r"), (1.0, 2.0, 3.0, 4.0, 5.0, 6.0))]
)
def test_features_of_the_real_event_match_the_reference(spec):
    hits = read_event(REPO / "data", parts=()).hits
    features = hit_features(hits, spec)
    assert features.dtype == np.float32 and features.shape == (5527, spec.num_features)
    np.testing.assert_allclose(features, reference_features(hits, spec), rtol=1e-6, atol=1e-7)


def test_phi_branch_and_axis_points():
    hits = hits_of([[-10.0, 0.0, 0.0], [-10.0, -1e-300, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 3.0], [3.0, 4.0, -8.0]])
    features = hit_features(hits, FeatureSpec(("r", "phi", "z"), (1.0, math.pi, 1.0)))
    np.testing.assert_allclose(
        features, [[10, 1, 0], [10, -1, 0], [5, 0.5, 1], [0, 0, 3], [5, math.atan2(4, 3) / math.pi, -8]], rtol=1e-7
    )


def test_empty_and_one_hit():
    empty = hit_features(empty_table(HITS_COLUMNS), EXATRKX_SERVICE)
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    one = hit_features(hits_of([[30.0, 40.0, 800.0]]), EXATRKX_SERVICE)
    np.testing.assert_allclose(one, [[50 / 3000, math.atan2(40, 30) / math.pi, 2.0]], rtol=1e-7)


def test_non_finite_feature_names_the_hit():
    hits = hits_of([[1.0, 1.0, 1.0], [0.0, 0.0, 5.0]])
    del hits["hit_id"]
    with pytest.raises(EventFormatError) as error:
        hit_features(hits, FeatureSpec(("r", "eta"), (1.0, 1.0)))
    assert error.value.row == 2 and error.value.column is None  # a feature, not a column of the file
    assert str(error.value) == "row 2: feature eta is inf (from x=0, y=0, z=5 mm)"
    # a TrackML hits table (rows perhaps in another order than its file's): the hit by its hit_id
    hits = {**hits_of([[1.0, 1.0, np.nan]]), "hit_id": np.array([7])}
    with pytest.raises(EventFormatError, match=r"^the hit with hit_id 7: feature z is nan"):
        hit_features(hits, EXATRKX_SERVICE)


def test_missing_coordinates():
    with pytest.raises(EventFormatError, match="no column.s. z"):
        hit_features({"x": np.zeros(2), "y": np.zeros(2)}, EXATRKX_SERVICE)
    assert set(KNOWN_FEATURES) == {"r", "phi", "z", "x", "y", "eta"}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder {SHARED} is absent")
def test_exatrkx_service_scales_match_its_reference_event():
    """The service's input features, unscaled with r*3000, z*400, span the TrackML detector.

    The reference event's innermost hits lie on the first pixel barrel layer and its
    outermost z on the last strip end-cap disks, exactly where the real sample event's do.
    """
    reference = read_feature_csv(SHARED / "exatrkx_service" / "reference_event" / "in_e1000.csv", num_features=3)
    hits = read_event(REPO / "data", parts=()).hits
    ours = hit_features(hits, EXATRKX_SERVICE)
    for features in (reference, ours):
        r, phi, z = features.T.astype(np.float64) * np.array([[3000.0], [1.0], [400.0]])
        assert 29.0 < r.min() < 34.0  # first pixel layer, about 32 mm
        assert 1000.0 < r.max() < 1030.0  # outer long-strip layer, about 1020 mm
        assert abs(np.abs(z).max() - 2955.5) < 1.0  # outer strip end-cap disks
        assert -1.0 <= phi.min() < -0.9 and 0.9 < phi.max() <= 1.0
    # The other preset would put the reference event's hits inside the beam pipe.
    assert reference[:, 0].min() * TRACKML_1000.scales[0] < 12.0


@pytest.mark.parametrize("x, y, z", [(1.0, 2.0, 1e300), (2e42, 2e42, 1.0)])
def test_features_beyond_float32_are_named_without_numpy_warnings(x, y, z):
    import warnings

    hits = {"hit_id": np.array([1, 2]), "x": np.array([30.0, x]), "y": np.array([40.0, y]), "z": np.array([5.0, z])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning would fail here before the named error
        with pytest.raises(EventFormatError, match=r"the hit with hit_id 2: feature [rz] is inf .*, beyond float32"):
            hit_features(hits, FeatureSpec(("r", "phi", "z"), (1000.0, math.pi, 1000.0)))


def test_hit_columns_of_other_lengths_are_refused_not_broadcast():
    with pytest.raises(EventFormatError, match=r"column y of the hits table has shape \[1\]; every column must be 1-D"):
        hit_features({"x": np.array([30.0, 40.0]), "y": np.array([40.0]), "z": np.array([10.0, 20.0])})
    for text in (["a", "b"], ["1.0", "2.0"]):  # text, even of numbers, is no coordinate
        with pytest.raises(EventFormatError, match="column 'x': the hits' x, y and z must be real numbers, not <U"):
            hit_features({"x": np.array(text), "y": np.array([1.0, 2.0]), "z": np.array([1.0, 2.0])})
    with pytest.raises(EventFormatError, match="column 'y': the hits' x, y and z must be real numbers, not complex128"):
        hit_features({"x": np.array([1.0, 2.0]), "y": np.array([1.0, 2.0 + 1j]), "z": np.array([1.0, 2.0])})
    for objects, named in (([1.0, 2j], "complex"), (["100", "200"], "str"), ([1.0, None], "NoneType")):
        with pytest.raises(EventFormatError, match=f"the hits' x, y and z must be real numbers, not {named} values"):
            hit_features({"x": np.array(objects, dtype=object), "y": np.array([1.0, 2.0]), "z": np.array([1.0, 2.0])})
    objects = hit_features({"x": np.array([30.0, 40.0], dtype=object), "y": np.array([40.0, 30.0]),
                            "z": np.array([1.0, 2.0])})  # a pandas object column of floats still reads
    np.testing.assert_allclose(objects[:, 0], [50 / 3000, 50 / 3000], rtol=1e-6)


def test_a_spec_given_by_its_name_is_named_as_such():
    from trackserve.errors import InputError

    hits = {"x": np.array([1.0]), "y": np.array([2.0]), "z": np.array([3.0])}
    with pytest.raises(InputError, match="spec must be a FeatureSpec, got str 'exatrkx-service': .*feature_spec"):
        hit_features(hits, "exatrkx-service")


def test_beyond_detector_checks_its_inputs_and_names_nan():
    inside = np.array([[0.1, 0.2, 0.3], [0.2, -0.5, 0.1]], np.float32)  # r/3000, phi/pi, z/400
    assert beyond_detector(inside, EXATRKX_SERVICE) is None
    with_nan = inside.copy()
    with_nan[1, 0] = np.nan  # was reported as within reach
    assert "r is NaN for 1 hit(s)" in beyond_detector(with_nan, EXATRKX_SERVICE)
    for features in (inside[:, :2], np.hstack([inside, inside]), inside[0]):  # IndexError, or extra columns ignored
        with pytest.raises(InputError, match=r"needs features as a numeric \[N, 3\] array \(r, phi, z\)"):
            beyond_detector(features, EXATRKX_SERVICE)
    assert beyond_detector(inside.tolist(), EXATRKX_SERVICE) is None
    with pytest.raises(InputError, match="needs a FeatureSpec"):
        beyond_detector(inside, "exatrkx-service")


@pytest.mark.parametrize("hits,message", [
    ({"x": 1.0, "y": 2.0, "z": 3.0}, "column 'x' of a table is a single value"),
    ([[1.0, 2.0, 3.0]], "hits must be a table"),
])
def test_hits_that_are_no_table_are_named(hits, message):
    with pytest.raises(InputError, match=message):
        hit_features(hits, EXATRKX_SERVICE)


def test_a_structured_array_is_a_table_of_its_fields():
    points = np.array([(1.0, 2.0, 3.0), (40.0, -5.0, 60.0)], dtype=[("x", "f8"), ("y", "f8"), ("z", "f8")])
    np.testing.assert_array_equal(hit_features(points, EXATRKX_SERVICE),
                                  hit_features({name: points[name] for name in "xyz"}, EXATRKX_SERVICE))
