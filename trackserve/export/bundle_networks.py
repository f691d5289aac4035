"""The torch networks of a bundle, rebuilt from their architecture, config and saved weights."""

from __future__ import annotations

from ..bundle import Bundle, file_sha256, load_bundle
from ..errors import BundleError
from .networks import build_network

#: What to do about a bundle's torch weights file that is missing, changed or wrong.
_REPAIR = ("restore the file from a copy of the bundle, or export the network into the bundle from its checkpoint "
           "(trackserve export NET.pt --bundle {directory} --network {name})")


def load_torch_network(bundle: Bundle | str, name: str):
    """The torch module of network ``name`` (``embedding``, ``filter``, ``gnn``) of a bundle, in eval mode.

    Needs the network's ``architecture`` and its ``weights`` file (written by
    :func:`trackserve.bundle.make_bundle`); a bundle without them can only be run from
    its ONNX files, and this raises :class:`BundleError` saying so. The weights file must
    have the sha256 ``pipeline.json`` records and fit the architecture (the bundle may have
    been loaded without checking its files): otherwise a one-line :class:`BundleError`.
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
    path = _checked_weights_file(bundle, name)
    where = f"network {name!r} of bundle {bundle.directory}: its torch weights {entry.weights['file']}"
    repair = _REPAIR.format(directory=bundle.directory, name=name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError and others, with many lines
        text = str(error).strip()
        raise BundleError(f"{where} cannot be read by torch.load ({type(error).__name__}: "
                          f"{text.splitlines()[0] if text else ''}); {repair}") from None
    problem = _state_problem(module, state)
    if problem:
        raise BundleError(f"{where} do not fit its {entry.architecture} ({problem}); {repair}")
    module.load_state_dict(state)
    return module.eval()


def weights_fit(bundle: Bundle, name: str, architecture: str | None, config: dict) -> bool:
    """Whether network ``name``'s torch weights load into the network ``architecture`` with
    ``config`` (False when that network cannot be built or the weights cannot be read)."""
    import torch

    try:
        module = build_network(architecture, config)
        state = torch.load(_checked_weights_file(bundle, name), map_location="cpu", weights_only=True)
    except Exception:  # an unknown architecture or config, unreadable weights: they do not fit
        return False
    return _state_problem(module, state) is None


def _state_problem(module, state) -> str | None:
    """Why ``state`` cannot be loaded into ``module`` (keys or shapes, a few named), or None."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a state dict"
    expected = module.state_dict()
    problems = []
    for label, names in (("missing", sorted(set(expected) - set(state))), ("unexpected", sorted(set(state) - set(expected)))):
        if names:
            problems.append(f"{len(names)} {label} key(s): {', '.join(names[:3])}" + (", ..." if len(names) > 3 else ""))
    shapes = [f"{key} {tuple(getattr(state[key], 'shape', ('not a tensor',)))} instead of {tuple(expected[key].shape)}"
              for key in sorted(set(state) & set(expected))
              if getattr(state[key], "shape", None) != expected[key].shape]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {', '.join(shapes[:3])}" + (", ..." if len(shapes) > 3 else ""))
    return "; ".join(problems) or None


def _checked_weights_file(bundle: Bundle, name: str):
    """The path of network ``name``'s torch weights; BundleError when it is missing, a
    directory, or its sha256 is not the one ``pipeline.json`` records."""
    weights = bundle.networks[name].weights
    path = bundle.directory / weights["file"]
    where = f"network {name!r} of bundle {bundle.directory}: its torch weights {weights['file']}"
    if path.is_dir():
        problem = "are a directory, not a file"
    elif not path.is_file():
        problem = "do not exist"
    elif file_sha256(path) != weights["sha256"]:
        problem = f"have sha256 {file_sha256(path)}, pipeline.json records {weights['sha256']} (changed or damaged)"
    else:
        return path
    raise BundleError(f"{where} {problem}; " + _REPAIR.format(directory=bundle.directory, name=name))


def recorded_config(weights_path) -> tuple[str, str, dict] | None:
    """``(bundle directory, network name, config)`` when ``weights_path`` is a bundle's own
    torch weights file, as that bundle's ``pipeline.json`` (beside it) records it: the same
    file name and sha256. None otherwise (a file elsewhere, or changed since). Such a file is
    a plain state dict, which tells neither the network's derived inputs (derived eta, pair
    differences, edge geometry) nor its activations: rebuilt from its layout alone it would
    be another network."""
    import json
    from pathlib import Path

    path = Path(weights_path)
    record = path.parent / "pipeline.json"
    try:
        networks = json.loads(record.read_text(encoding="utf-8")).get("networks", {})
        digest = None
        for name, entry in networks.items():
            weights = entry.get("weights") or {}
            if weights.get("file") != path.name or not isinstance(entry.get("config"), dict):
                continue
            digest = digest or file_sha256(path)
            if weights.get("sha256") == digest:
                return str(path.parent), name, entry["config"]
    except (OSError, ValueError, AttributeError):  # no bundle beside it, or not one this can read
        return None
    return None
