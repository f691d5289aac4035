"""Mixed-precision training (``--precision bfloat16``): bfloat16 products, float32 weights, sums that stay exact."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from trackserve.errors import InputError
from trackserve.events.features import TRACKML_1000
from trackserve.export.training_rows import gather_rows, sum_rows
from trackserve.train.classifier import classifier_step
from trackserve.train.config import TrainingConfig
from trackserve.train.data import SimulatedSource, simulated_events
from trackserve.train.gnn import build_gnn_network
from trackserve.train.precision import (TRAINING_PRECISIONS, bfloat16_cpu_flags, emulation_warning, pad_edges, pad_hits,
                                         pad_step, step_precision)
from trackserve.train.trainer import train_pipeline


def test_many_bfloat16_messages_into_one_hit_add_up_as_float32_would():
    # 1,000 messages of 1 into one hit: a bfloat16 running sum (8-bit mantissa) stops at 256;
    # the message sums round once, at the end.
    messages = torch.ones(1000, 3, dtype=torch.bfloat16, requires_grad=True)
    index = torch.zeros(1000, dtype=torch.int64)
    sums = sum_rows(messages, index, torch.zeros(2, 3))
    assert sums.dtype == torch.bfloat16
    assert sums[0].tolist() == [1000.0] * 3 and sums[1].tolist() == [0.0] * 3
    sums.float().sum().backward()
    assert messages.grad.dtype == torch.bfloat16 and torch.equal(messages.grad, torch.ones_like(messages))
    # Random messages, many per hit: within one bfloat16 rounding (2^-8) of the float64 sums.
    rng = np.random.default_rng(1)
    rows = torch.from_numpy(rng.uniform(0, 1, (20000, 8))).to(torch.bfloat16)
    index = torch.from_numpy(rng.integers(0, 5, 20000))
    exact = torch.zeros(5, 8, dtype=torch.float64).index_add_(0, index, rows.double())
    sums = sum_rows(rows, index, torch.zeros(5, 8)).double()
    assert ((sums - exact).abs() / exact).max() <= 2.0 ** -8


def test_the_gradient_of_a_row_gathered_many_times_adds_up_as_float32_would():
    values = torch.zeros(2, 4, dtype=torch.bfloat16, requires_grad=True)
    index = torch.tensor([1] * 1000 + [0], dtype=torch.int64)
    gathered = gather_rows(values, index)
    assert gathered.dtype == torch.bfloat16
    gathered.float().sum().backward()
    assert values.grad.dtype == torch.bfloat16
    assert values.grad[1].tolist() == [1000.0] * 4 and values.grad[0].tolist() == [1.0] * 4


def test_float32_rows_are_summed_and_gathered_as_before():
    rng = np.random.default_rng(0)
    messages = torch.from_numpy(rng.normal(size=(50, 4)).astype(np.float32)).requires_grad_()
    index = torch.from_numpy(rng.integers(0, 7, 50))
    sums = sum_rows(messages, index, torch.zeros(7, 4))
    assert sums.dtype == torch.float32
    assert torch.equal(sums, torch.zeros(7, 4).index_add_(0, index, messages.detach()))
    values = torch.from_numpy(rng.normal(size=(7, 4)).astype(np.float32)).requires_grad_()
    (gather_rows(values, index) * messages.detach()).sum().backward()
    assert values.grad.dtype == torch.float32
    assert torch.equal(values.grad, torch.zeros(7, 4).index_add_(0, index, messages.detach()))


def test_step_precision_runs_the_products_in_bfloat16_and_refuses_unknown_types():
    layer = torch.nn.Linear(4, 3)
    inputs = torch.ones(2, 4)
    with step_precision("float32"):
        assert layer(inputs).dtype == torch.float32
    with step_precision("bfloat16"):
        assert layer(inputs).dtype == torch.bfloat16
    assert layer(inputs).dtype == torch.float32
    assert TRAINING_PRECISIONS == ("float32", "bfloat16")
    with pytest.raises(ValueError, match="unknown training precision 'float16': use one of float32, bfloat16"):
        step_precision("float16")


@pytest.fixture(scope="module")
def tiny_event():
    return simulated_events([SimulatedSource(num_particles=30)], 1, TRACKML_1000, seed=7, show_progress=False)[0]


def test_a_bfloat16_step_trains_float32_weights_on_about_the_float32_loss(tiny_event):
    torch.manual_seed(0)
    network = build_gnn_network(TrainingConfig.quick().gnn, tiny_event.features.shape[1])
    twin = copy.deepcopy(network)
    edges = np.asarray(tiny_event.truth_edges)
    edges = np.concatenate([edges, edges[::-1]], axis=1)  # every hit twice as busy, half the edges wrong way round
    labels = np.arange(edges.shape[1]) % 3 == 0
    before = [p.detach().clone() for p in network.parameters()]
    losses = {}
    for precision, net in (("float32", network), ("bfloat16", twin)):
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
        losses[precision] = classifier_step(net, optimizer, tiny_event.features, edges, labels, 2.0,
                                            precision=precision)
    assert all(p.dtype == torch.float32 for p in twin.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, twin.parameters()))
    assert np.isfinite(losses["bfloat16"])
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=2e-2)
    assert losses["bfloat16"] != losses["float32"]  # the products did run in bfloat16


def test_the_config_and_the_cli_name_the_precision(tmp_path, capsys):
    from trackserve.cli import main

    with pytest.raises(InputError, match="run.precision must be one of float32, bfloat16"):
        replace(TrainingConfig(), precision="float16").validate()
    with pytest.raises(SystemExit):
        main(["train", "--output", str(tmp_path / "x"), "--random-events", "1", "--precision", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_bfloat16_run_writes_float32_networks_and_records_its_precision(tmp_path):
    events = simulated_events([SimulatedSource(num_particles=30)], 3, TRACKML_1000, seed=5, show_progress=False)
    config = TrainingConfig.quick(threads=1, precision="bfloat16", prune_cut=0.4)
    train_pipeline(events[:2], events[2], config, tmp_path / "b", spec=TRACKML_1000, show_progress=False)
    pipeline = json.loads((tmp_path / "b" / "pipeline.json").read_text())
    assert pipeline["provenance"]["settings"]["precision"] == "bfloat16"
    for name in ("embedding", "filter", "pruner", "gnn"):
        model = onnx.load(str(tmp_path / "b" / pipeline["networks"][name]["file"]))
        assert {init.data_type for init in model.graph.initializer} <= {onnx.TensorProto.FLOAT,
                                                                        onnx.TensorProto.INT64}


def test_padding_gives_shapes_in_steps_of_the_multiple_and_marks_what_it_added():
    features = np.arange(30, dtype=np.float32).reshape(10, 3)
    padded, dummy = pad_hits(features, multiple=8)
    assert padded.shape == (16, 3) and dummy == 10
    assert np.array_equal(padded[:10], features) and np.array_equal(padded[10:], np.repeat(features[:1], 6, axis=0))
    # A multiple already reached still gets its padding hit (a whole step more).
    assert pad_hits(features[:8], multiple=8)[0].shape == (16, 3)
    assert pad_hits(np.zeros((0, 3), np.float32), multiple=8)[0].shape == (8, 3)
    edges = np.array([[0, 1, 2], [1, 2, 3]])
    padded_edges, labels, counted = pad_edges(edges, np.array([True, False, True]), None, dummy, multiple=8)
    assert padded_edges.shape == (2, 8) and np.array_equal(padded_edges[:, :3], edges)
    assert (padded_edges[:, 3:] == dummy).all()
    assert labels.tolist() == [True, False, True] + [False] * 5
    assert counted.tolist() == [True] * 3 + [False] * 5
    _, _, kept = pad_edges(edges, np.ones(3, bool), np.array([False, True, True]), dummy, multiple=8)
    assert kept.tolist() == [False, True, True] + [False] * 5
    assert pad_edges(np.zeros((2, 8), np.int64), np.ones(8, bool), None, 0, multiple=8)[0].shape == (2, 8)


def test_a_padded_step_carries_its_edge_weights_and_weighs_the_padding_one():
    features = np.ones((10, 3), np.float32)
    edges = np.array([[0, 1, 2], [1, 2, 3]])
    step = pad_step(features, edges, np.array([True, False, True]), None, np.array([2.0, 1.0, 3.5]))
    padded_features, padded_edges, labels, counted, weights = step
    assert padded_edges.shape[1] == weights.shape[0] == labels.shape[0] == counted.shape[0]
    assert weights.dtype == np.float32 and weights[:3].tolist() == [2.0, 1.0, 3.5] and (weights[3:] == 1.0).all()
    assert pad_step(features, edges, np.ones(3, bool), None)[4] is None
    hits = pad_hits(features)
    assert pad_step(features, edges, np.ones(3, bool), None, hits=hits)[0] is hits[0]


@pytest.mark.parametrize("kind", ["gnn", "filter"])
def test_a_padded_step_scores_trains_and_learns_as_the_unpadded_one(tiny_event, kind):
    """Padding hits and their self-loops change nothing the real edges see: the same logits, loss and gradients."""
    from trackserve.export.inference_forms import factored_form
    from trackserve.train.filter import build_filter_network

    torch.manual_seed(1)
    config = TrainingConfig.quick()
    if kind == "gnn":
        network = build_gnn_network(replace(config.gnn, hidden=16, iterations=3), tiny_event.features.shape[1])
        stepped = factored_form(network, training=True)
    else:
        network = stepped = build_filter_network(config.filter, tiny_event.features.shape[1])
    edges = np.asarray(tiny_event.truth_edges)
    edges = np.concatenate([edges, edges[::-1], edges[:, ::7]], axis=1)  # repeated hits and edges
    labels = np.arange(edges.shape[1]) % 3 == 0
    counted = np.arange(edges.shape[1]) % 5 != 0
    features, dummy = pad_hits(tiny_event.features)
    padded_edges, padded_labels, padded_counted = pad_edges(edges, labels, counted, dummy)
    assert padded_edges.shape[1] % 256 == 0 and padded_edges.shape[1] > edges.shape[1]
    with torch.no_grad():
        plain = stepped(torch.from_numpy(tiny_event.features), torch.from_numpy(edges))
        padded = stepped(torch.from_numpy(features), torch.from_numpy(padded_edges))
    torch.testing.assert_close(padded[:edges.shape[1]], plain, rtol=1e-5, atol=1e-6)
    gradients, losses = [], []
    for args in ((tiny_event.features, edges, labels, counted), (features, padded_edges, padded_labels, padded_counted)):
        twin = copy.deepcopy(stepped)
        optimizer = torch.optim.SGD(twin.parameters(), lr=0.0)  # a step that keeps the weights, to read the gradients
        losses.append(classifier_step(twin, optimizer, args[0], args[1], args[2], 2.0, args[3]))
        gradients.append([p.grad.clone() for p in twin.parameters()])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for plain_grad, padded_grad in zip(*gradients):
        torch.testing.assert_close(padded_grad, plain_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")  # the recorder takes no step
def test_bfloat16_training_steps_run_on_padded_shapes(tiny_event, monkeypatch):
    import trackserve.train.filter as filter_training
    import trackserve.train.gnn as gnn_training
    from trackserve.train.filter import train_filter
    from trackserve.train.gnn import train_gnn
    from trackserve.train.progress import seed_everything

    shapes = []

    def recording_step(network, optimizer, features, edges, labels, positive_weight, counted=None, precision="float32",
                       edge_weights=None):
        assert edge_weights is None or edge_weights.shape == labels.shape
        shapes.append((features.shape[0], edges.shape[1], precision, None if counted is None else int(counted.sum())))
        return 0.0

    monkeypatch.setattr(gnn_training, "classifier_step", recording_step)
    monkeypatch.setattr(filter_training, "classifier_step", recording_step)
    graphs = [np.asarray(tiny_event.truth_edges)]
    for precision in TRAINING_PRECISIONS:
        shapes.clear()
        config = TrainingConfig.quick(threads=1, precision=precision)
        train_gnn([tiny_event], graphs, tiny_event, graphs[0], config, seed_everything(0), show_progress=False)
        train_filter([tiny_event], graphs, tiny_event, graphs[0], config, seed_everything(0), show_progress=False)
        assert shapes and all(step[2] == precision for step in shapes)
        padded = [step[0] % 256 == 0 and step[1] % 256 == 0 for step in shapes]
        assert all(padded) if precision == "bfloat16" else not any(padded)


def test_the_cpu_flags_say_whether_bfloat16_is_native_or_emulated(tmp_path):
    native = tmp_path / "native"
    native.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    unlisted = tmp_path / "unlisted"
    unlisted.write_text("processor\t: 0\n")
    assert bfloat16_cpu_flags(native) == ("avx512_bf16",)
    assert bfloat16_cpu_flags(plain) == ()
    assert bfloat16_cpu_flags(unlisted) is None and bfloat16_cpu_flags(tmp_path / "absent") is None
    assert emulation_warning("bfloat16", native) is None
    assert emulation_warning("float32", plain) is None
    assert emulation_warning("bfloat16", unlisted) is None  # unknown: no claim either way
    warning = emulation_warning("bfloat16", plain)
    assert warning.startswith("warning: --precision bfloat16 on a CPU without bfloat16 instructions")
    assert "avx512_bf16, amx_bf16" in warning and "emulates" in warning


def test_the_cli_warns_before_training_in_emulated_bfloat16(tmp_path, capsys, monkeypatch):
    import trackserve.train.precision as precision
    from trackserve.cli import main

    plain = tmp_path / "cpuinfo"
    plain.write_text("flags\t\t: fpu avx2\n")
    real = precision.emulation_warning
    monkeypatch.setattr(precision, "emulation_warning", lambda name: real(name, plain))
    argv = ["train", "--output", str(tmp_path / "b"), "--quick", "--random-events", "2", "--num-particles", "30",
            "--quiet", "--precision", "bfloat16"]
    assert main(argv) == 0
    assert "warning: --precision bfloat16 on a CPU without bfloat16 instructions" in capsys.readouterr().err
    assert main(argv[:-1] + ["float32", "--output", str(tmp_path / "c")]) == 0
    assert "bfloat16" not in capsys.readouterr().err
