"""The GNN edge classifier: trained on the filter-cut graphs, one φ sector (a sub-graph) per step.

A sector keeps the hits whose azimuth lies within ``π / sectors`` of a random centre and
the edges between two of them, so a step sees a small, complete piece of the detector.
Steps go through the network's factored training form
(:func:`~trackserve.export.inference_forms.factored_form` with ``training=True``: its
edge networks' first layers applied per hit, then gathered, gathers and sums with cheap
CPU gradients; the same parameters and function), and the sectors are cut through a
:class:`SectorIndex` of each event. After
training, :func:`choose_gnn_cut` picks the cut that maximises the validation track
efficiency minus the fake rate.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import InputError
from ..runtime.cut_tuning import CANDIDATE_CUTS
from ..runtime.cuts import not_below_prune_cut
from .classifier import classifier_step, passing, score_edges, training_targets, training_weights
from .config import GNNSettings, TrainingConfig
from .data import TrainingEvent
from .precision import pad_step
from .progress import progress, report
from .schedule import check_finite_loss, check_trained, one_cycle
from .validation import format_figures, graph_figures, track_figures, track_labels


def build_gnn_network(settings: GNNSettings, num_features: int, periodic_features=(), derived_eta=None,
                      pair_geometry=None, period: float = 2.0):
    """A fresh GNN (``settings.architecture``) of these settings (``period``: that of the
    ``periodic_features`` columns, 2π over φ's scale)."""
    from ..export.interaction_gnn import InteractionGNN
    from ..export.resagnn import ResAGNN

    if settings.architecture == "ResAGNN":
        if derived_eta is not None or pair_geometry is not None:
            raise InputError("the ResAGNN reads its features as they are: train it without --derive-eta and --pair-geometry")
        return ResAGNN(in_channels=num_features, hidden=settings.hidden, n_graph_iters=settings.iterations,
                       nb_node_layer=settings.node_layers, nb_edge_layer=settings.edge_layers)
    return InteractionGNN(in_channels=num_features, hidden=settings.hidden, n_graph_iters=settings.iterations,
                          nb_node_layer=settings.node_layers, nb_edge_layer=settings.edge_layers,
                          bidirectional_messages=True, edge_differences=settings.edge_differences,
                          edge_update_uses_new_nodes=settings.edge_update_uses_new_nodes,
                          periodic_features=list(periodic_features), period=period,
                          difference_scale=settings.difference_scale, derived_eta=derived_eta,
                          pair_geometry=pair_geometry)


def blind_hit_encoder(network, columns) -> None:
    """Make ``network``'s hit encoder ignore its input ``columns``: their first-layer weights
    set to zero and their gradient zeroed on every backward pass, so they stay zero under
    AdamW (no gradient, and decoupled weight decay keeps a zero at zero)."""
    import torch

    first = network.node_encoder[0]
    index = torch.tensor(list(columns), dtype=torch.long)
    with torch.no_grad():
        first.weight[:, index] = 0.0
    first.weight.register_hook(lambda grad: grad.index_fill(1, index, 0.0))


def hit_phi(event: TrainingEvent) -> np.ndarray:
    """Azimuth of every hit (rad)."""
    return np.arctan2(np.asarray(event.event.hits["y"], float), np.asarray(event.event.hits["x"], float))


def _within(phi: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    """Which azimuths lie closer than ``half_width`` to ``centre`` around the circle."""
    return np.abs(np.angle(np.exp(1j * (phi - centre)))) < half_width


def sector_subgraph(phi: np.ndarray, edges: np.ndarray, centre: float, half_width: float):
    """The hits within ``half_width`` of azimuth ``centre`` and the edges between them.

    Returns ``(hits, local_edges, edge_rows)``: the hit rows kept, the kept edges renumbered
    to positions in ``hits``, and the kept edges' columns in ``edges``.
    """
    inside = _within(phi, centre, half_width)
    edge_rows = np.flatnonzero(inside[edges[0]] & inside[edges[1]])
    hits = np.flatnonzero(inside)
    position = np.full(phi.shape[0], -1, dtype=np.int64)
    position[hits] = np.arange(hits.size)
    return hits, position[edges[:, edge_rows]], edge_rows


class SectorIndex:
    """One event's hits and edges ordered by azimuth, to cut many sectors quickly.

    :meth:`subgraph` gives what :func:`sector_subgraph` gives (the same arrays, in the same
    order) while looking only at the hits and edges near the sector: a window of the
    hits sorted by azimuth, and of the edges sorted by their first hit's azimuth, found
    by binary search (three windows, for the wrap at ±π), then the exact test of
    :func:`sector_subgraph` on those candidates. On a 1.2M-edge training graph a sector
    took 2.7 instead of 9.1 ms.
    """

    #: Widening (rad) of the candidate windows, so that rounding never loses a hit on the border.
    MARGIN = 1e-6

    def __init__(self, phi: np.ndarray, edges: np.ndarray):
        self.phi = np.asarray(phi, dtype=np.float64)
        self.edges = edges
        self.hit_order = np.argsort(self.phi, kind="stable")
        self.sorted_phi = self.phi[self.hit_order]
        start_phi = self.phi[edges[0]]
        self.edge_order = np.argsort(start_phi, kind="stable")
        self.sorted_start_phi = start_phi[self.edge_order]

    def _candidates(self, sorted_values: np.ndarray, order: np.ndarray, centre: float, half_width: float) -> np.ndarray:
        """``order`` entries whose sorted value lies within the widened window around ``centre``, modulo 2π."""
        reach = half_width + self.MARGIN
        pieces = []
        for shift in (-2 * np.pi, 0.0, 2 * np.pi):
            lo, hi = np.searchsorted(sorted_values, [centre + shift - reach, centre + shift + reach])
            pieces.append(order[lo:hi])
        return np.concatenate(pieces)

    def subgraph(self, centre: float, half_width: float):
        """``(hits, local_edges, edge_rows)`` of the sector, as :func:`sector_subgraph` returns them."""
        if half_width + self.MARGIN >= np.pi:
            return sector_subgraph(self.phi, self.edges, centre, half_width)

        hits = self._candidates(self.sorted_phi, self.hit_order, centre, half_width)
        hits = np.sort(hits[_within(self.phi[hits], centre, half_width)])
        rows = self._candidates(self.sorted_start_phi, self.edge_order, centre, half_width)
        ends = self.edges[:, rows]
        keep = _within(self.phi[ends[0]], centre, half_width) & _within(self.phi[ends[1]], centre, half_width)
        rows, ends = rows[keep], ends[:, keep]
        order = np.argsort(rows, kind="stable")  # the edges in their order in the graph
        return hits, np.searchsorted(hits, ends[:, order]).astype(np.int64), rows[order]


def sector_loss_mask(hit_phi_local: np.ndarray, local_edges: np.ndarray, centre: float, half_width: float,
                     reach: float, counted: np.ndarray | None) -> np.ndarray | None:
    """Which edges of a sub-graph cut with half-width ``reach`` enter the loss: with a halo
    (``reach > half_width``) only those whose two hits lie within ``half_width`` of ``centre``
    (the sector itself), and of those only the ``counted`` ones when given; None: every edge.

    ``hit_phi_local`` is the azimuth of the sub-graph's hits, ``local_edges [2, E]`` its
    edges as positions among them."""
    if reach <= half_width:
        return counted
    inside = _within(hit_phi_local, centre, half_width)
    core = inside[local_edges[0]] & inside[local_edges[1]]
    return core if counted is None else core & counted


def gnn_scores(network, event: TrainingEvent, graph: np.ndarray) -> np.ndarray:
    """Logits of ``graph``'s edges, computed through the network's factored training form
    (the same function; on a 1.2M-edge validation event 5.1 instead of 6.1 s)."""
    from ..export.inference_forms import factored_form

    return score_edges(factored_form(network, training=True), event.features, graph)


def validate_gnn(network, event: TrainingEvent, graph: np.ndarray, cut: float, config: TrainingConfig) -> dict:
    """Edge figures at ``cut`` and the track figures of the labels it gives."""
    logits = gnn_scores(network, event, graph)
    labels = track_labels(event.num_hits, graph, logits, cut, config.track_building, event.hit_distance)
    return {"cut": cut, **graph_figures(event, graph[:, passing(logits, cut)], config.min_pt),
            **track_figures(event, labels, config.min_pt, config.min_hits)}


def choose_gnn_cut(network, event: TrainingEvent, graph: np.ndarray, config: TrainingConfig) -> tuple[float, dict]:
    """The cut of :data:`CANDIDATE_CUTS` (those not below ``config.prune_cut``) with the best track
    efficiency minus fake rate on ``event`` among those that build a track (any cut when
    none does), and its figures."""
    logits = gnn_scores(network, event, graph)
    best = None
    for cut in not_below_prune_cut(CANDIDATE_CUTS, config.prune_cut):
        labels = track_labels(event.num_hits, graph, logits, cut, config.track_building, event.hit_distance)
        figures = track_figures(event, labels, config.min_pt, config.min_hits)
        # a cut that builds no track (fake rate NaN) ranks below every cut that builds some
        builds = figures["fake_rate"] == figures["fake_rate"]
        value = (builds, float(np.nan_to_num(figures["track_efficiency"]) - np.nan_to_num(figures["fake_rate"])))
        if best is None or value > best[0]:
            best = (value, cut)
    cut = best[1]
    return cut, validate_gnn(network, event, graph, cut, config)


def train_gnn(events: list[TrainingEvent], graphs: list[np.ndarray], validation: TrainingEvent,
              validation_graph: np.ndarray, config: TrainingConfig, rng: np.random.Generator,
              *, show_progress: bool = True, deadline: float | None = None):
    """Train the GNN on sectors of ``graphs`` (one per event); return ``(network, history)``.

    ``deadline`` (a ``time.perf_counter()`` value; None: none) ends the learning-rate cycle
    by then if the epochs would not (:class:`~trackserve.train.time_budget.BudgetedCycle`):
    the training stops when the cycle is complete, possibly within an epoch, and each
    epoch's figures then say how much of the cycle was done (``cycle``), in how many
    steps (``steps``) of the cycle's ``cycle_steps``.
    """
    import torch

    from .time_budget import BudgetedCycle

    from ..export.inference_forms import factored_form

    settings = config.gnn
    network = build_gnn_network(settings, events[0].features.shape[1], config.periodic_features, config.eta_columns,
                                config.geometry_columns, period=config.phi_period)
    if config.gnn_blind_columns:
        blind_hit_encoder(network, config.gnn_blind_columns)
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate)
    # Steps go through the factored form (same parameters, same function, a fifth less time
    # per step) with its training gathers and sums (cheap CPU gradients).
    stepped = factored_form(network, training=True)
    labels, counted = training_targets(events, graphs, config)
    weights = training_weights(events, graphs, labels, config)
    sectors = [SectorIndex(hit_phi(event), graph) for event, graph in zip(events, graphs)]
    half_width = np.pi / settings.sectors
    reach = half_width * (1.0 + 2.0 * settings.halo)  # the sector and its halo on both sides
    steps = settings.sectors * len(events)
    scheduler = one_cycle(optimizer, settings.learning_rate, settings.epochs * steps)
    cycle = BudgetedCycle(scheduler, settings.epochs * steps, time.perf_counter(),
                          math.inf if deadline is None else deadline)
    history, taken = [], 0
    for epoch in range(settings.epochs):
        start, losses = time.perf_counter(), []
        order = np.repeat(np.arange(len(events)), settings.sectors)[rng.permutation(steps)]
        centres = rng.uniform(-np.pi, np.pi, steps)
        network.train()
        for k, centre in progress(zip(order, centres), f"gnn epoch {epoch + 1}/{settings.epochs}", total=steps,
                                  enabled=show_progress):
            hits, local, rows = sectors[k].subgraph(centre, reach)
            in_loss = sector_loss_mask(sectors[k].phi[hits], local, centre, half_width, reach,
                                       None if counted[k] is None else counted[k][rows])
            if rows.size and (in_loss is None or in_loss.any()):
                step = (events[k].features[hits], local, labels[k][rows], in_loss,
                        None if weights[k] is None else weights[k][rows])
                if config.precision == "bfloat16":  # shapes that repeat (see trackserve.train.precision)
                    step = pad_step(*step)
                losses.append(classifier_step(stepped, optimizer, *step[:3], settings.positive_weight, step[3],
                                              precision=config.precision, edge_weights=step[4]))
                check_finite_loss(losses[-1], "gnn", len(losses), settings.learning_rate)
            if not cycle.advance():
                break  # the cycle is complete: its last step, or the deadline
        network.eval()
        taken += len(losses)
        figures = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
                   "seconds": time.perf_counter() - start,
                   **({} if deadline is None else {"cycle": cycle.fraction, "steps": cycle.steps_taken,
                                                   "cycle_steps": cycle.total_steps}),
                   **validate_gnn(network, validation, validation_graph, 0.5, config)}
        history.append(figures)
        report(f"gnn epoch {epoch + 1}: {format_figures(figures)}", enabled=show_progress)
        if cycle.done:
            break
    check_trained("gnn", taken, graphs)
    return network, history
