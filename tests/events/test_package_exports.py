"""The names the README lists under ``trackserve.events`` import from the package itself."""

from __future__ import annotations

import importlib

import pytest

import trackserve.events as events


@pytest.mark.parametrize("name", events.__all__)
def test_each_public_name_is_its_modules_object(name):
    module = importlib.import_module(f"trackserve.events.{events._EXPORTS[name]}")
    assert getattr(events, name) is getattr(module, name)


def test_the_readme_examples_import():
    from trackserve.events import EXATRKX_SERVICE, TRACKML_1000, hit_features, read_event  # noqa: F401

    assert EXATRKX_SERVICE.scales[0] == 3000.0 and TRACKML_1000.scales[0] == 1000.0


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'read_evnet'"):
        events.read_evnet  # noqa: B018
    with pytest.raises(ImportError):
        from trackserve.events import read_evnet  # noqa: F401
