"""What every trackserve network shares: a JSON-ready ``config`` and ``from_config``.

A bundle stores a network as its ONNX file plus its config; ``from_config(config)``
rebuilds the torch module (for re-export or fine-tuning) and ``network.config`` gives
the dict back. Each network class declares its hyperparameters once, in ``DEFAULTS``
(optional ones with their default) and ``REQUIRED`` (no default).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from torch import nn

from ..errors import CheckpointImportError
from ..values import shown
from .limits import MAX_DEPTH


class ConfigurableNetwork(nn.Module):
    """Base class of the networks: hyperparameters in, ``config`` out.

    Subclasses set ``kind`` (the pipeline role and ONNX export spec: ``"embedding"``,
    ``"filter"`` or ``"gnn"``), ``architecture`` (the ExaTrkX/ACORN class it
    reproduces), ``REQUIRED`` and ``DEFAULTS``, and build their layers in ``__init__``
    from the keyword arguments.
    """

    kind: ClassVar[str] = ""
    architecture: ClassVar[str] = ""
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: Keys of ``DEFAULTS`` added after bundles were written: left out of :attr:`config` while
    #: at their default, so that such a network's config is the one its bundle records (a
    #: re-export is not taken for another network) and earlier trackserve versions, which do
    #: not know the key, still read the bundles written since.
    ADDED_KEYS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **hyperparameters: Any):
        super().__init__()
        self._config = self.resolve_config(hyperparameters)

    @classmethod
    def resolve_config(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The full config from ``given``: defaults filled in; unknown or missing keys raise."""
        known = set(cls.REQUIRED) | set(cls.DEFAULTS)
        unknown = sorted(set(given) - known)
        missing = [name for name in cls.REQUIRED if name not in given]
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown {', '.join(unknown)}")
            raise CheckpointImportError(
                f"{cls.architecture} config: {'; '.join(parts)} (accepted keys: {', '.join(sorted(known))})"
            )
        config = {name: given[name] for name in cls.REQUIRED}
        config.update({name: given.get(name, default) for name, default in cls.DEFAULTS.items()})
        return copy.deepcopy(config)  # the caller's lists are not the network's

    @property
    def config(self) -> dict[str, Any]:
        """The hyperparameters this network was built with (a copy; JSON-serialisable), less
        the :attr:`ADDED_KEYS` left at their default."""
        return {key: copy.deepcopy(value) for key, value in self._config.items()
                if not (key in self.ADDED_KEYS and value == self.DEFAULTS[key])}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ConfigurableNetwork":
        """Build the network from a config dict as returned by :attr:`config`."""
        return cls(**config)

    def extra_repr(self) -> str:
        """The architecture name and config, shown by ``print(network)``."""
        return f"{self.architecture}: " + ", ".join(f"{key}={value!r}" for key, value in self._config.items())


def positive_int(config: dict[str, Any], name: str, architecture: str, minimum: int = 1) -> int:
    """``config[name]`` as an int, at least ``minimum`` and, for a count of layers or
    message-passing iterations (``nb_*``, ``n_graph_iters``), at most :data:`MAX_DEPTH`; a
    clear error otherwise."""
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CheckpointImportError(f"{architecture} config: {name} must be an integer >= {minimum}, got {shown(value)}")
    if (name.startswith("nb_") or name == "n_graph_iters") and value > MAX_DEPTH:
        raise CheckpointImportError(f"{architecture} config: {name} {shown(value)} is beyond the {MAX_DEPTH} layers or "
                                    "iterations trackserve builds (the published ExaTrkX networks use up to 8); check "
                                    "the hyperparameters")
    return value
