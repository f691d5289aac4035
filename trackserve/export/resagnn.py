"""The attention GNN of the ExaTrkX service (``ResAGNN``), computation for computation.

``forward(features[N, F], edge_index[2, E]) -> logits[E]``::

    x0 = features
    h  = cat[input_network(x0), x0]                              # width hidden + F
    repeat n_graph_iters times:
        w = sigmoid(edge_network(cat[h[start], h[end]]))         # one weight per edge
        m = sum over edges of w * h[start] into end              # messages in both directions
          + sum over edges of w * h[end]   into start
        h = h + cat[node_network(cat[m, h]), x0]                 # residual update
    logits = edge_network(cat[h[start], h[end]])

``node_input_order`` chooses ``cat[m, h]`` (``"messages_first"``: the ExaTrkX
Lightning ``ResAGNN`` and the service's ``gnn.pt``) or ``cat[h, m]``
(``"nodes_first"``: the ctd2022 ``torchgnn.ResAGNN``, ``gnn_model.pt``). The input
network ends with LayerNorm and activation; the edge and node networks end with a
bare Linear. Parameter names are the ExaTrkX Lightning ones (``input_network.i``,
``edge_network.network.i``, ``node_network.network.i``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CheckpointImportError
from .mlp import gather_pair, make_mlp
from .network_base import ConfigurableNetwork, positive_int
from .scatter import scatter_sum

NODE_INPUT_ORDERS = ("messages_first", "nodes_first")


class _EdgeNetwork(nn.Module):
    """Edge logits ``[E]`` from the hidden features of both hits (ExaTrkX ``EdgeNetwork``)."""

    def __init__(self, network: nn.Sequential):
        super().__init__()
        self.network = network

    def forward(self, hidden: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """One logit per edge."""
        return self.network(gather_pair(hidden, edge_index)).squeeze(-1)


class _NodeNetwork(nn.Module):
    """New node features from the attention-weighted messages (ExaTrkX ``NodeNetwork``)."""

    def __init__(self, network: nn.Sequential, messages_first: bool):
        super().__init__()
        self.network = network
        self.messages_first = messages_first

    def forward(self, hidden: torch.Tensor, weights: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """``network(cat[messages, hidden])`` (or ``cat[hidden, messages]``), ``[N, hidden]``."""
        start, end = edge_index[0], edge_index[1]
        weights = weights.unsqueeze(1)
        messages = scatter_sum(weights * hidden[start], end, hidden) + scatter_sum(weights * hidden[end], start, hidden)
        parts = [messages, hidden] if self.messages_first else [hidden, messages]
        return self.network(torch.cat(parts, dim=1))


class ResAGNN(ConfigurableNetwork):
    """Residual attention GNN edge classifier (the published ExaTrkX service's GNN).

    Config: ``in_channels``, ``hidden``, ``n_graph_iters``, ``nb_node_layer`` (node
    network depth), ``nb_edge_layer`` (edge network hidden layers), ``nb_input_layer``
    (input network depth; default ``nb_node_layer``), ``edge_hidden`` (edge network
    width; default ``hidden + in_channels``), ``hidden_activation`` (default
    ``"ReLU"``), ``input_hidden_activation`` (of the input network's hidden layers; its
    output takes ``hidden_activation``; default None: ``hidden_activation``, while
    ExaTrkX's own ResAGNN has ``"ReLU"`` there, what its import sets), ``layer_norm``
    (default on), ``node_input_order`` (default ``"messages_first"``).
    """

    kind = "gnn"
    architecture = "ResAGNN"
    REQUIRED = ("in_channels", "hidden", "n_graph_iters", "nb_node_layer", "nb_edge_layer")
    ADDED_KEYS = ("input_hidden_activation",)
    DEFAULTS = {
        "nb_input_layer": None,
        "edge_hidden": None,
        "hidden_activation": "ReLU",
        "input_hidden_activation": None,
        "layer_norm": True,
        "node_input_order": "messages_first",
    }

    def __init__(self, **hyperparameters):
        super().__init__(**hyperparameters)
        config = self._config
        if config["nb_input_layer"] is None:
            config["nb_input_layer"] = config["nb_node_layer"]
        if config["edge_hidden"] is None:
            config["edge_hidden"] = config["hidden"] + config["in_channels"]
        for name in ("in_channels", "hidden", "nb_node_layer", "nb_input_layer", "edge_hidden"):
            positive_int(config, name, self.architecture)
        positive_int(config, "n_graph_iters", self.architecture, minimum=0)
        positive_int(config, "nb_edge_layer", self.architecture, minimum=0)
        if config["node_input_order"] not in NODE_INPUT_ORDERS:
            raise CheckpointImportError(
                f"ResAGNN config: node_input_order must be one of {', '.join(NODE_INPUT_ORDERS)}, "
                f"got {config['node_input_order']!r}"
            )
        in_channels, hidden = config["in_channels"], config["hidden"]
        width = hidden + in_channels
        activation, layer_norm = config["hidden_activation"], bool(config["layer_norm"])
        self.n_graph_iters = config["n_graph_iters"]
        self.input_network = make_mlp(
            in_channels, [hidden] * config["nb_input_layer"],
            hidden_activation=config["input_hidden_activation"] or activation, output_activation=activation,
            layer_norm=layer_norm,
        )
        self.edge_network = _EdgeNetwork(make_mlp(
            2 * width, [config["edge_hidden"]] * config["nb_edge_layer"] + [1],
            hidden_activation=activation, output_activation=None, layer_norm=layer_norm,
        ))
        self.node_network = _NodeNetwork(
            make_mlp(2 * width, [hidden] * config["nb_node_layer"],
                     hidden_activation=activation, output_activation=None, layer_norm=layer_norm),
            messages_first=config["node_input_order"] == "messages_first",
        )

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """GNN logits ``[E]`` for the edges ``edge_index[2, E]`` (int64) between hits ``features[N, F]``."""
        hidden = torch.cat([self.input_network(features), features], dim=-1)
        for _ in range(self.n_graph_iters):
            weights = torch.sigmoid(self.edge_network(hidden, edge_index))
            update = self.node_network(hidden, weights, edge_index)
            hidden = hidden + torch.cat([update, features], dim=-1)
        return self.edge_network(hidden, edge_index)
