"""The training losses on hand-built cases, against values computed by hand and by PyTorch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trackserve.train.losses import hinge_loss, weighted_bce


def test_hinge_loss_values_by_hand():
    distances = torch.tensor([0.5, 0.2, 1.5, 0.0])
    positive = torch.tensor([True, False, False, True])
    # positive: 0.5**2 = 0.25 and 0; negatives: (1 - 0.2)**2 = 0.64, beyond the margin 0.
    assert hinge_loss(distances, positive, margin=1.0).item() == pytest.approx((0.25 + 0.64 + 0.0 + 0.0) / 4)


def test_hinge_loss_positive_weight_scales_only_true_pairs():
    distances = torch.tensor([0.5, 0.2])
    positive = torch.tensor([True, False])
    assert hinge_loss(distances, positive, margin=1.0, positive_weight=3.0).item() == pytest.approx((0.75 + 0.64) / 2)


def test_hinge_loss_margin_and_gradient_direction():
    distances = torch.tensor([0.4, 0.4], requires_grad=True)
    positive = torch.tensor([True, False])
    hinge_loss(distances, positive, margin=0.5).backward()
    # pull the positive pair together (gradient > 0), push the negative apart (gradient < 0)
    assert distances.grad[0] > 0 and distances.grad[1] < 0
    assert distances.grad[1].item() == pytest.approx(-2 * 0.1 / 2)


def test_hinge_loss_matches_torch_hinge_embedding_on_squared_form():
    torch.manual_seed(0)
    distances = torch.rand(1000) * 2
    positive = torch.rand(1000) < 0.3
    expected = torch.where(positive, distances**2, torch.clamp(1.0 - distances, min=0) ** 2).mean()
    assert torch.allclose(hinge_loss(distances, positive, 1.0), expected)


def test_hinge_loss_empty_and_bad_input():
    assert hinge_loss(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 1.0).item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        hinge_loss(torch.zeros(3), torch.zeros(2, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="margin"):
        hinge_loss(torch.zeros(3), torch.zeros(3, dtype=torch.bool), 0.0)


def test_weighted_bce_values_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([True, False, True])
    w = 3.0
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = (-w * math.log(0.5) - math.log(1 - sigmoid(2.0)) - w * math.log(sigmoid(-1.0))) / 3
    assert weighted_bce(logits, targets, w).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_bce_unweighted_equals_torch_and_is_stable():
    logits = torch.tensor([-200.0, 200.0, 0.3])
    targets = torch.tensor([False, True, True])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float())
    assert torch.isfinite(weighted_bce(logits, targets))
    assert torch.allclose(weighted_bce(logits, targets), expected)


def test_weighted_bce_empty_and_bad_input():
    assert weighted_bce(torch.zeros(0), torch.zeros(0, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="positive_weight"):
        weighted_bce(torch.zeros(2), torch.zeros(2, dtype=torch.bool), 0.0)
    with pytest.raises(ValueError, match="shape"):
        weighted_bce(torch.zeros(2), torch.zeros(3, dtype=torch.bool))


def test_classifier_step_counts_only_the_counted_edges_in_its_loss():
    from trackserve.train.classifier import classifier_step

    class Scores(torch.nn.Module):
        """One free logit per edge, so the loss of each edge is visible in the gradient."""

        def __init__(self):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.tensor([2.0, -1.0, 0.5, 3.0]))

        def forward(self, features, edges):
            return self.logits * 1.0

    features = np.zeros((3, 2), dtype=np.float32)
    edges = np.array([[0, 1, 1, 2], [1, 2, 2, 0]])  # a repeated edge
    labels = np.array([True, False, True, False])
    counted = np.array([True, False, True, False])
    network = Scores()
    optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
    loss = classifier_step(network, optimizer, features, edges, labels, 2.0, counted)
    expected = weighted_bce(torch.tensor([2.0, 0.5]), torch.tensor([True, True]), 2.0).item()
    assert loss == pytest.approx(expected, rel=1e-6)
    moved = (network.logits.detach() != torch.tensor([2.0, -1.0, 0.5, 3.0])).tolist()
    assert moved == [True, False, True, False]
    network = Scores()
    every = classifier_step(network, torch.optim.SGD(network.parameters(), lr=1.0), features, edges, labels, 2.0)
    assert every == pytest.approx(weighted_bce(torch.tensor([2.0, -1.0, 0.5, 3.0]), torch.from_numpy(labels), 2.0).item())


def test_a_stage_that_took_no_step_is_an_error_not_an_untrained_network():
    from trackserve.errors import InputError
    from trackserve.train.schedule import check_trained

    check_trained("filter", 1, [np.zeros((2, 5))])
    with pytest.raises(InputError, match=r"the gnn took no training step: no batch held an edge it learns from "
                                         r"\(0 edge\(s\) in the filtered radius graphs of 2 training event\(s\)\); "
                                         r"give events with more particles"):
        check_trained("gnn", 0, [np.zeros((2, 0)), np.zeros((2, 0))])
