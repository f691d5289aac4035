"""Reading checkpoint files into tensors and hyperparameters, whatever their format.

Four formats are read, all to the same :class:`CheckpointContents`:

* TorchScript modules (``torch.jit.save``), as the ExaTrkX service and the ctd2022
  examples ship them: the state dict, the class name (``original_name``), the int
  attributes (``n_graph_iters``) and the module type at every path (which tells the
  activations apart);
* *frozen* TorchScript modules (``torch.jit.freeze``), whose weights are constants
  of the code: the linear layers, activations and LayerNorms are recovered from the
  code when it is the ``VanillaFilter`` pattern;
* Lightning checkpoints (a dict with ``state_dict`` and ``hyper_parameters``), as the
  ExaTrkX and ACORN training code writes them;
* plain state dicts (a dict of tensors).

Pickles are read with ``torch.load(weights_only=True)``: a file that holds arbitrary
Python objects is refused unless the caller trusts it.
"""

from __future__ import annotations

import functools
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointImportError
from ..values import shown

#: Prefixes that wrappers add to every key (a Lightning module holding ``self.model``,
#: ``DistributedDataParallel``); stripped when every key carries the same one.
WRAPPER_PREFIXES = ("model.", "module.", "network_model.")

_FROZEN_OP = re.compile(
    r"torch\.addmm\(CONSTANTS\.(?P<bias>c\d+), \w+, CONSTANTS\.(?P<weight>c\d+)\)"
    r"|torch\.(?P<act>tanh|relu|sigmoid|silu|gelu|elu)\("
    r"|torch\.layer_norm\(\w+, \[\d+\], CONSTANTS\.(?P<ln_weight>c\d+), CONSTANTS\.(?P<ln_bias>c\d+)"
)
_FROZEN_ACTIVATIONS = {"tanh": "Tanh", "relu": "ReLU", "sigmoid": "Sigmoid", "silu": "SiLU", "gelu": "GELU", "elu": "ELU"}


@dataclass
class CheckpointContents:
    """What a checkpoint file holds, in one shape for every format.

    ``state`` maps parameter names (as the file writes them, wrapper prefix removed)
    to float tensors; ``hparams`` are the training hyperparameters when the file has
    them; ``class_name`` the network class when known; ``attributes`` the TorchScript
    int/float/bool attributes; ``module_types`` the TorchScript module class at each
    path (``"input_network.2": "ReLU"``); ``fixed`` config values the format
    determines (a frozen filter's activation and LayerNorm use); ``module`` the
    TorchScript module itself, which can be run to check the network rebuilt from it.
    """

    path: str
    format: str
    state: dict[str, torch.Tensor]
    hparams: dict[str, Any] | None = None
    class_name: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    module_types: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    module: Any = None


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> CheckpointContents:
    """Read a TorchScript, Lightning or state-dict checkpoint file (see the module docstring).

    ``trust_pickle=True`` allows a pickle with arbitrary Python objects (it can run code:
    only for files from a trusted source).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointImportError(f"checkpoint {path} does not exist or is not a file")
    try:
        _first_bytes(path, 1)
    except OSError as error:
        raise CheckpointImportError(f"checkpoint {path} cannot be read: {error.strerror or error}") from None
    is_zip = zipfile.is_zipfile(path)
    if is_zip and _is_torchscript_archive(path):
        return _read_torchscript(path)
    if not is_zip:
        start = _first_bytes(path, 4)
        if start == b"PK\x03\x04":
            raise CheckpointImportError(
                f"checkpoint {path} is a damaged zip archive (it begins as one but has no directory at its end: "
                "cut short or corrupted); copy it again"
            )
        if start[:1] != b"\x80":  # torch.save's legacy format: pickles of protocol 2 or later
            raise CheckpointImportError(
                f"checkpoint {path} is not a PyTorch checkpoint: it is neither a zip archive (what torch.save, "
                "Lightning and torch.jit.save write) nor a pickle; give the .pt or .ckpt file the training wrote"
            )
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols its safe unpickler may not read
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError or others
        if not trust_pickle and "weights_only" in str(error):
            reason = _unpickler_reason(error)
            what = ("holds Python objects besides tensors, which are not read unless trusted"
                    if reason.startswith("Unsupported global") else "is refused by torch.load's safe (weights-only) unpickler")
            raise CheckpointImportError(
                f"checkpoint {path} {what} ({reason}): if the file comes from a source you trust, "
                "pass trust_pickle=True (CLI: --trust-pickle)"
            ) from None
        if isinstance(error, EOFError):
            raise CheckpointImportError(f"checkpoint {path} cannot be read by torch.load: it ends early (cut short); "
                                        "copy it again") from None
        raise CheckpointImportError(f"checkpoint {path} cannot be read by torch.load: {_first_line(error)}") from None
    return _from_payload(path, payload)


def _first_line(error: Exception) -> str:
    """The exception's type and the first non-empty line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _unpickler_reason(error: Exception) -> str:
    """What torch's safe unpickler refused, from its many-line message (``Unsupported global: GLOBAL x``)."""
    _, found, rest = str(error).partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()] if found else []
    if not lines:
        return _first_line(error)
    return re.sub(r" was not an allowed global by default.*", "", lines[0]).rstrip(". ")


def _first_bytes(path: Path, count: int) -> bytes:
    """The first ``count`` bytes of a file (fewer when it is shorter)."""
    with open(path, "rb") as handle:
        return handle.read(count)


def _is_torchscript_archive(path: Path) -> bool:
    """Whether a zip file is a TorchScript archive (it has ``code/`` or ``constants.pkl``)."""
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def _read_torchscript(path: Path) -> CheckpointContents:
    """A TorchScript module's parameters, class, attributes and module types."""
    try:
        with warnings.catch_warnings():  # torch 2.9+ deprecates torch.jit.load; these files only exist as TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise CheckpointImportError(f"TorchScript checkpoint {path} cannot be loaded: {error}") from error
    state = {name: tensor.detach().float().clone() for name, tensor in module.state_dict().items()}
    attributes = {}
    for name in ("n_graph_iters",):
        value = getattr(module, name, None)
        if isinstance(value, (int, float, bool)):
            attributes[name] = value
    module_types = {name: sub.original_name for name, sub in module.named_modules() if name}
    contents = CheckpointContents(
        path=str(path), format="torchscript", state=state, class_name=module.original_name,
        attributes=attributes, module_types=module_types, module=module,
    )
    if not state:
        _recover_frozen_filter(module, contents)
    return contents


def _recover_frozen_filter(module: torch.jit.ScriptModule, contents: CheckpointContents) -> None:
    """Fill ``contents`` from a frozen module whose code is the VanillaFilter pattern.

    The pattern: ``input_layer`` (Linear, no activation), then ``Linear, activation,
    [LayerNorm]`` repeated with one shared LayerNorm, then ``output_layer``.
    """
    code, constants = module.code_with_constants
    values = constants.const_mapping
    ops = []
    for match in _FROZEN_OP.finditer(code):
        if match.group("weight"):
            ops.append(("linear", values[match.group("weight")].t(), values[match.group("bias")]))
        elif match.group("act"):
            ops.append(("act", _FROZEN_ACTIVATIONS[match.group("act")]))
        else:
            ops.append(("layer_norm", values[match.group("ln_weight")], values[match.group("ln_bias")]))
    problem = f"frozen TorchScript checkpoint {contents.path} has no parameters, and its code is not the VanillaFilter pattern "
    problem += "(input Linear, then Linear-activation-[LayerNorm] blocks, then output Linear); it cannot be imported"
    if len(ops) < 2 or ops[0][0] != "linear" or ops[-1][0] != "linear":
        raise CheckpointImportError(problem)
    hidden_ops = ops[1:-1]
    layer_norm = any(op[0] == "layer_norm" for op in hidden_ops)
    block = 3 if layer_norm else 2
    if len(hidden_ops) % block:
        raise CheckpointImportError(problem)
    state = {"input_layer.weight": ops[0][1], "input_layer.bias": ops[0][2]}
    activations = set()
    for number in range(len(hidden_ops) // block):
        linear, act, *norm = hidden_ops[number * block:(number + 1) * block]
        if linear[0] != "linear" or act[0] != "act" or (norm and norm[0][0] != "layer_norm"):
            raise CheckpointImportError(problem)
        state[f"layers.{number}.weight"], state[f"layers.{number}.bias"] = linear[1], linear[2]
        activations.add(act[1])
        if norm:
            if "layernorm.weight" in state and not (
                torch.equal(state["layernorm.weight"], norm[0][1]) and torch.equal(state["layernorm.bias"], norm[0][2])
            ):
                raise CheckpointImportError(problem + " (its LayerNorms differ, VanillaFilter shares one)")
            state["layernorm.weight"], state["layernorm.bias"] = norm[0][1], norm[0][2]
    if len(activations) > 1:
        raise CheckpointImportError(problem + f" (it mixes activations {sorted(activations)})")
    state["output_layer.weight"], state["output_layer.bias"] = ops[-1][1], ops[-1][2]
    contents.state = {name: tensor.detach().float().contiguous().clone() for name, tensor in state.items()}
    contents.format = "frozen torchscript"
    contents.fixed = {"layer_norm": layer_norm}
    if activations:
        contents.fixed["activation"] = activations.pop()


def _from_payload(path: Path, payload: Any) -> CheckpointContents:
    """Contents of an unpickled Lightning checkpoint or state dict."""
    if isinstance(payload, torch.nn.Module):
        payload = payload.state_dict()
    if not isinstance(payload, dict):
        raise CheckpointImportError(
            f"checkpoint {path} holds a {type(payload).__name__}, not a state dict or a Lightning checkpoint"
        )
    hparams = None
    if "state_dict" in payload:
        fmt, state = "lightning", payload["state_dict"]
        raw = payload.get("hyper_parameters")
        if raw and not isinstance(raw, dict):
            raise CheckpointImportError(
                f"checkpoint {path}: its hyper_parameters are a {type(raw).__name__}, not a mapping of names to "
                "values; pass the training run's hyperparameters with --hparams"
            )
        hparams = flatten_hparams(dict(raw), f"checkpoint {path}, its hyper_parameters") if raw else None
    else:
        fmt, state = "state_dict", payload
    if not isinstance(state, dict) or not state:
        raise CheckpointImportError(f"checkpoint {path} has an empty or malformed state dict")
    not_tensors = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointImportError(
            f"checkpoint {path}: state dict entries that are not tensors: {', '.join(map(str, not_tensors[:10]))}"
        )
    state = {name: tensor.detach().float() for name, tensor in state.items() if tensor.is_floating_point()}
    return CheckpointContents(
        path=str(path), format=fmt, state=strip_wrapper_prefix(state),
        hparams=hparams, class_name=class_name(hparams),
    )


def class_name(hparams: dict[str, Any] | None) -> str | None:
    """The network class the hyperparameters name: ExaTrkX's ``name``, or ACORN's ``model``."""
    for key in ("name", "model"):
        value = (hparams or {}).get(key)
        if isinstance(value, str) and value:
            return value
    return None


def strip_wrapper_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without a wrapper prefix (``model.``, ``module.``) that every key carries."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(name.startswith(prefix) for name in state):
            return {name[len(prefix):]: tensor for name, tensor in state.items()}
    return state


def flatten_hparams(hparams: dict[str, Any], source: str = "the hyperparameters") -> dict[str, Any]:
    """ExaTrkX hyperparameters as one flat dict (their files repeat them under ``hparams:``);
    CheckpointImportError naming each key whose two copies disagree (``source`` says whose)."""
    nested = hparams.get("hparams")
    flat = dict(nested) if isinstance(nested, dict) else {}
    top = {key: value for key, value in hparams.items() if key != "hparams"}
    disagree = [f"{key}: {shown(top[key])} and {shown(value)} under hparams" for key, value in flat.items()
                if key in top and not _same(top[key], value)]
    if disagree:
        raise CheckpointImportError(f"{source}: {len(disagree)} key(s) have two values, at the top level and under "
                                    f"'hparams': {'; '.join(disagree)}; keep one value of each")
    flat.update(top)
    return flat


def _same(first, second) -> bool:
    """Whether two hyperparameter values are equal (values whose ``==`` is not a plain truth
    value, such as arrays, count as equal only when they are the same object)."""
    try:
        return bool(first == second)
    except Exception:  # an array's ==, or an object that refuses comparison
        return first is second


@functools.cache
def _unique_key_loader():
    """A safe YAML loader that refuses a mapping naming one key twice (PyYAML keeps the last)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) or key is None:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key {key!r} appears twice in one mapping (keep one of them)",
                            key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _yaml_problem(error: Exception) -> str:
    """A YAML parser error in one line: its problem and where (1-based line and column)."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if not problem:
        return _first_line(error)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def read_hparams_yaml(path: str | Path) -> dict[str, Any]:
    """The hyperparameters of an ExaTrkX/ACORN YAML file (``hparams_GNN.yaml``), flattened."""
    import yaml

    path = Path(path)
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader())  # noqa: S506 (a safe loader)
    except FileNotFoundError:
        raise CheckpointImportError(f"hyperparameter file {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointImportError(f"hyperparameter file {path} is a directory: give the YAML file itself "
                                    "(e.g. hparams_GNN.yaml)") from None
    except PermissionError:
        raise CheckpointImportError(f"hyperparameter file {path} cannot be read: permission denied") from None
    except UnicodeDecodeError as error:
        raise CheckpointImportError(f"hyperparameter file {path} is not UTF-8 text (byte {error.start}): is it the "
                                    "YAML file of the training run?") from None
    except OSError as error:
        raise CheckpointImportError(f"hyperparameter file {path} cannot be read: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise CheckpointImportError(f"hyperparameter file {path} is not valid YAML: {_yaml_problem(error)}") from None
    if not isinstance(loaded, dict):
        raise CheckpointImportError(f"hyperparameter file {path} must hold a mapping of names to values")
    return flatten_hparams(loaded, f"hyperparameter file {path}")
