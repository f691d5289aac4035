"""The torch networks of a bundle, rebuilt from their architecture, config and saved weights."""

from __future__ import annotations

from ..bundle import Bundle, load_bundle
from ..errors import BundleError
from .networks import build_network


def load_torch_network(bundle: Bundle | str, name: str):
    """The torch module of network ``name`` (``embedding``, ``filter``, ``gnn``) of a bundle, in eval mode.

    Needs the network's ``architecture`` and its ``weights`` file (written by
    :func:`trackserve.bundle.make_bundle`); a bundle without them can only be run from
    its ONNX files, and this raises :class:`BundleError` saying so.
    """
    import torch

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    entry = bundle.networks.get(name)
    if entry is None:
        raise BundleError(f"the bundle has no network {name!r}; it has {', '.join(bundle.networks)}")
    if entry.weights is None or entry.architecture is None:
        raise BundleError(
            f"network {name!r} of bundle {bundle.directory} has no torch weights or architecture recorded; "
            "it can be run from ONNX but not rebuilt in torch (re-create the bundle with make_bundle)"
        )
    module = build_network(entry.architecture, entry.config)
    state = torch.load(bundle.directory / entry.weights["file"], map_location="cpu", weights_only=True)
    module.load_state_dict(state)
    return module.eval()
