"""pipeline.json values that parse but contradict the networks or cannot work are refused
by ``load_bundle`` with the problem named (not later, in the runtime or an export)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trackserve.bundle import PIPELINE_FILE, load_bundle
from trackserve.errors import BundleError

from .test_bundle import _edit, _refused

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture
def default_copy(tmp_path) -> Path:
    """A copy of the shipped bundle (its networks record the feature columns and scales they read)."""
    target = tmp_path / "bundle"
    shutil.copytree(DEFAULT, target)
    return target


def _edited(directory: Path, change) -> str:
    """The message refusing the bundle at ``directory`` once ``change`` edited its pipeline.json."""
    _edit(directory, change)
    return _refused(directory)


def _set_stage(**values):
    return lambda data: data["stages"].update(values)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["features"].update(names=["z", "phi", "r"]),
         "networks.embedding.config.derived_eta: the network reads r from column 0, which the bundle's features "
         "name 'z'"),
        (lambda d: d["features"]["scales"].__setitem__(0, 1000.0),
         "networks.filter.config.pair_geometry.r_scale: 3000.0, but features.scales gives r the scale 1000.0"),
        (lambda d: d["features"]["scales"].__setitem__(1, 1.0),
         "networks.gnn.config.period: 2.0, but phi's scale 1.0 makes its period 6.28"),
        (lambda d: d["features"]["scales"].__setitem__(2, -400.0),
         "features.scales: [3000.0, 3.141592653589793, -400.0] is not a list of finite positive numbers"),
        (lambda d: d["features"].update(names=["r", "phi", "foo"]),
         "features.names: unknown feature name(s) ['foo']; the features trackserve computes are"),
        (lambda d: d["features"].update(names=["R", "PHI", "Z"]), "unknown feature name(s) ['R', 'PHI', 'Z']"),
        (lambda d: d["networks"]["pruner"]["config"].update(in_channels=4),
         "networks.pruner.config.in_channels: 4, but the bundle has 3 features"),
        (lambda d: d["networks"]["filter"]["config"].update(periodic_features=[2]),
         "networks.filter.config.periodic_features: column 2 is 'z', not 'phi'"),
        (_set_stage(radius=1e300), "stages.radius: 1e+300 is out of range"),
        (_set_stage(radius=1e-300), "stages.radius: 1e-300 is out of range"),
        (_set_stage(filter_cut=1), "stages.filter_cut: 1 keeps no edge"),
        (_set_stage(gnn_cut=1.0), "stages.gnn_cut: 1 keeps no edge"),
        (lambda d: d.update(schema_version="1"), "schema_version: '1' is not an integer"),
        (lambda d: d.update(schema_version=1.0), "schema_version: 1.0 is not an integer"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 40 else None,
)
def test_contradictions_and_impossible_values_are_refused(default_copy, change, expected):
    assert expected in _edited(default_copy, change)


def test_the_shipped_bundle_is_consistent():
    load_bundle(DEFAULT)


def test_an_integer_too_long_to_convert_is_a_bundle_error(default_copy):
    path = default_copy / PIPELINE_FILE
    path.write_text(path.read_text().replace('"max_neighbours": 48', '"max_neighbours": ' + "9" * 5000))
    with pytest.raises(BundleError, match="is not a valid pipeline file: .*digits"):
        load_bundle(default_copy)


def test_json_nested_too_deeply_is_a_bundle_error(default_copy):
    (default_copy / PIPELINE_FILE).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        load_bundle(default_copy)


def test_a_directory_named_pipeline_json_is_named_as_such(tmp_path):
    (tmp_path / PIPELINE_FILE).mkdir()
    with pytest.raises(BundleError, match="pipeline.json is a directory"):
        load_bundle(tmp_path)


def test_an_unknown_stage_key_does_not_hide_the_other_stage_problems(default_copy):
    message = _edited(default_copy, _set_stage(foo=1, prune_cut=0.99))
    assert "stages: unknown key(s) 'foo'" in message
    assert "stages.prune_cut: 0.99 is above gnn_cut 0.95" in message
