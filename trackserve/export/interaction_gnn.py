"""The interaction network edge classifier (ExaTrkX / ACORN ``InteractionGNN``).

``forward(features[N, F], edge_index[2, E]) -> logits[E]``::

    x = node_encoder(features)                                 # [N, hidden]
    e = edge_encoder(cat[x[start], x[end] (, d)])              # [E, hidden]
        (edge_differences: d = the hits' scaled feature differences, pair_differences)
    repeat n_graph_iters times:
        m = sum of e into end                                  # [N, hidden]
            (bidirectional_messages: cat[sum of e into end, sum of e into start])
        x' = node_network(cat[x, m])          (+ x when residual)
        y  = x' if edge_update_uses_new_nodes else x
        e' = edge_network(cat[y[start], y[end], e])  (+ e when residual)
        x, e = x', e'
    logits = output_edge_classifier(cat[x[start], x[end], e])

The classic ExaTrkX residual version is ``residual=True, bidirectional_messages=False,
edge_update_uses_new_nodes=False``; ACORN's is ``residual=False,
bidirectional_messages=True, edge_update_uses_new_nodes=True`` with LayerNorms
without affine parameters (``layer_norm_affine=False``). Parameter names are theirs
(``node_encoder``, ``edge_encoder``, ``node_network``, ``edge_network``,
``output_edge_classifier``), each a :func:`~trackserve.export.mlp.make_mlp` Sequential.
"""

from __future__ import annotations

import torch

from .derived import DerivedEta, PairGeometry, check_derived_eta, check_pair_geometry
from .mlp import make_mlp, pair_differences
from .network_base import ConfigurableNetwork, positive_int
from .scatter import scatter_sum


class InteractionGNN(ConfigurableNetwork):
    """Interaction network: node and edge MLPs updated over several message-passing steps.

    Config: ``in_channels``, ``hidden``, ``n_graph_iters``, ``nb_node_layer``,
    ``nb_edge_layer``, ``hidden_activation`` (default ``"ReLU"``),
    ``output_activation`` (of the encoders and of the node and edge networks; default
    none), ``layer_norm`` (default on), ``layer_norm_affine`` (default on),
    ``output_layer_norm`` (a LayerNorm before the output activation; default None: when
    ``layer_norm``, as ExaTrkX builds it; ACORN's InteractionGNN has none there: False),
    ``residual`` (default on), ``bidirectional_messages`` (default off),
    ``edge_update_uses_new_nodes`` (default off), ``edge_differences`` with
    ``periodic_features``, ``period`` and ``difference_scale`` (default off, as for the
    filter), ``derived_eta`` and ``pair_geometry`` (default off; see
    :mod:`~trackserve.export.derived`; the edge geometry joins the edge encoder's input).
    """

    kind = "gnn"
    architecture = "InteractionGNN"
    REQUIRED = ("in_channels", "hidden", "n_graph_iters", "nb_node_layer", "nb_edge_layer")
    ADDED_KEYS = ("output_layer_norm",)
    DEFAULTS = {
        "hidden_activation": "ReLU",
        "output_activation": None,
        "layer_norm": True,
        "layer_norm_affine": True,
        "output_layer_norm": None,
        "residual": True,
        "bidirectional_messages": False,
        "edge_update_uses_new_nodes": False,
        "edge_differences": False,
        "periodic_features": [],
        "period": 2.0,
        "difference_scale": 1.0,
        "derived_eta": None,
        "pair_geometry": None,
    }

    def __init__(self, **hyperparameters):
        super().__init__(**hyperparameters)
        config = self._config
        for name in ("in_channels", "hidden", "nb_node_layer", "nb_edge_layer"):
            positive_int(config, name, self.architecture)
        positive_int(config, "n_graph_iters", self.architecture, minimum=0)
        hidden = config["hidden"]
        self.n_graph_iters = config["n_graph_iters"]
        self.residual = bool(config["residual"])
        self.bidirectional_messages = bool(config["bidirectional_messages"])
        self.edge_update_uses_new_nodes = bool(config["edge_update_uses_new_nodes"])

        def mlp(input_size: int, sizes: list[int], output_activation: str | None):
            return make_mlp(
                input_size, sizes,
                hidden_activation=config["hidden_activation"], output_activation=output_activation,
                layer_norm=bool(config["layer_norm"]), layer_norm_affine=bool(config["layer_norm_affine"]),
                output_layer_norm=config["output_layer_norm"],
            )

        config["derived_eta"] = check_derived_eta(config["derived_eta"], config["in_channels"], self.architecture)
        self.derived = DerivedEta(config["derived_eta"])
        in_width = self.derived.width(config["in_channels"])
        nodes, edges, out = [hidden] * config["nb_node_layer"], [hidden] * config["nb_edge_layer"], config["output_activation"]
        self.node_encoder = mlp(in_width, nodes, out)
        self.edge_differences = bool(config["edge_differences"])
        self.periodic_features = [int(i) for i in config["periodic_features"]]
        self.period = float(config["period"])
        self.difference_scale = float(config["difference_scale"])
        config["pair_geometry"] = check_pair_geometry(config["pair_geometry"], config["in_channels"], self.architecture)
        self.geometry = PairGeometry(config["pair_geometry"])
        extra = (in_width if self.edge_differences else 0) + self.geometry.width()
        self.edge_encoder = mlp(2 * hidden + extra, edges, out)
        self.node_network = mlp((3 if self.bidirectional_messages else 2) * hidden, nodes, out)
        self.edge_network = mlp(3 * hidden, edges, out)
        self.output_edge_classifier = mlp(3 * hidden, edges + [1], None)

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """GNN logits ``[E]`` for the edges ``edge_index[2, E]`` (int64) between hits ``features[N, F]``."""
        start, end = edge_index[0], edge_index[1]
        features = self.derived(features)
        nodes = self.node_encoder(features)
        encoder_inputs = [nodes[start], nodes[end]]
        if self.edge_differences:
            encoder_inputs.append(
                pair_differences(features, edge_index, self.periodic_features, self.period, self.difference_scale)
            )
        if self.geometry.spec is not None:
            encoder_inputs.append(self.geometry(features, edge_index))
        edges = self.edge_encoder(torch.cat(encoder_inputs, dim=1))

        def edge_network(source, edges):
            return self.edge_network(torch.cat([source[start], source[end], edges], dim=1))

        nodes, edges = self.pass_messages(nodes, edges, edge_index, edge_network)
        return self.output_edge_classifier(torch.cat([nodes[start], nodes[end], edges], dim=1)).squeeze(-1)

    def pass_messages(self, nodes: torch.Tensor, edges: torch.Tensor, edge_index: torch.Tensor, edge_network,
                      sum_into=scatter_sum, node_network=None):
        """The ``n_graph_iters`` message-passing steps from encoded ``nodes`` and ``edges``.

        ``edge_network(source_nodes, edges)`` computes the edge MLP's output (the plain
        concatenation here, the factored form in :mod:`~trackserve.export.inference_forms`);
        ``node_network([nodes, messages_in(, messages_out)])`` the node MLP's output on the
        concatenation of those parts (default: the plain concatenation);
        ``sum_into(messages, index, like)`` aggregates (:func:`scatter_sum`, or the same sum
        with a cheaper gradient for training steps).
        """
        start, end = edge_index[0], edge_index[1]
        if node_network is None:
            def node_network(parts):
                return self.node_network(torch.cat(parts, dim=1))
        for _ in range(self.n_graph_iters):
            parts = [nodes, sum_into(edges, end, nodes)]
            if self.bidirectional_messages:
                parts.append(sum_into(edges, start, nodes))
            new_nodes = node_network(parts)
            if self.residual:
                new_nodes = new_nodes + nodes
            source = new_nodes if self.edge_update_uses_new_nodes else nodes
            new_edges = edge_network(source, edges)
            if self.residual:
                new_edges = new_edges + edges
            nodes, edges = new_nodes, new_edges
        return nodes, edges
