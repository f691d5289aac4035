"""The Python-backend model logic with a stand-in for ``triton_python_backend_utils`` (no server needed).

Checks what Triton's stub would see: exactly one response per request, in order, each
event computed on its own, an error response with a clear message for a bad request
that leaves the other requests of the same ``execute`` call untouched.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types

import numpy as np
import pytest

from trackserve.errors import InputError
from trackserve.serving import backend
from trackserve.serving.backend import PipelineModel, StageModel, respond
from trackserve.serving.triton_models import PIPELINE_MODEL, STAGE_MODEL


class FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class FakeError:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error


def fake_pb_utils():
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.TritonError, module.InferenceResponse = FakeTensor, FakeError, FakeResponse
    module.get_input_tensor_by_name = lambda request, name: request.get(name)
    return module


def request(features=None, **others):
    tensors = {} if features is None else {"FEATURES": FakeTensor("FEATURES", features)}
    tensors.update({name: FakeTensor(name, value) for name, value in others.items()})
    return tensors


def args_for(bundle, *, kind="CPU", **parameters):
    config = {"parameters": {key: {"string_value": str(value)} for key, value in {"bundle": bundle, **parameters}.items()}}
    return {"model_config": json.dumps(config), "model_instance_kind": kind, "model_repository": "/nowhere/model"}


@pytest.fixture(scope="module")
def pipeline_model(tiny_bundle):
    return PipelineModel.from_args(args_for(tiny_bundle, intra_op_threads=1, graph_threads=1))


def test_one_response_per_request_in_order_bad_ones_isolated(pipeline_model, tiny_pipeline, sample_features):
    pb = fake_pb_utils()
    a, b = sample_features[:800], sample_features[2000:3500]
    nan = a.copy()
    nan[5, 2] = np.inf
    requests = [
        request(a),
        request(),  # no FEATURES
        request(a.astype(np.float64)),
        request(np.ascontiguousarray(a[:, :2])),
        request(nan),
        request(np.zeros((0, 3), np.float32)),
        request(b),
    ]
    responses = respond(pb, requests, pipeline_model)
    assert len(responses) == len(requests)
    np.testing.assert_array_equal(responses[0].output_tensors[0].array, tiny_pipeline.run(a).labels)
    np.testing.assert_array_equal(responses[6].output_tensors[0].array, tiny_pipeline.run(b).labels)
    assert responses[0].error is None and responses[6].error is None
    assert responses[0].output_tensors[0].name == "LABELS"
    errors = [responses[i].error for i in (1, 2, 3, 4)]
    assert all(error.code == "INVALID_ARG" for error in errors)
    assert "no input 'FEATURES'" in errors[0].message
    assert "must be FP32" in errors[1].message and "float64" in errors[1].message
    assert "must have shape [-1, 3], got [800, 2]" in errors[2].message
    assert "hit 5" in errors[3].message and "inf" in errors[3].message
    empty = responses[5]
    assert empty.error is None and empty.output_tensors[0].array.shape == (0,)
    assert empty.output_tensors[0].array.dtype == np.int64


def test_an_event_beyond_the_memory_limit_is_refused_with_what_a_client_can_do(tiny_bundle, sample_features):
    # QA, 2026-12-02: a remote client was told to raise RuntimeConfig.memory_limit_bytes, a
    # setting of the server's model it cannot reach
    model = PipelineModel.from_args(args_for(tiny_bundle, intra_op_threads=1, graph_threads=1,
                                             memory_limit_bytes=2**20))
    (response,) = respond(fake_pb_utils(), [request(sample_features)], model)
    assert response.error.code == "INVALID_ARG"
    message = response.error.message
    assert message.startswith("bad request: an event of ") and "more than the memory limit of 1.00 MiB" in message
    assert message.endswith("split the event, or have the model repository written with a higher limit (trackserve "
                            "triton-repo --memory-limit-gb)")
    assert "RuntimeConfig" not in message


def test_a_crash_fails_its_request_only_and_is_logged():
    pb = fake_pb_utils()
    logged = []

    class Flaky(backend.ServedModel):
        inputs = ()

        def __call__(self, arrays):
            raise RuntimeError("boom")

    responses = respond(pb, [request(), request()], Flaky(), logged.append)
    assert [r.error.code for r in responses] == ["INTERNAL", "INTERNAL"]
    assert "internal error: RuntimeError: boom" in responses[0].error.message
    assert len(logged) == 2 and "Traceback" in logged[0]


def test_a_request_its_client_cancelled_is_not_run(pipeline_model, tiny_pipeline, sample_features):
    pb = fake_pb_utils()
    pb.TritonError.CANCELLED = "CANCELLED"

    class Request(dict):
        def __init__(self, tensors, cancelled):
            super().__init__(tensors)
            self.cancelled = cancelled

        def is_cancelled(self):
            return self.cancelled

    ran = []

    class Counting(backend.ServedModel):
        inputs, outputs = pipeline_model.inputs, pipeline_model.outputs

        def __call__(self, arrays):
            ran.append(arrays["FEATURES"].shape[0])
            return pipeline_model(arrays)

    a = sample_features[:300]
    responses = respond(pb, [Request(request(a), True), Request(request(a[:100]), False)], Counting())
    assert ran == [100]  # the cancelled event was never computed
    assert responses[0].error.code == "CANCELLED" and "cancelled by its client" in responses[0].error.message
    assert responses[1].error is None
    np.testing.assert_array_equal(responses[1].output_tensors[0].array, tiny_pipeline.run(a[:100]).labels)
    # a backend without is_cancelled (before python_backend 23.10) runs every request
    assert respond(pb, [request(a[:50])], Counting())[0].error is None and ran == [100, 50]


def test_a_model_refuses_to_load_with_numpy_2(tiny_bundle, monkeypatch):
    from trackserve.errors import BackendUnavailableError

    monkeypatch.setattr(backend.np, "__version__", "2.1.0")  # its tensors would arrive empty or wrong
    with pytest.raises(BackendUnavailableError, match="needs numpy < 2"):
        PipelineModel.from_args(args_for(tiny_bundle))


def test_config_parameters_reach_the_runtime(tiny_bundle):
    model = PipelineModel.from_args(args_for(tiny_bundle, intra_op_threads=1, graph_threads=2, edge_chunk_size=5000))
    config = model.pipeline.config
    assert (config.intra_op_threads, config.graph_threads, config.edge_chunk_size) == (1, 2, 5000)
    assert [s.name for s in model.inputs] == ["FEATURES"] and model.inputs[0].dims == (-1, 3)


@pytest.mark.parametrize("groups, cores, expected", [
    (None, 8, (None, None)),  # no instance groups: one instance, the runtime's default (all cores)
    ([{"kind": "KIND_CPU", "count": 1}], 8, (None, None)),
    ([{"kind": "KIND_CPU", "count": 2}], 8, (4, 4)),
    ([{"kind": "KIND_CPU", "count": 3}], 8, (2, 2)),
    ([{"kind": "KIND_CPU", "count": 2}, {"kind": "KIND_CPU", "count": 2}], 8, (2, 2)),
    ([{"kind": "KIND_CPU", "count": 16}], 8, (1, 1)),  # never fewer than one thread
    ([{"kind": "KIND_GPU", "count": 2, "gpus": [0, 1]}], 8, (2, 2)),  # count per GPU
])
def test_unset_threads_share_the_cores_among_the_instances(monkeypatch, groups, cores, expected):
    monkeypatch.setattr(backend, "available_cores", lambda: cores)
    config = {} if groups is None else {"instance_group": groups}
    runtime = backend.runtime_config({}, backend.instance_count(config))
    assert (runtime.intra_op_threads, runtime.graph_threads) == expected


def test_threads_set_in_the_config_win_over_the_share(tiny_bundle, monkeypatch):
    monkeypatch.setattr(backend, "available_cores", lambda: 8)
    config = {"parameters": {"bundle": {"string_value": str(tiny_bundle)}, "intra_op_threads": {"string_value": "3"}},
              "instance_group": [{"kind": "KIND_CPU", "count": 4, "gpus": []}]}
    model = PipelineModel.from_args({"model_config": json.dumps(config), "model_instance_kind": "CPU",
                                     "model_repository": "/nowhere/model"})
    assert (model.pipeline.config.intra_op_threads, model.pipeline.config.graph_threads) == (3, 2)
    with pytest.raises(InputError, match="instance_group count must be a whole number, got -1"):
        backend.instance_count({"instance_group": [{"count": -1}]})


def test_relative_bundle_is_found_from_the_repository_root(tiny_bundle):
    args = args_for(tiny_bundle.name)
    args["model_repository"] = str(tiny_bundle.parent / "exatrkx")
    assert backend.bundle_path(args, backend.model_parameters(json.loads(args["model_config"]))) == tiny_bundle


def test_bad_configs_are_refused_with_the_reason(tiny_bundle):
    with pytest.raises(InputError, match="device 'cuda' is not supported"):
        PipelineModel.from_args(args_for(tiny_bundle, kind="GPU"))
    with pytest.raises(InputError, match="parameter 'intra_op_threads' must be an integer, got 'two'"):
        PipelineModel.from_args(args_for(tiny_bundle, intra_op_threads="two"))
    with pytest.raises(InputError, match="no parameter 'stage'"):
        StageModel.from_args(args_for(tiny_bundle))
    args = args_for(tiny_bundle)
    args["model_config"] = json.dumps({"parameters": {}})
    with pytest.raises(InputError, match="no parameter 'bundle'"):
        PipelineModel.from_args(args)


def test_the_shipped_model_file_drives_the_pipeline(tiny_bundle, tiny_pipeline, sample_features, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location("trackserve_pipeline_model_under_test", PIPELINE_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(args_for(tiny_bundle, intra_op_threads=1, graph_threads=1))
    responses = model.execute([request(sample_features), request(sample_features[:0])])
    np.testing.assert_array_equal(responses[0].output_tensors[0].array, tiny_pipeline.run(sample_features).labels)
    assert responses[1].output_tensors[0].array.shape == (0,)


def test_numpy_2_is_refused_where_models_are_served():
    from trackserve.errors import BackendUnavailableError
    from trackserve.serving.backend import check_served_numpy

    check_served_numpy("1.26.4")
    with pytest.raises(BackendUnavailableError, match=r"numpy 2.4.6 is installed where the models are served, but "
                                                      r"tritonserver's Python backend .* needs numpy < 2"):
        check_served_numpy("2.4.6")


def test_a_config_that_no_longer_fits_its_bundle_is_refused_at_load(tiny_bundle, tmp_path):
    # Both loaded and answered before: a changed bundle made `client --check` blame the wrong bundle,
    # and dims edited in config.pbtxt had the server ready while it refused every request.
    from trackserve.bundle import file_sha256

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    recorded = file_sha256(bundle / "pipeline.json")
    declared = {"input": [{"name": "FEATURES", "data_type": "TYPE_FP32", "dims": ["-1", "3"]}],
                "output": [{"name": "LABELS", "data_type": "TYPE_INT64", "dims": ["-1"]}]}

    def args(sha256=recorded, **tensors):
        config = json.loads(args_for(bundle, intra_op_threads=1, graph_threads=1, pipeline_sha256=sha256)["model_config"])
        config.update(declared, **tensors)
        return {"model_config": json.dumps(config), "model_instance_kind": "CPU", "model_repository": "/nowhere/m"}

    assert PipelineModel.from_args(args()).inputs[0].dims == (-1, 3)  # what triton-repo writes loads
    with pytest.raises(InputError, match="declares input 'FEATURES' as TYPE_FP32 \\[-1, 4\\], but the bundle .* gives "
                                         "TYPE_FP32 \\[-1, 3\\]; write the repository again"):
        PipelineModel.from_args(args(input=[{"name": "FEATURES", "data_type": "TYPE_FP32", "dims": [-1, 4]}]))
    with pytest.raises(InputError, match="declares output 'LABELS' as TYPE_INT32"):
        PipelineModel.from_args(args(output=[{"name": "LABELS", "data_type": "TYPE_INT32", "dims": [-1]}]))
    with pytest.raises(InputError, match="declares no input 'FEATURES'"):
        PipelineModel.from_args(args(input=[{"name": "HITS", "data_type": "TYPE_FP32", "dims": [-1, 3]}]))
    data = json.loads((bundle / "pipeline.json").read_text())
    data["stages"]["gnn_cut"] = 0.99
    (bundle / "pipeline.json").write_text(json.dumps(data))
    for make in (lambda: PipelineModel.from_args(args()),
                 lambda: StageModel.from_args({**args(), "model_config": json.dumps({
                     **json.loads(args()["model_config"]), "input": [], "output": [],
                     "parameters": {**json.loads(args()["model_config"])["parameters"],
                                    "stage": {"string_value": "wcc"}}})})):
        with pytest.raises(InputError, match=f"was changed after its model config was written: .*records "
                                             f"{recorded[:12]}\\.\\.\\.; write the repository again"):
            make()
    # a change that also breaks the bundle is named as the change (it was named as the broken stages,
    # the bundle being loaded before its hash was compared)
    data["stages"]["radius"] = -1.0
    (bundle / "pipeline.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="was changed after its model config was written"):
        PipelineModel.from_args(args())


def test_a_damaged_repository_copy_says_to_write_the_repository_again(tiny_bundle, tmp_path):
    # The bundle's own advice (re-export into the bundle) would mend the copy, whose config then no
    # longer matched: the repository is written again from the original bundle.
    from trackserve.errors import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with open(bundle / "gnn.onnx", "r+b") as network:
        network.truncate(1000)
    with pytest.raises(BundleError, match="networks.gnn.* this is the model repository's copy of the bundle, which "
                                          "such a repair would set apart from the config written for it: instead, "
                                          "write the repository again from the original bundle \\(trackserve triton-repo"):
        PipelineModel.from_args(args_for(bundle, intra_op_threads=1, graph_threads=1))


def test_a_bundle_named_by_its_pipeline_json_loads_with_its_recorded_sha256(tiny_bundle):
    # load_bundle takes the pipeline.json path too; the hash check took it for a directory (NotADirectoryError)
    from trackserve.bundle import file_sha256

    args = args_for(tiny_bundle / "pipeline.json", intra_op_threads=1, graph_threads=1,
                    pipeline_sha256=file_sha256(tiny_bundle / "pipeline.json"))
    assert PipelineModel.from_args(args).inputs[0].name == "FEATURES"


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_far_hits_are_logged_at_once_then_at_most_once_an_interval_with_the_count(tiny_pipeline, sample_features):
    logged, clock = [], Clock()
    far = backend.FarHitsLog(tiny_pipeline.feature_spec, logged.append, interval_s=60, clock=clock)
    unscaled = sample_features * np.float32(1000.0)  # the sample's r in mm where the bundle divides it by 1,000
    far.check(sample_features)
    assert logged == []
    far.check(unscaled)
    assert len(logged) == 1 and "|r| up to" in logged[0] and "like this" not in logged[0]
    for _ in range(4):
        clock.now += 10
        far.check(unscaled)
        far.check(sample_features)
    assert len(logged) == 1
    clock.now += 30  # 70 s after the first line
    far.check(unscaled)
    assert len(logged) == 2 and "(5 requests like this since the last such line)" in logged[1]


def test_answered_requests_with_far_hits_are_logged_by_the_models_that_read_them_as_sent(
        pipeline_model, tiny_bundle, tiny_pipeline, sample_features):
    pb, logged = fake_pb_utils(), []
    unscaled = sample_features[:500] * np.float32(1000.0)
    pipeline_model.log_far_hits(logged.append)
    try:
        responses = respond(pb, [request(sample_features[:500]), request(unscaled), request(np.ones((3, 2), np.float32))],
                            pipeline_model)
    finally:
        pipeline_model.far_hits = None
    assert [r.error is None for r in responses] == [True, True, False]
    np.testing.assert_array_equal(responses[1].output_tensors[0].array, tiny_pipeline.run(unscaled).labels)
    assert len(logged) == 1 and "hits outside the TrackML detector" in logged[0]
    embed = StageModel.from_args(args_for(tiny_bundle, stage="embed", intra_op_threads=1, graph_threads=1))
    filter_stage = StageModel.from_args(args_for(tiny_bundle, stage="filter", intra_op_threads=1, graph_threads=1))
    embed.log_far_hits(logged.append)
    filter_stage.log_far_hits(logged.append)
    assert filter_stage.far_hits is None  # only the ensemble's first stage takes the features as sent
    assert respond(pb, [request(unscaled)], embed)[0].error is None
    assert len(logged) == 2 and "|r| up to" in logged[1]


@pytest.mark.parametrize("model_file, parameters", [(PIPELINE_MODEL, {}), (STAGE_MODEL, {"stage": "embed"})],
                         ids=["custom", "ensemble-embed"])
def test_the_shipped_model_files_log_far_hits_at_warning_level(tiny_bundle, sample_features, monkeypatch,
                                                               model_file, parameters):
    pb = fake_pb_utils()
    lines = []
    pb.Logger = types.SimpleNamespace(log_warn=lambda m: lines.append(("warn", m)),
                                      log_error=lambda m: lines.append(("error", m)))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("trackserve_model_far_hits", model_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(args_for(tiny_bundle, intra_op_threads=1, graph_threads=1, **parameters))
    assert model.execute([request(sample_features[:300] * np.float32(1000.0))])[0].error is None
    assert len(lines) == 1 and lines[0][0] == "warn" and "were its features divided by the scales" in lines[0][1]


def test_a_far_hits_note_that_fails_costs_the_request_nothing(pipeline_model, tiny_pipeline, sample_features):
    pb, logged = fake_pb_utils(), []

    def broken_log(message):
        raise OSError("the log is gone")

    pipeline_model.log_far_hits(broken_log)
    try:
        (response,) = respond(pb, [request(sample_features[:300] * np.float32(1000.0))], pipeline_model, logged.append)
    finally:
        pipeline_model.far_hits = None
    assert response.error is None and len(logged) == 1 and "the log is gone" in logged[0]
    np.testing.assert_array_equal(response.output_tensors[0].array,
                                  tiny_pipeline.run(sample_features[:300] * np.float32(1000.0)).labels)
