"""The edge filter (ExaTrkX ``VanillaFilter``): an MLP on the two hits of each edge.

``forward(features[N, F], edge_index[2, E]) -> logits[E]``. The layer order is
ExaTrkX's, which is *not* :func:`~trackserve.export.mlp.make_mlp`'s::

    h = input_layer(cat[x[start], x[end]])            # no activation after the input layer
    for layer in layers:                              # nb_layer - 1 of them
        h = layernorm(activation(layer(h)))           # one LayerNorm shared by all layers
    logits = output_layer(h)

The parameter names (``input_layer``, ``layers.i``, ``output_layer``, ``layernorm``)
are ExaTrkX's, so its state dicts load as they are. ``VanillaFilter`` also builds a
``batchnorm`` module; only its disabled form is supported (with batch statistics at
inference the scores would depend on how edges are batched).
"""

from __future__ import annotations

import torch
from torch import nn

from .derived import DerivedEta, PairGeometry, check_derived_eta, check_pair_geometry
from .mlp import activation_module, gather_pair, pair_differences
from .network_base import ConfigurableNetwork, positive_int


class EdgeFilter(ConfigurableNetwork):
    """Edge filter logits from the concatenated features of each edge's two hits.

    Config: ``in_channels`` (features per hit), ``hidden``, ``nb_layer`` (linear
    layers before the output layer, at least 1), ``activation`` (default ``"Tanh"``),
    ``layer_norm`` (default on), ``edge_differences`` (default off: also feed the two
    hits' feature differences, see :func:`~trackserve.export.mlp.pair_differences`, with
    ``periodic_features``, ``period`` and ``difference_scale``), ``derived_eta`` and
    ``pair_geometry`` (default off; see :mod:`~trackserve.export.derived`).
    """

    kind = "filter"
    architecture = "VanillaFilter"
    REQUIRED = ("in_channels", "hidden", "nb_layer")
    DEFAULTS = {"activation": "Tanh", "layer_norm": True, "edge_differences": False, "periodic_features": [],
                "period": 2.0, "difference_scale": 1.0, "derived_eta": None, "pair_geometry": None}

    def __init__(self, **hyperparameters):
        super().__init__(**hyperparameters)
        config = self._config
        for name in self.REQUIRED:
            positive_int(config, name, self.architecture)
        hidden = config["hidden"]
        self.edge_differences = bool(config["edge_differences"])
        self.periodic_features = [int(i) for i in config["periodic_features"]]
        self.period = float(config["period"])
        self.difference_scale = float(config["difference_scale"])
        config["derived_eta"] = check_derived_eta(config["derived_eta"], config["in_channels"], self.architecture)
        self.derived = DerivedEta(config["derived_eta"])
        config["pair_geometry"] = check_pair_geometry(config["pair_geometry"], config["in_channels"], self.architecture)
        self.geometry = PairGeometry(config["pair_geometry"])
        width = (3 if self.edge_differences else 2) * self.derived.width(config["in_channels"]) + self.geometry.width()
        self.input_layer = nn.Linear(width, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(config["nb_layer"] - 1))
        self.output_layer = nn.Linear(hidden, 1)
        self.activation = activation_module(config["activation"])
        self.layernorm = nn.LayerNorm(hidden) if config["layer_norm"] else None

    def forward(self, features: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Filter logits ``[E]`` for the edges ``edge_index[2, E]`` between hits ``features[N, F]``."""
        features = self.derived(features)
        inputs = gather_pair(features, edge_index)
        if self.edge_differences:
            differences = pair_differences(
                features, edge_index, self.periodic_features, self.period, self.difference_scale
            )
            inputs = torch.cat([inputs, differences], dim=1)
        if self.geometry.spec is not None:
            inputs = torch.cat([inputs, self.geometry(features, edge_index)], dim=1)
        hidden = self.input_layer(inputs)
        for layer in self.layers:
            hidden = self.activation(layer(hidden))
            if self.layernorm is not None:
                hidden = self.layernorm(hidden)
        return self.output_layer(hidden).squeeze(-1)
