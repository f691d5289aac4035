"""``--displaced-weight``: true edges of particles produced away from the centre weigh more in the GNNs' loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trackserve.errors import EventFormatError, InputError
from trackserve.events.features import TRACKML_1000
from trackserve.train.config import TrainingConfig
from trackserve.train.data import SimulatedSource, simulated_events
from trackserve.train.losses import weighted_bce
from trackserve.train.pairs import DISPLACED_CAP_MM, DISPLACED_SCALE_MM, displaced_weights


@pytest.fixture(scope="module")
def event():
    return simulated_events([SimulatedSource(num_particles=40)], 1, TRACKML_1000, seed=9, show_progress=False)[0]


def test_displaced_weights_grow_with_the_production_distance_up_to_the_cap():
    labels = np.array([True, True, True, True, True, False, False])
    vz = np.array([0.0, 50.0, -100.0, 200.0, 1000.0, 150.0, 0.0])
    weights = displaced_weights(labels, vz, 2.0)
    assert weights.dtype == np.float32
    assert weights.tolist() == pytest.approx([1.0, 2.0, 3.0, 5.0, 5.0, 1.0, 1.0])
    assert DISPLACED_CAP_MM == 200.0 and DISPLACED_SCALE_MM == 100.0
    assert displaced_weights(labels, vz, 0.0).tolist() == [1.0] * 7
    assert displaced_weights(np.zeros(0, dtype=bool), np.zeros(0), 1.0).shape == (0,)


def test_displaced_weights_refuse_bad_input():
    with pytest.raises(ValueError, match="weight must be >= 0"):
        displaced_weights(np.array([True]), np.array([1.0]), -1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        displaced_weights(np.array([True, False]), np.array([1.0]), 1.0)


def test_weighted_bce_with_edge_weights_by_hand():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    targets = torch.tensor([True, False, True, True])
    weights = torch.tensor([1.0, 4.0, 0.0, 2.5])
    loss = weighted_bce(logits, targets, 2.0, weights)
    by_hand = [-2 * F.logsigmoid(logits[0]), -4 * F.logsigmoid(-logits[1]), 0.0, -2.5 * 2 * F.logsigmoid(logits[3])]
    assert float(loss) == pytest.approx(float(sum(by_hand)) / 4, rel=1e-6)
    assert float(weighted_bce(logits, targets, 2.0, torch.ones(4))) == pytest.approx(float(weighted_bce(logits, targets, 2.0)))
    with pytest.raises(ValueError, match="edge_weights"):
        weighted_bce(logits, targets, 2.0, torch.ones(3))


def test_classifier_step_weighs_the_counted_edges(event):
    from trackserve.train.classifier import classifier_step
    from trackserve.train.gnn import build_gnn_network

    edges = np.asarray(event.truth_edges)
    labels = np.arange(edges.shape[1]) % 2 == 0
    counted = np.arange(edges.shape[1]) % 3 != 0
    weights = np.linspace(0.5, 3.0, edges.shape[1]).astype(np.float32)
    torch.manual_seed(0)
    network = build_gnn_network(TrainingConfig.quick().gnn, event.features.shape[1])
    with torch.no_grad():
        logits = network(torch.from_numpy(event.features), torch.from_numpy(edges))
    expected = weighted_bce(logits[counted], torch.from_numpy(labels[counted]), 2.0, torch.from_numpy(weights[counted]))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.0)
    loss = classifier_step(network, optimizer, event.features, edges, labels, 2.0, counted, edge_weights=weights)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    plain = classifier_step(network, optimizer, event.features, edges, labels, 2.0, counted)
    assert plain != pytest.approx(loss, rel=1e-3)


def test_hit_vz_is_the_particles_production_point(event):
    particles = event.event.particles
    ids = np.asarray(particles["particle_id"], dtype=np.int64)
    vz = dict(zip(ids.tolist(), np.abs(np.asarray(particles["vz"], dtype=float)).tolist()))
    expected = [0.0 if pid == 0 else vz[pid] for pid in event.particle_ids.tolist()]
    assert event.hit_vz.tolist() == pytest.approx(expected)
    assert (event.particle_ids == 0).any() and (event.hit_vz[event.particle_ids == 0] == 0).all()
    assert (event.hit_vz > 1.0).any()  # the simulation spreads the collisions along the beam


def test_hit_vz_needs_the_particles_table(event):
    from trackserve.train.data import TrainingEvent

    def copy_with(particles):
        source = replace(event.event, particles=particles)
        return TrainingEvent(event.name, event.features, event.particle_ids, event.truth_edges, event.hit_pt, source)

    with pytest.raises(EventFormatError, match="particles table's particle_id and vz"):
        _ = copy_with(None).hit_vz
    table = event.event.particles
    first_signal = int(event.particle_ids[event.particle_ids != 0][0])
    keep = np.asarray(table["particle_id"], dtype=np.int64) != first_signal
    smaller = {name: np.asarray(column)[keep] for name, column in table.items()}
    with pytest.raises(EventFormatError, match=f"the particles table has no production point \\(vz\\) for particle\\(s\\) {first_signal}"):
        _ = copy_with(smaller).hit_vz


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")  # the recorder takes no step
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_gnn_steps_get_the_displaced_weights_of_their_edges(event, monkeypatch, precision):
    import trackserve.train.gnn as gnn_training
    from trackserve.train.pairs import edge_targets
    from trackserve.train.progress import seed_everything

    seen = []

    def recording_step(network, optimizer, features, edges, labels, positive_weight, counted=None, precision="float32",
                       edge_weights=None):
        seen.append((labels.copy(), None if counted is None else counted.copy(), edge_weights))
        return 0.0

    monkeypatch.setattr(gnn_training, "classifier_step", recording_step)
    graph = np.asarray(event.truth_edges)
    config = TrainingConfig.quick(threads=1, precision=precision, displaced_weight=1.5)
    gnn_training.train_gnn([event], [graph], event, graph, config, seed_everything(0), show_progress=False)
    assert seen
    labels_all, _ = edge_targets(graph, event.particle_ids, event.hit_pt, 0.0)
    possible = set(np.round(displaced_weights(labels_all, event.hit_vz[graph[0]], 1.5), 5).tolist()) | {1.0}
    for labels, counted, weights in seen:
        assert weights is not None and weights.shape == labels.shape and weights.dtype == np.float32
        real = np.ones(labels.shape, dtype=bool) if counted is None else counted
        assert set(np.round(weights[real], 5).tolist()) <= possible
        assert (weights[real & ~labels] == 1.0).all()
    assert any((weights > 1.0).any() for _, _, weights in seen)

    seen.clear()
    gnn_training.train_gnn([event], [graph], event, graph, replace(config, displaced_weight=0.0), seed_everything(0),
                           show_progress=False)
    assert seen and all(weights is None for _, _, weights in seen)


def test_config_and_cli_take_the_displaced_weight(tmp_path):
    from trackserve.cli import build_parser
    from trackserve.commands.train import training_config

    with pytest.raises(InputError, match="run.displaced_weight must be a finite number >= 0"):
        TrainingConfig(displaced_weight=-0.5).validate()
    with pytest.raises(InputError, match="run.displaced_weight"):
        TrainingConfig(displaced_weight=float("inf")).validate()
    base = ["train", "--output", str(tmp_path / "b"), "--random-events", "1"]
    assert training_config(build_parser().parse_args(base)).displaced_weight == 0.0
    assert training_config(build_parser().parse_args([*base, "--displaced-weight", "2"])).displaced_weight == 2.0
    assert TrainingConfig(displaced_weight=2.0).to_dict()["displaced_weight"] == 2.0


def test_training_refuses_events_without_production_points_before_it_trains(event, tmp_path, monkeypatch):
    import trackserve.train.trainer as trainer
    from trackserve.train.data import TrainingEvent

    def no_training(*args, **kwargs):
        raise AssertionError("the embedding started training")

    monkeypatch.setattr(trainer, "train_embedding", no_training)
    bare = TrainingEvent(event.name, event.features, event.particle_ids, event.truth_edges, event.hit_pt,
                         replace(event.event, particles=None))
    config = TrainingConfig.quick(threads=1, displaced_weight=1.0)
    with pytest.raises(EventFormatError) as error:
        trainer.train_pipeline([bare], event, config, tmp_path / "bundle", spec=TRACKML_1000, show_progress=False)
    # the event named once (its path was given twice, after calling the event's prefix a "file")
    assert str(error.value).startswith(f"event {event.name}: the production point of each particle (the particles "
                                       "table's particle_id and vz)")
    assert not (tmp_path / "bundle").exists()
