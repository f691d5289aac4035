"""The registry of network architectures: name to class, and rebuilding from a config.

A bundle records each network's ``architecture`` and ``config``;
:func:`build_network` turns them back into the torch module.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointImportError
from .embedding import EmbeddingNetwork
from .filter import EdgeFilter
from .interaction_gnn import InteractionGNN
from .network_base import ConfigurableNetwork
from .resagnn import ResAGNN

#: Architecture name -> network class.
ARCHITECTURES: dict[str, type[ConfigurableNetwork]] = {
    cls.architecture: cls for cls in (EmbeddingNetwork, EdgeFilter, ResAGNN, InteractionGNN)
}


def build_network(architecture: str, config: dict[str, Any]) -> ConfigurableNetwork:
    """The network ``architecture`` (``"LayerlessEmbedding"``, ``"VanillaFilter"``, ``"ResAGNN"``,
    ``"InteractionGNN"``) built from its ``config``, with fresh weights."""
    try:
        cls = ARCHITECTURES[architecture]
    except KeyError:
        raise CheckpointImportError(
            f"unknown network architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}"
        ) from None
    return cls.from_config(config)
