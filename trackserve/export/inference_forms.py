"""Cheaper forms of a network with the same function, for the ONNX graph and for training steps.

A message-passing GNN's edge MLPs start with a ``Linear`` on ``cat[x[start], x[end], e]``
(or on ``cat[x[start], x[end]]``). Split the weight by blocks, ``W = [W_s | W_e | W_r]``,
and the product becomes::

    (x @ W_s.T)[start] + (x @ W_e.T)[end] + e @ W_r.T + b

The two node products are computed once per hit instead of once per edge, which removes
most of the first layer's multiply-adds (when edges outnumber hits) and the ``[E, 2W]``
or ``[E, 3H]`` concatenation; the bias joins the first node product (once per hit, not
once per edge):

* in an :class:`~trackserve.export.interaction_gnn.InteractionGNN`, the edge encoder, the
  edge network of every message-passing step and the output classifier. Measured on the
  default GNN: 24.4 instead of 38.1 GFLOP on a 100k-hit event; on a 1k-hit event with
  fewer than two filtered edges per hit it costs slightly more (0.101 instead of 0.088
  GFLOP); and its node network, whose first ``Linear`` on ``cat[x, messages]`` becomes one
  product per part (no ``[N, 3H]`` concatenation either);
* in a :class:`~trackserve.export.resagnn.ResAGNN` (the published service's GNN), its one
  edge network, used for the attention weights of every iteration and for the output
  logits.

:func:`factored_form` returns the factored form for those two architectures, the network
itself for everything else; :func:`inference_form` is the same in eval mode, the module
to hand to ``torch.onnx.export``. The factored module shares the network's parameters
(no copy): training takes its steps through it (``trackserve train``: on the default
GNN's sector subgraphs a step with its gradient took 65 instead of 81 ms on this
project's 2-core machine) and the trained network is the original module. The export is
validated against the original network, so a mistake here cannot reach a bundle.
Summation order differs from the original, so the outputs agree to float32 rounding.

On narrow networks ONNX Runtime's CPU cost is mostly per row, not per multiply-add: on the
project's Intel machine a broadcast bias ``Add`` on ``[2775, 32]`` took about 50 us (a
same-shape ``Add`` 16), a ``LayerNormalization`` about 100. Moving the edge MLPs' biases
to the hits and splitting the node network's input took the default bundle's pruner from
6.03 to 5.84 ms and its GNN from 9.08 to 8.49 ms (one thread, ONNX Runtime's own profile,
a published benchmark event's 2,775 filtered edges; ``benchmarks/RESULTS.md`` has the
whole pipeline).

``factored_form(network, training=True)`` is the form training steps go through: the
same again, with its row gathers and message sums done by
:mod:`~trackserve.export.training_rows` (cheap CPU gradients; 54 instead of 65 ms a
step on those subgraphs). It cannot be exported; :func:`inference_form` never uses it.
"""

from __future__ import annotations

import torch
from torch import nn

from .interaction_gnn import InteractionGNN
from .mlp import pair_differences
from .resagnn import ResAGNN
from .scatter import scatter_sum
from .training_rows import gather_rows, sum_rows


def _index_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]``: plain indexing, the gather that exports (ONNX ``Gather``)."""
    return values[index]


class _FactoredInput(nn.Module):
    """The first ``Linear`` of an MLP on ``cat[nodes[start], nodes[end], rest]``, factored; then the MLP's other layers."""

    def __init__(self, mlp: nn.Sequential, hidden: int, gather=None):
        super().__init__()
        first = mlp[0]
        if not isinstance(first, nn.Linear) or first.in_features < 2 * hidden:
            raise ValueError(f"cannot factor an MLP whose first layer is {first!r} for node width {hidden}")
        self.first = first
        self.hidden = hidden
        self.rest = mlp[1:]
        self.gather = gather or _index_rows

    def forward(self, nodes: torch.Tensor, start: torch.Tensor, end: torch.Tensor, rest: torch.Tensor | None) -> torch.Tensor:
        """The MLP's output for the edges ``(start, end)`` with per-edge inputs ``rest`` (or none)."""
        weight, hidden = self.first.weight, self.hidden
        from_start = nodes @ weight[:, :hidden].t()
        if self.first.bias is not None:  # added once per hit, not once per edge
            from_start = from_start + self.first.bias
        from_end = nodes @ weight[:, hidden:2 * hidden].t()
        out = self.gather(from_start, start) + self.gather(from_end, end)
        if rest is not None:
            out = out + rest @ weight[:, 2 * hidden:].t()
        return self.rest(out)


class _SplitInput(nn.Module):
    """The first ``Linear`` of an MLP on ``cat[parts]``, as one product per part; then the MLP's other layers.

    ``Linear(cat[a, b, c]) = a @ W_a.T + b @ W_b.T + c @ W_c.T + bias``: no concatenation
    is written (in ONNX Runtime on the CPU, a ``Concat`` of the node network's ``[N, 3H]``
    input cost about as much as its product).
    """

    def __init__(self, mlp: nn.Sequential, widths: tuple[int, ...]):
        super().__init__()
        first = mlp[0]
        if not isinstance(first, nn.Linear) or first.in_features != sum(widths):
            raise ValueError(f"cannot split an MLP whose first layer is {first!r} into inputs of widths {widths}")
        self.first = first
        self.bounds = [0]
        for width in widths:
            self.bounds.append(self.bounds[-1] + int(width))
        self.rest = mlp[1:]

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The MLP's output on ``cat(parts, dim=1)``."""
        if len(parts) != len(self.bounds) - 1:
            raise ValueError(f"expected {len(self.bounds) - 1} input parts, got {len(parts)}")
        weight = self.first.weight
        out = parts[0] @ weight[:, self.bounds[0]:self.bounds[1]].t()
        if self.first.bias is not None:
            out = out + self.first.bias
        for index in range(1, len(parts)):
            out = out + parts[index] @ weight[:, self.bounds[index]:self.bounds[index + 1]].t()
        return self.rest(out)


class _FactoredForm(nn.Module):
    """What the factored forms share: the wrapped network (its parameters), its kind and config."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    @property
    def kind(self) -> str:
        """The pipeline role (``"gnn"``), as the wrapped network's."""
        return self.network.kind

    @property
    def config(self) -> dict:
        """The wrapped network's config."""
        return self.network.config


class FactoredInteractionGNN(_FactoredForm):
    """An :class:`InteractionGNN`'s forward with its edge MLPs' first layers factored (same parameters)."""

    def __init__(self, network: InteractionGNN, *, training: bool = False):
        super().__init__(network)
        hidden = network.config["hidden"]
        gather = gather_rows if training else None
        self.sum_into = sum_rows if training else scatter_sum
        self.edge_encoder = _FactoredInput(network.edge_encoder, hidden, gather)
        self.edge_network = _FactoredInput(network.edge_network, hidden, gather)
        self.output_edge_classifier = _FactoredInput(network.output_edge_classifier, hidden, gather)
        self.node_network = _SplitInput(network.node_network, (hidden,) * (3 if network.bidirectional_messages else 2))

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """GNN logits ``[E]``, the same function as the wrapped network's ``forward``."""
        net = self.network
        start, end = edge_index[0], edge_index[1]
        features = net.derived(features)
        nodes = net.node_encoder(features)
        per_edge = []
        if net.edge_differences:
            per_edge.append(pair_differences(features, edge_index, net.periodic_features, net.period, net.difference_scale))
        if net.geometry.spec is not None:
            per_edge.append(net.geometry(features, edge_index))
        rest = torch.cat(per_edge, dim=1) if len(per_edge) > 1 else (per_edge[0] if per_edge else None)
        edges = self.edge_encoder(nodes, start, end, rest)
        nodes, edges = net.pass_messages(nodes, edges, edge_index,
                                         lambda source, edges: self.edge_network(source, start, end, edges),
                                         self.sum_into, self.node_network)
        return self.output_edge_classifier(nodes, start, end, edges).squeeze(-1)


class FactoredResAGNN(_FactoredForm):
    """A :class:`ResAGNN`'s forward with its edge network's first layer factored (same parameters)."""

    def __init__(self, network: ResAGNN, *, training: bool = False):
        super().__init__(network)
        width = network.config["hidden"] + network.config["in_channels"]
        self.edge_network = _FactoredInput(network.edge_network.network, width, gather_rows if training else None)
        if self.edge_network.first.in_features != 2 * width:
            raise ValueError(f"a ResAGNN edge network reads cat[h[start], h[end]] of width {2 * width}; "
                             f"this one's first layer reads {self.edge_network.first.in_features}")

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """GNN logits ``[E]``, the same function as the wrapped network's ``forward``."""
        net = self.network
        start, end = edge_index[0], edge_index[1]
        hidden = torch.cat([net.input_network(features), features], dim=-1)
        for _ in range(net.n_graph_iters):
            weights = torch.sigmoid(self.edge_network(hidden, start, end, None).squeeze(-1))
            update = net.node_network(hidden, weights, edge_index)
            hidden = hidden + torch.cat([update, features], dim=-1)
        return self.edge_network(hidden, start, end, None).squeeze(-1)


def factored_form(module: nn.Module, *, training: bool = False) -> nn.Module:
    """``module``'s factored form sharing its parameters when there is one, else ``module`` itself.

    ``training=True``: the form to take optimiser steps through, whose row gathers and
    message sums have cheap CPU gradients (:mod:`~trackserve.export.training_rows`); the
    same function, but not exportable to ONNX.
    """
    if type(module) is InteractionGNN:
        return FactoredInteractionGNN(module, training=training)
    if type(module) is ResAGNN:
        return FactoredResAGNN(module, training=training)
    return module


def inference_form(module: nn.Module) -> nn.Module:
    """The module to export for ``module``: its factored form in eval mode when there is one, else ``module`` itself."""
    form = factored_form(module)
    return form if form is module else form.eval()
