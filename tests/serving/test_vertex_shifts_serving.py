"""Vertex shifts in serving: the repository's custom model carries them, the backend runs them,
the ensemble refuses them, and ``client --check`` runs the local runtime as the server does (no server needed)."""

from __future__ import annotations

import numpy as np
import pytest

from trackserve.cli import main
from trackserve.errors import InputError
from trackserve.runtime.config import RuntimeConfig
from trackserve.runtime.pipeline import Pipeline
from trackserve.serving import backend
from trackserve.serving.backend import PipelineModel, StageModel
from trackserve.serving.client import TritonClient
from trackserve.serving.repository import RepositoryOptions, write_repository

from .test_backend import args_for
from .test_repository import parameters, parse_config


def _parameters(config_path) -> dict:
    """The ``parameters`` of a written config.pbtxt, parsed by Triton's own ModelConfig message."""
    return parameters(parse_config(config_path))


def test_the_custom_model_carries_the_shifts(tiny_bundle, tmp_path):
    write_repository(tiny_bundle, tmp_path / "repo", RepositoryOptions(vertex_shifts=(50, -50, 0, 123.4567, 1e-7)))
    text = _parameters(tmp_path / "repo" / "exatrkx" / "config.pbtxt")["vertex_shifts"]
    assert backend.runtime_config({"vertex_shifts": text}).vertex_shifts == (-50.0, 0.0, 1e-7, 50.0, 123.4567)  # exact
    write_repository(tiny_bundle, tmp_path / "plain", RepositoryOptions())
    assert "vertex_shifts" not in _parameters(tmp_path / "plain" / "exatrkx" / "config.pbtxt")
    write_repository(tiny_bundle, tmp_path / "one", RepositoryOptions(vertex_shifts=(0,)))  # one pass, said so
    assert _parameters(tmp_path / "one" / "exatrkx" / "config.pbtxt")["vertex_shifts"] == "0.0"


@pytest.mark.parametrize("options, message", [
    (dict(layout="ensemble", vertex_shifts=(-50, 0, 50)), "only the custom model does"),
    (dict(layout="both", vertex_shifts=(-50, 0, 50)), "no vertex shifts for layout both"),
    (dict(vertex_shifts=(0, 900)), "not a finite number within 500 mm"),
    (dict(vertex_shifts="0,50"), "sequence of numbers"),
])
def test_bad_shift_options_are_refused(options, message):
    with pytest.raises(InputError, match="^invalid model repository option: ") as error:  # one problem: one line
        RepositoryOptions(**options)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert RepositoryOptions(layout="ensemble", vertex_shifts=(0,)).vertex_shifts == (0.0,)  # one pass is no shift


def test_the_command_writes_the_shifts(tiny_bundle, tmp_path, capsys):
    assert main(["triton-repo", str(tmp_path / "repo"), "--bundle", str(tiny_bundle),
                 "--vertex-shifts=-60,0,60"]) == 0
    assert _parameters(tmp_path / "repo" / "exatrkx" / "config.pbtxt")["vertex_shifts"] == "-60.0,0.0,60.0"
    assert main(["triton-repo", str(tmp_path / "bad"), "--bundle", str(tiny_bundle), "--layout", "ensemble",
                 "--vertex-shifts=-60,0,60"]) != 0
    assert "use layout custom (--layout custom)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_the_served_model_runs_the_shifts(tiny_bundle, sample_features):
    model = PipelineModel.from_args(args_for(tiny_bundle, intra_op_threads=1, graph_threads=1,
                                             vertex_shifts="-50,0,50"))
    assert model.pipeline.config.vertex_shifts == (-50.0, 0.0, 50.0)
    local = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1, vertex_shifts=(-50, 0, 50)))
    features = sample_features[:2000]
    np.testing.assert_array_equal(model({"FEATURES": features})["LABELS"], local.run(features).labels)
    assert backend.runtime_config({"vertex_shifts": " "}).vertex_shifts is None
    with pytest.raises(InputError, match="model parameter 'vertex_shifts' takes comma-separated numbers .* 'x'"):
        backend.runtime_config({"vertex_shifts": "-50,x"})


def test_a_stage_model_refuses_shifts(tiny_bundle):
    with pytest.raises(InputError, match="only the custom model runs an event once per vertex shift"):
        StageModel.from_args(args_for(tiny_bundle, stage="gnn", vertex_shifts="-50,0,50"))


def test_client_reads_the_served_shifts(monkeypatch):
    client = TritonClient.__new__(TritonClient)
    client.model = "exatrkx"
    served = {}
    monkeypatch.setattr(TritonClient, "_config_parameter", lambda self, key: served.get(key))
    assert client.served_vertex_shifts() is None
    served["vertex_shifts"] = "-50,0,50"
    assert client.served_vertex_shifts() == (-50.0, 0.0, 50.0)
    served["vertex_shifts"] = "a"
    with pytest.raises(InputError, match="model 'exatrkx''s parameter 'vertex_shifts'"):
        client.served_vertex_shifts()


def test_a_bundle_with_shifts_is_served_by_the_custom_model_only(tiny_bundle, tmp_path):
    from ..conftest import copy_with_stages

    shifted = copy_with_stages(tiny_bundle, tmp_path / "shifted", vertex_shifts=[-50, 0, 50])
    with pytest.raises(InputError, match=r"runs each event at vertex shifts -50.0,0.0,50.0 mm .* use --layout custom"):
        write_repository(shifted, tmp_path / "repo", RepositoryOptions(layout="both"))
    assert not (tmp_path / "repo").exists()
    write_repository(shifted, tmp_path / "custom", RepositoryOptions())
    assert "vertex_shifts" not in _parameters(tmp_path / "custom" / "exatrkx" / "config.pbtxt")  # the bundle's own
    model = PipelineModel.from_args(args_for(shifted, intra_op_threads=1, graph_threads=1))
    assert model.pipeline.vertex_shifts == (-50.0, 0.0, 50.0)
    one_pass = PipelineModel.from_args(args_for(shifted, intra_op_threads=1, graph_threads=1, vertex_shifts="0"))
    assert one_pass.pipeline.vertex_shifts is None
    with pytest.raises(InputError, match=r"runs each event at vertex shifts -50, 0, 50 mm .* serve it as the custom"):
        StageModel.from_args(args_for(shifted, stage="embed"))


def test_a_bundle_changed_in_memory_is_not_copied_as_if_it_were_its_directory(tiny_bundle, tmp_path):
    import dataclasses

    from trackserve.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    changed = dataclasses.replace(bundle, stages=dataclasses.replace(bundle.stages, vertex_shifts=(-50.0, 50.0)))
    with pytest.raises(InputError, match="differs from its directory .* save it first"):
        write_repository(changed, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()
    write_repository(bundle, tmp_path / "same")  # a Bundle as loaded is fine
