"""The metric-learning embedding network (ExaTrkX ``LayerlessEmbedding``, ACORN ``MetricLearning``).

``forward(features[N, F]) -> embedding[N, D]``. The network is one MLP
``F -> emb_hidden x nb_layer -> emb_dim`` with ``activation`` after every hidden layer
and a bare last layer; the output is L2-normalised per hit when ``normalize`` is set
(ExaTrkX does it when its ``regime`` contains ``"norm"``; the published service's
embedding does not, its regime is ``[rp, hnm]``). ``layer_norm`` inserts LayerNorms as
the newer ExaTrkX and ACORN versions do; the original ``LayerlessEmbedding`` has none
(its ``norm`` module exists but is never applied) and uses ``Tanh``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .derived import DerivedEta, check_derived_eta
from .mlp import make_mlp
from .network_base import ConfigurableNetwork, positive_int


class EmbeddingNetwork(ConfigurableNetwork):
    """Hit features to embedding coordinates, for the fixed-radius graph.

    Config: ``in_channels``, ``emb_hidden``, ``nb_layer`` (hidden layers), ``emb_dim``,
    ``activation`` (default ``"Tanh"``), ``layer_norm`` (default off),
    ``layer_norm_affine`` (default on), ``normalize`` (L2 normalisation, default off),
    ``derived_eta`` (default off; see :mod:`~trackserve.export.derived`).
    Parameters live in ``network`` (a :func:`~trackserve.export.mlp.make_mlp` Sequential).
    """

    kind = "embedding"
    architecture = "LayerlessEmbedding"
    REQUIRED = ("in_channels", "emb_hidden", "nb_layer", "emb_dim")
    DEFAULTS = {"activation": "Tanh", "layer_norm": False, "layer_norm_affine": True, "normalize": False,
                "derived_eta": None}

    def __init__(self, **hyperparameters):
        super().__init__(**hyperparameters)
        config = self._config
        for name in self.REQUIRED:
            positive_int(config, name, self.architecture)
        self.normalize = bool(config["normalize"])
        config["derived_eta"] = check_derived_eta(config["derived_eta"], config["in_channels"], self.architecture)
        self.derived = DerivedEta(config["derived_eta"])
        self.network = make_mlp(
            self.derived.width(config["in_channels"]),
            [config["emb_hidden"]] * config["nb_layer"] + [config["emb_dim"]],
            hidden_activation=config["activation"],
            output_activation=None,
            layer_norm=bool(config["layer_norm"]),
            layer_norm_affine=bool(config["layer_norm_affine"]),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The embedding ``[N, emb_dim]`` of hit features ``[N, in_channels]``."""
        embedding = self.network(self.derived(features))
        if self.normalize:
            embedding = F.normalize(embedding, p=2.0, dim=1)
        return embedding
