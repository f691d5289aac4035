"""Importing trained ExaTrkX / ACORN checkpoints into trackserve's network definitions.

:func:`import_checkpoint` reads the file (:mod:`.checkpoint_reader`), decides which
network it holds, renames the keys of the known layouts to ours, derives the
hyperparameters from the weight shapes (checked against the training
hyperparameters where those are given), builds the network and loads the weights
strictly: every parameter must be matched by name and shape, and whatever cannot be
mapped is listed in one :class:`~trackserve.errors.CheckpointImportError`.

What the weights cannot tell comes from the hyperparameters (``--hparams`` or the
Lightning checkpoint's own), or from the TorchScript module (its activations and
``n_graph_iters``), or, last, from the defaults of the original code, which the
docstring of each network states; settings taken by such a convention for a checkpoint
without a module to compare with are said in an :class:`ImportNote`. A whole trackserve
config as the hyperparameters (a bundle's ``pipeline.json`` entry) builds the network it
describes, whose weights must then fit it key for key.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointImportError, MissingHyperparameterError
from .checkpoint_reader import CheckpointContents, class_name, read_checkpoint, read_hparams_yaml
from .embedding import EmbeddingNetwork
from .filter import EdgeFilter
from .interaction_gnn import InteractionGNN
from .mlp import ACTIVATIONS
from .network_base import ConfigurableNetwork
from .onnx_export import max_abs_difference
from .resagnn import ResAGNN
from .specs import get_spec


class ImportNote(UserWarning):
    """What an import could not check or had to assume (``trackserve import`` and ``export``
    print these as notes): a rebuilt network not compared with its TorchScript module, or a
    setting the weights cannot show taken from the original code's convention."""


#: Accepted values of ``kind`` and the architecture each one means (``"gnn"``: either GNN, detected).
KINDS = {"embedding": "LayerlessEmbedding", "filter": "VanillaFilter", "gnn": None,
         "resagnn": "ResAGNN", "interaction": "InteractionGNN"}

#: ExaTrkX / ACORN class names (hparams ``name`` or ACORN's ``model``, TorchScript
#: ``original_name``) -> our architecture.
_CLASS_NAMES = {
    "LayerlessEmbedding": "LayerlessEmbedding", "MetricLearning": "LayerlessEmbedding",
    "VanillaFilter": "VanillaFilter",
    "ResAGNN": "ResAGNN",
    "InteractionGNN": "InteractionGNN",
    # trackserve's own classes (a traced or scripted module of one)
    "EmbeddingNetwork": "LayerlessEmbedding", "EdgeFilter": "VanillaFilter",
}
#: Classes of those codebases trackserve has no definition for, and what they are.
_UNSUPPORTED_CLASSES = {
    "InteractionGNN2": "ACORN's InteractionGNN2 (the L2IT interaction network, another layout)",
    "Filter": "ACORN's Filter (its own MLP layout under 'net.')",
}
#: Message aggregations the GNNs compute (a sum over the edges into a hit).
_SUMMED = (None, "sum", "add", ["sum"], ["add"], ("sum",), ("add",))


def import_checkpoint(
    path: str | Path,
    kind: str | None = None,
    hparams: dict[str, Any] | str | Path | None = None,
    *,
    trust_pickle: bool = False,
) -> ConfigurableNetwork:
    """The trackserve network holding the weights of the checkpoint at ``path``, in eval mode.

    ``kind`` is ``"embedding"``, ``"filter"``, ``"gnn"`` (either GNN), ``"resagnn"`` or
    ``"interaction"``; ``None`` detects it from the class name, hyperparameters or keys.
    ``hparams`` (a dict or a YAML file such as ``hparams_GNN.yaml``) overrides the
    checkpoint's own hyperparameters; without it, a bundle's own weights file (the bundle's
    ``pipeline.json`` beside it records it, same sha256) is built with the config recorded
    there, with an :class:`ImportNote` (its layout alone does not tell its derived inputs). ``trust_pickle`` allows pickles holding
    arbitrary Python objects. Raises :class:`CheckpointImportError` when the weights
    cannot be mapped, listing every unexpected or missing key and shape mismatch, and
    when the checkpoint is a TorchScript module (which can be run) whose outputs the
    rebuilt network does not reproduce (see :func:`check_against_torchscript`).
    """
    contents = read_checkpoint(path, trust_pickle=trust_pickle)
    given = None
    if hparams is None:
        from .bundle_networks import recorded_config

        recorded = recorded_config(path)
        if recorded is not None:
            directory, name, hparams = recorded
            warnings.warn(ImportNote(
                f"{path} is the {name} weights of the bundle {directory}: built with the config its pipeline.json "
                "records (its layout alone does not tell the derived inputs; give --hparams to build it otherwise)"))
    if hparams is not None:
        given = read_hparams_yaml(hparams) if isinstance(hparams, (str, Path)) else dict(hparams)
        contents.hparams = {**(contents.hparams or {}), **given}
    architecture = detect_architecture(contents, kind)
    refuse_unsupported_options(contents, architecture)
    cls = _ARCHITECTURE_CLASSES[architecture]
    if given is not None and is_full_config(given, cls):
        # A trackserve config (a bundle's pipeline.json entry, a bundle network's
        # *.config.json): the network as it says, the weights loaded strictly below. Its
        # first layers may read more columns than the features (derived eta, differences,
        # edge geometry), which the shape rules of the original layouts would misread.
        state, config = dict(contents.state), dict(given)
    else:
        try:
            state, config = _BUILDERS[architecture](contents)
        except CheckpointImportError as error:  # the layout rules name a key, not always the file
            if str(contents.path) in str(error):
                raise
            raise CheckpointImportError(f"checkpoint {contents.path}: {error}") from None
        if not contents.hparams and contents.module is None:
            read = ", ".join(f"{key}={config[key]!r}" for key in ("in_channels", "hidden", "emb_hidden", "emb_dim",
                                                                   "nb_layer") if key in config)
            warnings.warn(ImportNote(
                f"checkpoint {contents.path} holds weights alone: the {architecture} was built as their layout reads "
                f"({read}); a network whose first layer reads derived columns (eta, edge geometry, as the networks "
                "of trackserve's bundles do) has another config: give it with --hparams, or export the weights into "
                "their bundle with --bundle DIR --network NAME"))
    network = cls.from_config(config)
    load_weights(network, state, contents.path)
    network.eval()
    if contents.module is not None:
        check_against_torchscript(network, contents, given)
    return network


def import_with_notes(command: str, path: str | Path, **options: Any) -> ConfigurableNetwork:
    """:func:`import_checkpoint` for a command line: its :class:`ImportNote` warnings printed to
    stderr as ``<command>: note: ...`` lines, other warnings shown as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        network = import_checkpoint(path, **options)
    for warning in caught:
        if issubclass(warning.category, ImportNote):
            print(f"{command}: note: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return network


def is_full_config(hparams: dict[str, Any], cls: type[ConfigurableNetwork]) -> bool:
    """Whether ``hparams`` is a whole trackserve config of ``cls``: every key of its
    :attr:`~ConfigurableNetwork.config` (the required ones and every default but the
    later-added ones) and no other key."""
    known = set(cls.REQUIRED) | set(cls.DEFAULTS)
    needed = set(cls.REQUIRED) | (set(cls.DEFAULTS) - set(cls.ADDED_KEYS))
    return needed <= set(hparams) <= known


def check_against_torchscript(network: ConfigurableNetwork, contents: CheckpointContents,
                              hparams: dict[str, Any] | None = None) -> None:
    """Refuse a network rebuilt from a TorchScript checkpoint that does not compute what the module does.

    Both run on the inputs the export traces at (:mod:`.specs`); the outputs must agree
    within the export's parity bound. The likely cause of a disagreement is named:
    ``hparams`` (the hyperparameters given) that contradict the module, or else an
    architecture trackserve does not reproduce. A module that returns several tensors
    (``(logits, scores)``, say) passes when one of them of the output's size agrees. A
    module that cannot be run on those inputs (another interface), or returns nothing of
    the output's size, is not compared: a :class:`UserWarning` says so, since nothing
    then vouches for the rebuilt network.
    """
    spec = get_spec(network.kind)
    inputs = [torch.from_numpy(array) for array in spec.make_inputs(spec.trace, network.config["in_channels"]).values()]
    call = "module(features)" if len(inputs) == 1 else "module(features, edge_index)"
    with torch.no_grad():
        ours = network(*inputs).numpy()
        try:
            returned = contents.module(*inputs)
        except Exception as error:  # a module with another interface: nothing to compare with
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _not_compared(contents, f"it cannot be called as {call} ({first})")
            return
    outputs = list(returned) if isinstance(returned, (tuple, list)) else [returned]
    candidates = [t.detach().float().reshape(ours.shape).numpy() for t in outputs
                  if isinstance(t, torch.Tensor) and t.numel() == ours.size]
    if not candidates:
        _not_compared(contents, f"{call} returns no tensor of the {ours.size} values the rebuilt network gives")
        return
    theirs = min(candidates, key=lambda candidate: max_abs_difference(ours, candidate))
    difference = max_abs_difference(ours, theirs)
    bound = spec.tolerance * max(1.0, float(np.abs(theirs[np.isfinite(theirs)]).max(initial=0.0)))
    if difference <= bound:
        return
    conflicts = _conflicts_with_torchscript(contents, hparams or {})
    if conflicts:
        cause = f"the hyperparameters given disagree with the checkpoint ({'; '.join(conflicts)}): correct them"
    elif hparams:
        cause = ("the hyperparameters given likely disagree with the checkpoint: check them, or leave them out so "
                 "that the TorchScript module's own are used")
    else:
        cause = (f"trackserve's {network.architecture} does not reproduce this module; pass the hyperparameters of its "
                 "training run (--hparams) if they differ from what the module tells")
    raise CheckpointImportError(
        f"checkpoint {contents.path}: the {network.architecture} rebuilt from it does not compute what its TorchScript "
        f"module computes (outputs differ by up to {difference:.3g}, bound {bound:.3g}, on random inputs of "
        f"{spec.trace.num_hits} hits" + (f", {spec.trace.num_edges} edges" if len(inputs) > 1 else "") + f"): {cause}"
    )


def _not_compared(contents: CheckpointContents, reason: str) -> None:
    """Warn that a TorchScript checkpoint's rebuilt network could not be compared with its module."""
    warnings.warn(f"checkpoint {contents.path}: the rebuilt network was not compared with its TorchScript module: "
                  f"{reason}; nothing checks that it computes what the module does", ImportNote, stacklevel=3)


def _note_assumed(contents: CheckpointContents, architecture: str, assumed: dict[str, Any], why: str) -> None:
    """Note the settings the weights cannot show and no hyperparameter gave, for a checkpoint
    without a TorchScript module (whose comparison would catch a wrong guess)."""
    if not assumed or contents.module is not None:
        return
    settings = ", ".join(f"{key}={value!r}" for key, value in assumed.items())
    names = " and ".join(assumed)
    warnings.warn(f"checkpoint {contents.path}: {names} cannot be read from the weights and no hyperparameter gives "
                  f"{'it' if len(assumed) == 1 else 'them'}; the {architecture} was built with {settings} ({why}): "
                  "pass the training's own with --hparams if it used others (other settings compute another function)",
                  ImportNote, stacklevel=4)


def _conflicts_with_torchscript(contents: CheckpointContents, hparams: dict[str, Any]) -> list[str]:
    """The given hyperparameters that contradict the TorchScript module: its int attributes
    (``n_graph_iters``) and, when it uses one activation type only, the activation."""
    conflicts = [f"{key}={hparams[key]!r}, the module has {value!r}" for key, value in contents.attributes.items()
                 if hparams.get(key) is not None and hparams[key] != value]
    kinds = set(_activations(contents))
    if len(kinds) == 1:
        (kind,) = kinds
        conflicts += [f"{key}={hparams[key]!r}, the module uses {kind}" for key in ("hidden_activation", "activation")
                      if hparams.get(key) and hparams[key] != kind]
    return conflicts


def detect_architecture(contents: CheckpointContents, kind: str | None) -> str:
    """Our architecture name for the checkpoint, from ``kind``, its class name or its keys."""
    if kind is not None and kind not in KINDS:
        raise CheckpointImportError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    wanted = KINDS.get(kind) if kind else None
    names = [contents.class_name, class_name(contents.hparams)]
    for name in names:
        if name in _UNSUPPORTED_CLASSES:
            raise CheckpointImportError(f"checkpoint {contents.path} holds {_UNSUPPORTED_CLASSES[name]}, which "
                                        f"trackserve cannot rebuild; the networks it imports are {', '.join(_CLASS_NAMES)}")
    known = [name for name in names if name in _CLASS_NAMES]
    if len(known) == 2 and _CLASS_NAMES[known[0]] != _CLASS_NAMES[known[1]]:
        raise CheckpointImportError(f"checkpoint {contents.path}: its class is {known[0]!r}, but the hyperparameters "
                                    f"name the class {known[1]!r}: are the hyperparameters another network's?")
    named = _CLASS_NAMES[known[0]] if known else None
    by_keys = _architecture_from_keys(contents.state)
    if named is not None and by_keys is not None and named != by_keys:
        index, name = next((i, name) for i, name in enumerate(names) if name in _CLASS_NAMES)
        source = ("its class is" if index == 0 else "the hyperparameters name the class") + f" {name!r}"
        raise CheckpointImportError(f"checkpoint {contents.path}: {source}" + (f" ({named})" if name != named else "")
                                    + f", but its weights have the key layout of {by_keys} (keys "
                                    f"{_key_summary(contents.state)}): are the hyperparameters another network's?")
    found = named or by_keys
    unknown = [name for name in names if name and name not in _CLASS_NAMES]
    if named is None and by_keys is not None and unknown and contents.module is None:  # (a module is compared)
        warnings.warn(f"checkpoint {contents.path} names its class {unknown[0]!r}, which trackserve does not know; it "
                      f"was taken for a {by_keys} by its key layout" + (f" (and kind {kind!r})" if kind else "")
                      + ": check that the network is one", ImportNote, stacklevel=3)
    if wanted is not None:
        if found is not None and found != wanted:
            raise CheckpointImportError(
                f"checkpoint {contents.path} holds a {found} network, not the {wanted} asked for with kind {kind!r}"
            )
        return wanted
    if found is None:
        raise CheckpointImportError(
            f"cannot tell which network checkpoint {contents.path} holds (class {contents.class_name!r}, "
            f"keys {_key_summary(contents.state)}): pass kind (--kind on the command line; one of {', '.join(KINDS)})"
        )
    if kind == "gnn" and found not in ("ResAGNN", "InteractionGNN"):
        raise CheckpointImportError(f"checkpoint {contents.path} holds a {found} network, not a GNN")
    return found


def refuse_unsupported_options(contents: CheckpointContents, architecture: str) -> None:
    """Refuse hyperparameters that change what a network computes in ways trackserve's
    definitions do not reproduce (and the weights would not show): batch normalisation,
    message aggregations other than a sum, ACORN's undirected scoring, and networks with
    their own weights per message-passing step."""
    hparams = contents.hparams or {}
    where = f"checkpoint {contents.path}"
    flag = {key: _flag(hparams, key, where) for key in ("batchnorm", "undirected", "node_net_recurrent",
                                                         "edge_net_recurrent")}
    if architecture != "VanillaFilter" and flag["batchnorm"]:  # the filter names its own reason
        raise CheckpointImportError(f"{where}: trained with batchnorm=True, whose batch statistics trackserve's "
                                    f"{architecture} does not reproduce (it has LayerNorms only); not supported")
    if architecture not in ("ResAGNN", "InteractionGNN"):
        return
    aggregation = hparams.get("aggregation")
    if aggregation not in _SUMMED:
        raise CheckpointImportError(f"{where}: aggregation {aggregation!r}: trackserve's GNNs sum the messages into "
                                    "each hit, so a GNN trained with another aggregation cannot be imported")
    if flag["undirected"]:
        raise CheckpointImportError(f"{where}: trained with undirected=True (each edge scored both ways and the two "
                                    "scores averaged), which trackserve's GNNs do not do; not supported")
    for key in ("node_net_recurrent", "edge_net_recurrent"):
        if flag[key] is False:
            raise CheckpointImportError(f"{where}: {key}=False gives each message-passing step networks of its own; "
                                        "trackserve's GNNs share one per role across the steps; not supported")


_TRUE_WORDS, _FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0", "none", "null", "")


def _flag(hparams: dict[str, Any], key: str, where: str) -> bool | None:
    """Hyperparameter ``key`` as a bool (None when absent): YAML booleans, 0 / 1, and the words
    ``true`` / ``false`` (``yes`` / ``no``...) in any case, as a hand-written file may give them;
    anything else is an error naming it (a flag misread either way changes the network)."""
    value = hparams.get(key)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS + _FALSE_WORDS:
        return value.strip().lower() in _TRUE_WORDS
    raise CheckpointImportError(f"{where}: hyperparameter {key}={value!r} is neither true nor false")


def _architecture_from_keys(state: dict[str, torch.Tensor]) -> str | None:
    """The architecture whose characteristic keys the state dict has, or ``None``."""
    roots = {name.split(".")[0] for name in state}
    if {"edge_encoder", "output_edge_classifier"} <= roots:
        return "InteractionGNN"
    if "edge_network" in roots and roots & {"input_network", "node_encoder"}:
        return "ResAGNN"
    if {"input_layer", "output_layer"} <= roots:
        return "VanillaFilter"
    if "emb_layer" in roots:
        return "LayerlessEmbedding"
    return None


def _key_summary(state: dict[str, torch.Tensor]) -> str:
    """The first few keys of a state dict, for messages."""
    names = sorted(state)
    return ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")


# ----------------------------------------------------------------------------- weights


def load_weights(network: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``network`` strictly; one error lists every key or shape that does not fit."""
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name}: checkpoint {tuple(state[name].shape)}, network {tuple(expected[name].shape)}"
        for name in sorted(set(state) & set(expected)) if state[name].shape != expected[name].shape
    ]
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {source} does not fit the {getattr(network, 'architecture', type(network).__name__)} "
                 f"built from it (config {getattr(network, 'config', {})}):"]
        if unexpected:
            lines.append("  unexpected keys (in the checkpoint, not in the network): " + ", ".join(unexpected))
        if missing:
            lines.append("  missing keys (in the network, not in the checkpoint): " + ", ".join(missing))
        if mismatched:
            lines.append("  shape mismatches: " + "; ".join(mismatched))
        lines.append("  Check --kind and the hyperparameters (--hparams) of the training run.")
        raise CheckpointImportError("\n".join(lines))
    network.load_state_dict({name: tensor.to(torch.float32) for name, tensor in state.items()}, strict=True)


def _linear_layers(state: dict[str, torch.Tensor], prefix: str) -> list[tuple[int, torch.Size]]:
    """``(index, weight shape)`` of the Linear layers of the Sequential at ``prefix``, in order."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    found = [(int(match.group(1)), tensor.shape) for name, tensor in state.items()
             if (match := pattern.match(name)) and tensor.dim() == 2]
    if not found:
        raise CheckpointImportError(f"no Linear layer found under '{prefix}' (keys: {_key_summary(state)})")
    return sorted(found)


def _mlp_norm(state: dict[str, torch.Tensor], prefix: str, hparams: dict[str, Any]) -> tuple[bool, bool]:
    """``(layer_norm, layer_norm_affine)`` of a make_mlp Sequential, from its keys and layer spacing.

    Affine LayerNorms show as 1-D ``weight`` entries between the Linears; ACORN's
    parameter-free ones only as a spacing of 3 (Linear, LayerNorm, activation) instead of 2.
    """
    linears = _linear_layers(state, prefix)
    linear_names = {f"{prefix}{index}.weight" for index, _ in linears}
    if any(name.startswith(prefix) and name.endswith(".weight") and name not in linear_names and tensor.dim() == 1
           for name, tensor in state.items()):
        return True, True
    if len(linears) > 1:
        spacing = linears[1][0] - linears[0][0]
        return (True, False) if spacing >= 3 else (False, True)
    return bool(hparams.get("layernorm", hparams.get("layer_norm", False))), False


def _check_hparams(config: dict[str, Any], hparams: dict[str, Any], names: dict[str, str], source: str) -> None:
    """Raise when a training hyperparameter contradicts what the weights say."""
    conflicts = [
        f"{hparam}={hparams[hparam]!r} but the weights give {key}={config[key]!r}"
        for key, hparam in names.items() if hparam in hparams and hparams[hparam] is not None
        and config.get(key) is not None and hparams[hparam] != config[key]
    ]
    if conflicts:
        raise CheckpointImportError(f"checkpoint {source}: hyperparameters disagree with the weights: " + "; ".join(conflicts))


def _activations(contents: CheckpointContents, prefix: str = "") -> list[str]:
    """The activation module types of a TorchScript module under ``prefix``, in path order."""
    return [kind for name, kind in sorted(contents.module_types.items())
            if name.startswith(prefix) and kind in ACTIVATIONS]


def _one_activation(contents: CheckpointContents, hparams: dict[str, Any], key: str, default: str | None) -> str:
    """The hidden activation: hyperparameter ``key``, else the TorchScript modules', else ``default``."""
    if hparams.get(key):
        return hparams[key]
    kinds = set(_activations(contents))
    if len(kinds) == 1:
        return kinds.pop()
    if default is None:
        raise MissingHyperparameterError(
            f"checkpoint {contents.path}: the activation cannot be read from the weights; pass hyperparameters "
            f"(--hparams YAML) with '{key}'"
        )
    return default


def _required_int(contents: CheckpointContents, hparams: dict[str, Any], key: str) -> int:
    """A positive int hyperparameter that the weights cannot give (``n_graph_iters``)."""
    value = hparams.get(key, contents.attributes.get(key))
    if value is None:
        also = (" (and 'hidden_activation', which they cannot tell either)"
                if key == "n_graph_iters" and not hparams.get("hidden_activation") and not _activations(contents) else "")
        raise MissingHyperparameterError(
            f"checkpoint {contents.path}: '{key}' cannot be read from the weights; pass hyperparameters (--hparams YAML) "
            f"with '{key}'"
            + also
        )
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 1:
        source = "the hyperparameters give" if key in hparams else "the checkpoint gives"
        raise CheckpointImportError(f"checkpoint {contents.path}: '{key}' must be an integer >= 1, {source} {value!r}")
    return int(value)


def _overrides(hparams: dict[str, Any], cls: type[ConfigurableNetwork]) -> dict[str, Any]:
    """Hyperparameters spelt as our own config keys (a trackserve-written config), which win."""
    return {key: value for key, value in hparams.items() if key in cls.DEFAULTS}


# ----------------------------------------------------------------------------- per architecture


def _build_embedding(contents: CheckpointContents) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Embedding config and state; the original ``layers.i`` / ``emb_layer`` layout is renamed."""
    state, hparams = dict(contents.state), contents.hparams or {}
    if "emb_layer.weight" in state:  # original LayerlessEmbedding: Linear+Tanh blocks, unused 'norm'
        hidden_count = len(_linear_layers(state, "layers."))
        renamed = {}
        for name, tensor in state.items():
            root, _, rest = name.partition(".")
            if root == "layers":
                index, _, leaf = rest.partition(".")
                renamed[f"network.{2 * int(index)}.{leaf}"] = tensor
            elif root == "emb_layer":
                renamed[f"network.{2 * hidden_count}.{rest}"] = tensor
            elif root != "norm":  # 'norm' is built but never applied by LayerlessEmbedding
                renamed[name] = tensor
        state, layer_norm, affine = renamed, False, True
        activation = hparams.get("activation") or "Tanh"
    else:
        layer_norm, affine = _mlp_norm(state, "network.", hparams)
        activation = _one_activation(contents, hparams, "activation", None)
    linears = _linear_layers(state, "network.")
    regime = hparams.get("regime") or []
    config = {
        "in_channels": int(linears[0][1][1]),
        "emb_hidden": int(linears[0][1][0]),
        "nb_layer": len(linears) - 1,
        "emb_dim": int(linears[-1][1][0]),
        "activation": activation,
        "layer_norm": layer_norm,
        "layer_norm_affine": affine,
        "normalize": contents.class_name == "MetricLearning" or any("norm" == str(item) for item in regime),
    }
    _check_hparams(config, hparams, {"emb_hidden": "emb_hidden", "nb_layer": "nb_layer", "emb_dim": "emb_dim",
                                     "in_channels": "in_channels"}, contents.path)
    config.update(_overrides(hparams, EmbeddingNetwork))
    return state, config


def _build_filter(contents: CheckpointContents) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """VanillaFilter config and state; unused ``batchnorm`` (and unused ``layernorm``) dropped."""
    state, hparams = dict(contents.state), contents.hparams or {}
    if _flag(hparams, "batchnorm", f"checkpoint {contents.path}"):
        raise CheckpointImportError(
            f"checkpoint {contents.path}: a VanillaFilter trained with batchnorm=True normalises with the statistics "
            "of each inference batch, which an exported network cannot reproduce; it is not supported"
        )
    if hparams.get("emb_channels"):
        raise CheckpointImportError(
            f"checkpoint {contents.path}: a VanillaFilter with emb_channels={hparams['emb_channels']} also reads the "
            "embedding of each hit; only filters on hit features alone (emb_channels 0) are supported"
        )
    layer_norm = contents.fixed.get("layer_norm", hparams.get("layernorm", hparams.get("layer_norm", True)))
    state = {name: tensor for name, tensor in state.items()
             if not name.startswith("batchnorm.") and (layer_norm or not name.startswith("layernorm."))}
    weight = state.get("input_layer.weight")
    if weight is None or weight.dim() != 2 or weight.shape[1] % 2:
        raise CheckpointImportError(
            f"checkpoint {contents.path}: the filter's input_layer.weight must be [hidden, 2 * in_channels], got "
            f"{None if weight is None else tuple(weight.shape)}"
        )
    config = {
        "in_channels": int(weight.shape[1] // 2),
        "hidden": int(weight.shape[0]),
        "nb_layer": 1 + len([name for name in state if re.fullmatch(r"layers\.\d+\.weight", name)]),
        "activation": contents.fixed.get("activation") or hparams.get("activation") or "Tanh",
        "layer_norm": bool(layer_norm),
    }
    _check_hparams(config, hparams, {"hidden": "hidden", "nb_layer": "nb_layer", "in_channels": "in_channels"},
                   contents.path)
    config.update(_overrides(hparams, EdgeFilter))
    return state, config


def _build_resagnn(contents: CheckpointContents) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """ResAGNN config and state; the ctd2022 ``torchgnn`` layout (``node_encoder``, flat
    ``edge_network.i``) is renamed to the Lightning one and reads ``cat[h, m]``."""
    state, hparams = dict(contents.state), contents.hparams or {}
    nodes_first = any(name.startswith("node_encoder.") for name in state)
    if nodes_first:
        renamed = {}
        for name, tensor in state.items():
            root, _, rest = name.partition(".")
            if root == "node_encoder":
                renamed["input_network." + rest] = tensor
            elif root in ("edge_network", "node_network") and not rest.startswith("network."):
                renamed[f"{root}.network.{rest}"] = tensor
            else:
                renamed[name] = tensor
        state = renamed
    encoder = _linear_layers(state, "input_network.")
    edges = _linear_layers(state, "edge_network.network.")
    nodes = _linear_layers(state, "node_network.network.")
    layer_norm, _ = _mlp_norm(state, "input_network.", hparams)
    config = {
        "in_channels": int(encoder[0][1][1]),
        "hidden": int(encoder[0][1][0]),
        "n_graph_iters": _required_int(contents, hparams, "n_graph_iters"),
        "nb_node_layer": len(nodes),
        "nb_edge_layer": len(edges) - 1,
        "nb_input_layer": len(encoder),
        "edge_hidden": int(edges[0][1][0]) if len(edges) > 1 else None,
        "hidden_activation": hparams.get("hidden_activation") or _first_activation(contents, "edge_network."),
        "input_hidden_activation": _input_hidden_activation(contents, "node_encoder." if nodes_first else "input_network.",
                                                            len(encoder)),
        "layer_norm": layer_norm,
        "node_input_order": "nodes_first" if nodes_first else "messages_first",
    }
    _check_hparams(config, hparams, {"hidden": "hidden", "in_channels": "in_channels", "n_graph_iters": "n_graph_iters",
                                     "layer_norm": "layernorm", "nb_node_layer": "nb_node_layer",
                                     "nb_edge_layer": "nb_edge_layer"}, contents.path)
    config.update(_overrides(hparams, ResAGNN))
    if not nodes_first and "node_input_order" not in hparams:
        _note_assumed(contents, "ResAGNN", {"node_input_order": config["node_input_order"]},
                      "the Lightning ResAGNN's order, as its key names input_network.* suggest")
    return state, config


def _first_activation(contents: CheckpointContents, prefix: str) -> str:
    """The first activation of the TorchScript module under ``prefix``; without a module (or
    one there), an error asking for the ``hidden_activation`` hyperparameter."""
    found = _activations(contents, prefix)
    if not found:
        raise MissingHyperparameterError(f"checkpoint {contents.path}: the hidden activation cannot be read from the "
                                    "weights; pass hyperparameters (--hparams YAML) with 'hidden_activation'")
    return found[0]


def _input_hidden_activation(contents: CheckpointContents, prefix: str, layers: int) -> str | None:
    """The activation of the ResAGNN input network's hidden layers: the TorchScript module's
    own, else ``"ReLU"``: ExaTrkX builds that network with make_mlp's default hidden
    activation and the hyperparameter's only at its output. None for one layer (none)."""
    if layers < 2:
        return None
    found = _activations(contents, prefix)
    return found[0] if found else "ReLU"


def _build_interaction(contents: CheckpointContents) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """InteractionGNN config and state; message direction from the node network's input width."""
    state, hparams = dict(contents.state), contents.hparams or {}
    encoder = _linear_layers(state, "node_encoder.")
    node_net = _linear_layers(state, "node_network.")
    edge_net = _linear_layers(state, "edge_network.")
    hidden = int(encoder[0][1][0])
    bidirectional = int(node_net[0][1][1]) == 3 * hidden
    layer_norm, affine = _mlp_norm(state, "output_edge_classifier.", hparams)
    activations = _activations(contents, "output_edge_classifier.")
    n_graph_iters = _required_int(contents, hparams, "n_graph_iters")
    hidden_activation = hparams.get("hidden_activation") or (activations[0] if activations else None)
    if hidden_activation is None:
        raise MissingHyperparameterError(f"checkpoint {contents.path}: the hidden activation cannot be read from the "
                                    "weights; pass hyperparameters (--hparams YAML) with 'hidden_activation' (and 'output_activation' "
                                    "if the training used one)")
    output_activation = hparams.get("output_activation")
    # ExaTrkX's make_mlp puts a LayerNorm before an output activation whenever it has
    # LayerNorms; ACORN's (parameter-free LayerNorms) only with output_layer_norm=True,
    # which its InteractionGNN never passes.
    output_layer_norm = hparams.get("output_layer_norm", None if affine else False)
    config = {
        "in_channels": int(encoder[0][1][1]),
        "hidden": hidden,
        "n_graph_iters": n_graph_iters,
        "nb_node_layer": len(node_net),
        "nb_edge_layer": len(edge_net),
        "hidden_activation": hidden_activation,
        "output_activation": output_activation,
        "layer_norm": layer_norm,
        "layer_norm_affine": affine,
        "output_layer_norm": None if output_layer_norm is None else bool(output_layer_norm),
        "residual": not bidirectional,
        "bidirectional_messages": bidirectional,
        "edge_update_uses_new_nodes": bidirectional,
    }
    _check_hparams(config, hparams, {"hidden": "hidden", "n_graph_iters": "n_graph_iters",
                                     "nb_node_layer": "nb_node_layer", "nb_edge_layer": "nb_edge_layer"}, contents.path)
    config.update(_overrides(hparams, InteractionGNN))
    _note_assumed(contents, "InteractionGNN",
                  {key: config[key] for key in ("residual", "edge_update_uses_new_nodes") if key not in hparams},
                  "as ACORN's InteractionGNN, whose node network reads the messages summed both ways as this one's does"
                  if bidirectional else
                  "as ExaTrkX's InteractionGNN, whose node network reads the messages summed one way as this one's does")
    return state, config


_BUILDERS = {
    "LayerlessEmbedding": _build_embedding,
    "VanillaFilter": _build_filter,
    "ResAGNN": _build_resagnn,
    "InteractionGNN": _build_interaction,
}
_ARCHITECTURE_CLASSES = {cls.architecture: cls for cls in (EmbeddingNetwork, EdgeFilter, ResAGNN, InteractionGNN)}
