"""A real tritonserver serving the tiny bundle in both layouts: answers, bad requests, the client command."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.conftest import EARLIER_LABELS, SAMPLE_EVENT
from trackserve.cli import main
from trackserve.errors import InputError, ServingError
from trackserve.paths import DEFAULT_BUNDLE
from trackserve.serving.client import TritonClient

from .conftest import require_triton, start_server

MODELS = ("exatrkx", "exatrkx_ensemble")
PROTOCOLS = ("grpc", "http")


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", MODELS)
def test_sample_event_labels_are_the_local_runtime_labels(triton_server, tiny_pipeline, sample_features, model, protocol):
    expected = tiny_pipeline.run(sample_features).labels
    with TritonClient(triton_server.url(protocol), protocol=protocol, model=model) as client:
        assert client.is_ready()
        assert client.num_features() == 3
        labels = client.infer(sample_features)
    # Guard against python_backend's empty outputs (numpy 2 in the stub): labels must be there.
    assert labels.shape == (sample_features.shape[0],) and labels.dtype == np.int64
    assert len(np.unique(labels)) < labels.size, "some hits must share a track, or the comparison proves little"
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("model", MODELS)
def test_service_events_labels_are_the_local_runtime_labels(triton_server, tiny_pipeline, lrt_features, model):
    with TritonClient(triton_server.grpc_url, model=model) as client:
        for features in lrt_features:
            np.testing.assert_array_equal(client.infer(features), tiny_pipeline.run(features).labels)


BAD_REQUESTS = {
    "wrong feature count": (np.zeros((10, 4), np.float32), "Expected [-1,3], got [10,4]"),
    "wrong dtype": (np.zeros((10, 3), np.float64), "data-type is 'FP64', but model"),
    "NaN": (np.array([[0.1, 0.2, 0.3], [0.2, np.nan, 0.1]], np.float32), "features of hit 1 (0-based) hold nan in column 1"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("model", MODELS)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_answering(triton_server, tiny_pipeline, sample_features,
                                                                        model, protocol):
    expected = tiny_pipeline.run(sample_features[:500]).labels
    with TritonClient(triton_server.url(protocol), protocol=protocol, model=model) as client:
        for what, (features, message) in BAD_REQUESTS.items():
            with pytest.raises(ServingError, match="refused the request") as error:
                client.infer(features)
            assert message in str(error.value), what
            np.testing.assert_array_equal(client.infer(sample_features[:500]), expected)
        empty = client.infer(np.zeros((0, 3), np.float32))
        assert empty.shape == (0,) and empty.dtype == np.int64
        with pytest.raises(ServingError, match="missing required input.*FEATURES"):
            client.send([], 0)  # a request without its input
        assert client.is_ready()
        np.testing.assert_array_equal(client.infer(sample_features[:500]), expected)


def test_concurrent_good_and_bad_requests_do_not_mix(triton_server, tiny_pipeline, sample_features):
    slices = [sample_features[i * 400 : i * 400 + 300 + 37 * i] for i in range(8)]
    expected = [tiny_pipeline.run(s).labels for s in slices]
    nan = slices[0].copy()
    nan[7, 0] = np.nan

    def send(index):
        with TritonClient(triton_server.grpc_url, model=MODELS[index % 2]) as client:
            if index % 3 == 0:
                with pytest.raises(ServingError, match="hit 7"):
                    client.infer(nan)
                return None
            return client.infer(slices[index % 8])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(24)))
    for index, labels in enumerate(results):
        if index % 3:
            np.testing.assert_array_equal(labels, expected[index % 8])


def test_client_command_checks_against_the_local_runtime(triton_server, tiny_bundle, shared_data, tmp_path, capsys):
    lrt = shared_data / "exatrkx_service" / "lrt_events" / "evt_3.csv"
    code = main(["client", str(SAMPLE_EVENT), str(lrt), "--bundle", str(tiny_bundle), "--url", triton_server.grpc_url,
                 "--check", "--output", str(tmp_path / "labels")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "event000000001: 5527 hits" in out and "identical to the local runtime" in out
    assert "2 of 2 event(s) answered" in out and "2 of them identical to the local runtime" in out
    from trackserve.events.submission import read_submission

    _, hits, tracks = read_submission(tmp_path / "labels" / "event000000001-labels.csv")
    assert hits.size == 5527 and tracks.max() > 0
    assert f"event000000001: 5527 hits, {np.unique(tracks).size} tracks (distinct labels)" in out


def test_client_command_reports_a_mismatch(triton_server, tiny_bundle, tmp_path, capsys):
    other = tmp_path / "other_bundle"
    shutil.copytree(tiny_bundle, other)
    data = json.loads((other / "pipeline.json").read_text())
    data["stages"]["gnn_cut"] = 0.9999999  # (a cut of 1 is refused) no edge of the tiny networks passes: every hit its own track
    (other / "pipeline.json").write_text(json.dumps(data))
    code = main(["client", str(SAMPLE_EVENT), "--bundle", str(other), "--url", triton_server.http_url,
                 "--protocol", "http", "--model", "exatrkx_ensemble", "--check", "--output", str(tmp_path / "labels")])
    captured = capsys.readouterr()
    assert code == 1
    assert "MISMATCH" in captured.err and "hits are in tracks other than the local runtime's" in captured.err
    # what the server answered is written all the same, and said so
    # answered, not identical (it said "0 of 1 event(s) answered and identical", as if none had been answered)
    assert "1 of 1 event(s) answered" in captured.out and "0 of them identical to the local runtime" in captured.out
    assert f"labels of 1 event(s) in {(tmp_path / 'labels').resolve()}" in captured.out
    # and says why: the server serves another bundle (the model config's pipeline_sha256)
    assert "serves another bundle than --bundle" in captured.err and "--check compares its labels with another" in \
        captured.err
    code = main(["client", str(SAMPLE_EVENT), "--bundle", str(tiny_bundle), "--url", triton_server.http_url,
                 "--protocol", "http", "--model", "exatrkx_ensemble", "--check", "--no-labels"])
    assert code == 0 and "serves another bundle" not in capsys.readouterr().err


def test_client_command_sends_the_other_events_when_one_cannot_be_read(triton_server, tiny_bundle, sample_features,
                                                                       tmp_path, capsys):
    good = tmp_path / "evt_1.csv"
    np.savetxt(good, sample_features[:200], delimiter=",", fmt="%.9g")
    bad = tmp_path / "evt_2.csv"
    bad.write_text("0.1,nan,0.3\n")
    last = tmp_path / "evt_3.csv"
    np.savetxt(last, sample_features[200:400], delimiter=",", fmt="%.9g")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "evt_2-labels.csv").write_text(EARLIER_LABELS)
    code = main(["client", str(good), str(bad), str(last), "--bundle", str(tiny_bundle), "--url", triton_server.grpc_url,
                 "--output", str(tmp_path / "labels")])
    captured = capsys.readouterr()
    assert code == 1
    assert f"{bad}: FAILED, not sent: " in captured.err and "not a finite float32" in captured.err
    assert "2 of 3 event(s) answered" in captured.out
    # the failed event's old labels file is removed: no old file passes for this run's answer
    assert f"removed {tmp_path / 'labels' / 'evt_2-labels.csv'}" in captured.err
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["evt_1-labels.csv", "evt_3-labels.csv"]
    assert main(["client", str(bad), "--bundle", str(tiny_bundle), "--url", triton_server.grpc_url,
                 "--output", str(tmp_path / "labels")]) == 1
    out = capsys.readouterr().out
    assert "0 of 1 event(s) answered" in out and "labels in" not in out  # no labels were written


def test_client_refuses_a_stage_model_before_sending(triton_server, tiny_bundle, capsys):
    # the ensemble's embed stage takes FEATURES too, but answers no LABELS
    code = main(["client", str(SAMPLE_EVENT), "--bundle", str(tiny_bundle), "--url", triton_server.grpc_url,
                 "--model", "embed", "--no-labels"])
    assert code == 2
    assert "model 'embed' at" in (err := capsys.readouterr().err) and "has no output 'LABELS'" in err
    # wcc answers LABELS, from edges and scores: it was sent the event and failed it ("expected 3 inputs")
    code = main(["client", str(SAMPLE_EVENT), "--bundle", str(tiny_bundle), "--url", triton_server.grpc_url,
                 "--model", "wcc", "--no-labels"])
    assert code == 2
    assert "takes the inputs EDGE_LIST_AFTER_FILTER, GNN_SCORES besides FEATURES" in capsys.readouterr().err


def test_client_says_nothing_of_replacing_labels_when_the_model_is_refused(triton_server, tiny_bundle, tmp_path, capsys):
    # QA, 2026-12-02: "2 labels files of an earlier run ... will be replaced" came before the model
    # check refused the run, and nothing was replaced
    earlier = tmp_path / "labels" / "event000000001-labels.csv"
    earlier.parent.mkdir()
    earlier.write_text("event_id,hit_id,track_id\n1,1,0\n")
    code = main(["client", str(SAMPLE_EVENT), "--bundle", str(tiny_bundle), "--url", triton_server.grpc_url,
                 "--model", "embed", "--output", str(earlier.parent)])
    assert code == 2
    assert "will be replaced" not in capsys.readouterr().err
    assert earlier.read_text() == "event_id,hit_id,track_id\n1,1,0\n"


@pytest.mark.parametrize("url, timeout, message", [
    ("http://127.0.0.1:8000", 5, "give host:port without a scheme"),
    ("127.0.0.1", 5, "give host:port with a port in 1..65535"),
    ("127.0.0.1:70000", 5, "give host:port with a port in 1..65535"),
    ("::1:8001", 5, "write an IPv6 address in brackets, e.g. [::1]:8001"),
    ("127.0.0.1:8001", 0, "the request timeout must be a finite number of seconds > 0, got 0"),
    ("127.0.0.1:8001", float("nan"), "the request timeout must be a finite number of seconds > 0, got nan"),
])
def test_a_bad_address_or_timeout_is_refused_before_connecting(url, timeout, message):
    with pytest.raises(InputError) as error:
        TritonClient(url, timeout_s=timeout)
    assert message in str(error.value)


def test_client_refuses_a_bundle_whose_features_differ_from_the_served_ones(triton_server, tiny_bundle, tmp_path,
                                                                           capsys):
    from trackserve.bundle import load_bundle

    served = load_bundle(tiny_bundle)
    with TritonClient(triton_server.grpc_url) as client:
        assert client.served_features() == (tuple(served.feature_names), tuple(served.feature_scales))
    other = tmp_path / "other_scales"
    shutil.copytree(tiny_bundle, other)
    data = json.loads((other / "pipeline.json").read_text())
    assert data["features"]["scales"][0] == 1000.0  # the tiny bundle reads r/1000, z/1000
    data["features"]["scales"] = [3000.0, data["features"]["scales"][1], 400.0]  # the same width, other scales
    (other / "pipeline.json").write_text(json.dumps(data))
    # before: features at the wrong scales were sent and labelled without a word
    code = main(["client", str(SAMPLE_EVENT), "--bundle", str(other), "--url", triton_server.grpc_url, "--no-labels"])
    assert code == 2
    err = capsys.readouterr().err
    assert "serves a bundle that reads the features r/1000" in err and f"--bundle {other} computes r/3000" in err
    code = main(["perf", str(SAMPLE_EVENT), "--bundle", str(other), "--url", triton_server.grpc_url,
                 "--concurrency", "1", "--window-seconds", "0.5", "--warmup-seconds", "0"])
    assert code == 2 and "the served model serves a bundle that reads the features r/1000" in capsys.readouterr().err


def test_feature_csvs_need_no_bundle_but_a_bundle_given_is_checked(triton_server, tiny_bundle, sample_features,
                                                                    tmp_path, capsys):
    csv = tmp_path / "evt_1.csv"
    np.savetxt(csv, sample_features[:300], delimiter=",", fmt="%.9g")
    # sent as they are: the shipped default bundle (other scales than the served one) is not used
    assert main(["client", str(csv), "--url", triton_server.grpc_url, "--no-labels"]) == 0
    assert "1 of 1 event(s) answered" in capsys.readouterr().out
    other = tmp_path / "other_scales"
    shutil.copytree(tiny_bundle, other)
    data = json.loads((other / "pipeline.json").read_text())
    data["features"]["scales"] = [3000.0, data["features"]["scales"][1], 400.0]
    (other / "pipeline.json").write_text(json.dumps(data))
    # a --bundle given is checked against the served model whatever the inputs, by client and perf alike
    assert main(["client", str(csv), "--bundle", str(other), "--url", triton_server.grpc_url, "--no-labels"]) == 2
    assert "serves a bundle that reads the features r/1000" in capsys.readouterr().err
    assert main(["perf", str(csv), "--bundle", str(other), "--url", triton_server.grpc_url, "--concurrency", "1",
                 "--window-seconds", "0.5", "--warmup-seconds", "0"]) == 2
    assert "serves a bundle that reads the features r/1000" in capsys.readouterr().err


def test_client_command_names_an_unreachable_server(tiny_bundle, capsys):
    from trackserve.serving.server import free_port

    require_triton()
    code = main(["client", str(SAMPLE_EVENT), "--bundle", str(tiny_bundle), "--url", f"127.0.0.1:{free_port()}",
                 "--timeout", "5"])
    assert code == 2
    assert "did not answer" in capsys.readouterr().err


def test_default_bundle_is_served_identically(tmp_path):
    if not DEFAULT_BUNDLE.is_dir():
        pytest.skip(f"the default bundle {DEFAULT_BUNDLE} is absent")
    require_triton()
    from trackserve.events.sources import list_inputs, read_input
    from trackserve.runtime.pipeline import Pipeline
    from trackserve.serving.repository import RepositoryOptions, write_repository

    pipeline = Pipeline(DEFAULT_BUNDLE)
    features = read_input(*list_inputs([SAMPLE_EVENT])[0], pipeline.feature_spec).features
    written = write_repository(DEFAULT_BUNDLE, tmp_path / "repo", RepositoryOptions(layout="both"))
    server = start_server(written.path)
    try:
        for model in MODELS:
            with TritonClient(server.grpc_url, model=model) as client:
                np.testing.assert_array_equal(client.infer(features), pipeline.run(features).labels)
    finally:
        server.stop()


def test_a_mismatch_counts_the_hits_in_other_tracks_not_renumbered_labels():
    from trackserve.commands.client import hits_in_other_tracks

    expected = np.array([0, 0, 1, 1, 2, 2, 3])
    assert hits_in_other_tracks(expected, expected) == 0
    assert hits_in_other_tracks(np.array([4, 4, 0, 0, 7, 7, 1]), expected) == 0  # the same tracks, numbered otherwise
    # track 1 split in two: every label after it shifts, but only its 2 hits are in other tracks
    assert hits_in_other_tracks(np.array([0, 0, 1, 2, 3, 3, 4]), expected) == 2
    assert hits_in_other_tracks(np.array([0, 0, 0, 0, 2, 2, 3]), expected) == 4  # tracks 0 and 1 merged
    assert hits_in_other_tracks(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0
