"""Writing a bundle: saving one built in memory, exporting torch networks into a new bundle
(:func:`make_bundle`) or into an existing one (:func:`replace_network`), and the
provenance record."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Mapping

from ..errors import BundleError, OutputError
from ..paths import signals_deferred, write_files_atomically
from .checks import parse_features
from .loading import bundle_error, file_sha256, load_bundle, parse_pipeline_data, pruner_problems, read_pipeline
from .schema import NETWORK_KINDS, OPTIONAL_NETWORKS, PIPELINE_FILE, REQUIRED_NETWORKS, Bundle, NetworkEntry
from .stages import StageParameters


def save_bundle(bundle: Bundle, directory: str | os.PathLike) -> Bundle:
    """Write ``bundle`` to ``directory`` and return it as loaded back from there.

    In place (``directory`` is ``bundle.directory``) only ``pipeline.json`` is replaced,
    atomically and keeping its permissions, once the files it names were checked against
    it: a bundle whose files are not the networks it declares is refused with nothing
    written. Elsewhere the bundle is written whole beside ``directory`` (its network files,
    ONNX and torch weights, copied from ``bundle.directory``, a symbolic link read through
    and never written through) and takes the directory's place only once it loads, as
    :func:`make_bundle` writes: a bundle already there is replaced then (its other files,
    such as a README, kept) and left as it was when anything fails; a file, a directory
    holding other files but no bundle, and the current directory are refused. So a bundle
    that saves is a bundle that loads, and a save that fails changes nothing.
    """
    from ..bundle_output import bundle_written_to, check_bundle_output
    from ..errors import InputError

    if not isinstance(bundle, Bundle):
        raise BundleError(f"save_bundle takes a Bundle (load_bundle reads one), got {type(bundle).__name__}")
    directory = Path(directory)
    data = json.loads(pipeline_json_text(bundle.to_dict(), directory / PIPELINE_FILE))
    problems: list[str] = []
    parse_pipeline_data(data, directory, problems, check_files=False)
    if problems:
        raise bundle_error(directory, problems)
    source = None if bundle.directory is None else Path(bundle.directory)
    if source is not None and source.resolve() == directory.resolve():
        parse_pipeline_data(data, directory, problems, check_files=True)  # the files it names, as loading checks them
        if problems:
            raise bundle_error(directory, problems)
        write_pipeline_json(data, directory)
        return load_bundle(directory)
    if source is None:
        raise BundleError("save_bundle: this Bundle names no directory holding its network files (its directory is "
                          "None): make a bundle from torch networks with make_bundle")
    try:
        check_bundle_output(directory, overwrite=True, option="the bundle directory")
    except InputError as error:
        raise BundleError(f"save_bundle: {error}") from None
    with bundle_written_to(directory) as partial:
        for entry in bundle.networks.values():
            for file in [entry.file] + ([entry.weights["file"]] if entry.weights is not None else []):
                target = partial / file
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(source / file, target)  # a new file: a link in the source is read through
                except OSError as error:
                    raise BundleError(f"cannot copy the network file {file} of {source} into {directory}: "
                                      f"{error.strerror or error}") from None
        write_pipeline_json(data, partial)
        _check_written(partial, directory)
    return load_bundle(directory)


def pipeline_json_text(data: Mapping, target: str | os.PathLike = PIPELINE_FILE) -> str:
    """``data`` as the text of a ``pipeline.json`` (``target``, for the error); BundleError when a value is no JSON."""
    try:
        return json.dumps(data, indent=2, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(
            f"cannot write {target}: {error} (every value, network configs and provenance included, "
            "must be JSON: str, finite number, bool, null, list, object)"
        ) from None


def write_pipeline_json(data: Mapping, directory: str | os.PathLike) -> Path:
    """Write ``data`` as ``directory/pipeline.json`` atomically (temporary file, then rename;
    an interruption between the two leaves the old file and no temporary one)."""
    target = Path(directory) / PIPELINE_FILE
    text = pipeline_json_text(data, target)
    try:
        write_files_atomically([(target, (text + "\n").encode("utf-8"))])
    except OutputError as error:
        raise BundleError(str(error)) from None
    return target


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a bundle (those installed), for the provenance record."""
    from importlib import metadata

    from .. import __version__

    versions = {"trackserve": __version__, "python": platform.python_version()}
    for package in ("torch", "onnx", "onnxruntime", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def default_provenance(**record: Any) -> dict:
    """A provenance record: creation date (UTC, ISO 8601), package versions, and ``record``."""
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return {"created": created, "packages": package_versions(), **record}


def _features_dict(features) -> dict:
    if hasattr(features, "to_dict"):
        features = features.to_dict()
    elif hasattr(features, "names") and hasattr(features, "scales"):
        features = {"names": features.names, "scales": features.scales}
    if not isinstance(features, Mapping):
        raise BundleError(f"features: expected a FeatureSpec or a mapping with 'names' and 'scales', got {features!r}")
    result = dict(features)
    if isinstance(result.get("names"), (list, tuple)):
        result["names"] = list(result["names"])
    if isinstance(result.get("scales"), (list, tuple)):
        result["scales"] = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in result["scales"]]
    return result


def make_bundle(
    directory: str | os.PathLike,
    networks: Mapping[str, Any],
    *,
    features,
    stages: StageParameters,
    provenance: Mapping | None = None,
    opset: int | None = None,
) -> Bundle:
    """Export torch networks to ONNX (each validated against PyTorch) and write a bundle.

    ``networks`` maps ``embedding``, ``filter`` and ``gnn`` (and optionally ``pruner``,
    with ``stages.prune_cut``) to a torch module or a ``(module, kind)`` pair; ``features`` is a FeatureSpec (or a mapping) with ``names``
    and ``scales``; ``provenance`` is merged into :func:`default_provenance`. Each
    network is written to ``<directory>/<name>.onnx`` by
    :func:`trackserve.export.onnx_export.export_network`, which raises
    :class:`~trackserve.errors.ExportParityError` if ONNX Runtime disagrees with PyTorch.
    The bundle is written beside ``directory`` and takes its place only when it is whole and
    loads (:mod:`trackserve.bundle_output`): a bundle already there is replaced then, and
    left as it was when anything fails; a directory holding other files but no bundle, or
    the current directory, is refused. Needs torch.
    """
    from ..export.onnx_export import DEFAULT_OPSET, export_network
    from ..export.specs import KIND_ALIASES

    import torch

    directory = Path(directory)
    features = _features_dict(features)
    problems: list[str] = []
    if parse_features(features, problems) is None:
        raise bundle_error(directory, problems)
    if not isinstance(networks, Mapping):
        raise BundleError(f"make_bundle: networks must map each network's name to its torch module, got "
                          f"{type(networks).__name__}")
    if provenance is not None and (not isinstance(provenance, Mapping)
                                   or not all(isinstance(key, str) for key in provenance)):
        raise BundleError("make_bundle: provenance must be a mapping with string keys (it is a JSON object), got "
                          + (type(provenance).__name__ if not isinstance(provenance, Mapping) else
                             f"the key(s) {', '.join(repr(k) for k in provenance if not isinstance(k, str))}"))
    unknown = [n for n in networks if n not in NETWORK_KINDS]
    absent = [n for n in REQUIRED_NETWORKS if n not in networks]
    if unknown or absent:
        raise BundleError(
            f"make_bundle needs the networks {', '.join(REQUIRED_NETWORKS)} (optionally {', '.join(OPTIONAL_NETWORKS)}); "
            + (f"unknown: {', '.join(unknown)}; " if unknown else "")
            + (f"missing: {', '.join(absent)}" if absent else "")
        )
    if not isinstance(stages, StageParameters):
        stages = StageParameters.from_dict(stages)
    pairing = pruner_problems("pruner" in networks, stages.prune_cut)
    if pairing:
        raise BundleError("make_bundle: " + "; ".join(pairing))
    modules = {}
    for name, value in networks.items():
        if isinstance(value, tuple) and len(value) != 2:
            raise BundleError(f"networks.{name}: a (module, kind) pair or a module, got a tuple of {len(value)}")
        module, kind = value if isinstance(value, tuple) else (value, NETWORK_KINDS[name])
        if not isinstance(module, torch.nn.Module):
            raise BundleError(f"networks.{name}: expected a torch module (a trackserve network; weights alone are "
                              f"loaded into one with `trackserve import`), got {type(module).__name__}")
        if KIND_ALIASES.get(kind, kind) != NETWORK_KINDS[name]:
            raise BundleError(f"networks.{name}: kind {kind!r}, the {name} network must be of kind {NETWORK_KINDS[name]!r}")
        modules[name] = module
    from ..bundle_output import bundle_written_to, check_bundle_output

    opset = DEFAULT_OPSET if opset is None else opset  # (0 is an opset, refused by the export, not the default)
    record = default_provenance(**dict(provenance or {}))
    record.setdefault("export", {"opset": opset, "exporter": "torch.onnx (TorchScript-based, dynamo=False)"})
    pipeline_json_text({"provenance": record}, directory / PIPELINE_FILE)  # not JSON: said before any export
    check_bundle_output(directory, overwrite=True, option="the bundle directory")
    # Written beside the directory and moved into place only when whole and valid: a failed
    # export or check leaves a bundle already there as it was.
    with bundle_written_to(directory) as partial:
        entries = {}
        for name in (name for name in NETWORK_KINDS if name in modules):
            module, kind = modules[name], NETWORK_KINDS[name]
            report = export_network(
                module, kind, partial / f"{name}.onnx", num_features=len(features["names"]),
                opset=opset, validate=True,
            )
            entries[name] = NetworkEntry(
                name=name,
                kind=kind,
                file=f"{name}.onnx",
                sha256=report.sha256,
                inputs=report.inputs,
                outputs=report.outputs,
                config=dict(getattr(module, "config", None) or {}),
                architecture=architecture_name(module),
                weights=save_weights(module, partial / f"{name}.pt"),
            )
        write_pipeline_json(Bundle(features, entries, stages, record, partial).to_dict(), partial)
        _check_written(partial, directory)
    return load_bundle(directory)


def _check_written(partial: Path, directory: Path) -> None:
    """:func:`load_bundle`'s every check of the bundle written in ``partial``, before it takes
    the place of ``directory``; its errors name ``directory`` (``partial`` is removed with them)."""
    try:
        load_bundle(partial)
    except BundleError as error:
        raise BundleError(str(error).replace(str(partial), str(directory))) from None


def save_weights(module, path: Path, *, bundle_directory: Path | None = None) -> dict:
    """Save a torch network's ``state_dict`` to ``path``; return its ``weights`` entry (file, sha256).

    The file is written whole or not at all (a temporary file beside it, then renamed over
    it), and a symbolic link at ``path`` is replaced, never written through, so a file it
    points to (another bundle's) is left alone. The entry's ``file`` is ``path`` relative to
    ``bundle_directory`` (default: its name). The weights let
    :func:`trackserve.export.bundle_networks.load_torch_network` rebuild the exact torch
    network of a bundle (for fine-tuning, re-export, or the eager PyTorch baseline of the
    benchmarks). Needs torch.
    """
    import torch

    path = Path(path)
    try:
        # In a scratch folder under the file's own name: torch names the archive's records after the file.
        scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=path.parent))
        try:
            torch.save({key: value.detach().cpu() for key, value in module.state_dict().items()}, scratch / path.name)
            os.replace(scratch / path.name, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except OSError as error:
        raise BundleError(f"cannot write the weights {path}: {error.strerror or error}") from None
    file = path.name if bundle_directory is None else path.relative_to(bundle_directory).as_posix()
    return {"file": file, "sha256": file_sha256(path)}


def architecture_name(module) -> str:
    """What a bundle records as a network's architecture: the registry name of a trackserve
    network (``"ResAGNN"``...; see :func:`trackserve.export.networks.build_network`), else the
    qualified class name."""
    name = getattr(type(module), "architecture", None)
    if isinstance(name, str) and name:
        return name
    return f"{type(module).__module__}.{type(module).__qualname__}"


def replace_network(
    directory: str | os.PathLike,
    name: str,
    module,
    *,
    opset: int | None = None,
    runs: int = 3,
) -> tuple[Bundle, Any]:
    """Export ``module`` (validated against PyTorch) as network ``name`` of the bundle in ``directory``.

    The network's file is overwritten only once the export passed validation; its
    sha256, inputs, outputs, config and architecture are updated in ``pipeline.json``,
    the export is recorded in the provenance's ``exported_again`` list (network, opset,
    date, and whether it replaced the network by another: then the bundle's cuts and
    recorded figures describe the old one), and the whole bundle is loaded back (and so
    checked). The rest of ``pipeline.json``
    must be valid, but the old network file may be missing or damaged: this is how a
    bundle whose file changed is repaired. Returns the loaded bundle and the
    :class:`~trackserve.export.onnx_export.ExportReport`. Needs torch.
    """
    import torch

    from ..export.onnx_export import DEFAULT_OPSET, export_network

    if not isinstance(module, torch.nn.Module):
        raise BundleError(f"replace_network: expected a torch module as the new {name} network, got "
                          f"{type(module).__name__}")
    directory, data = read_pipeline(directory)
    problems: list[str] = []
    bundle = parse_pipeline_data(data, directory, problems, check_files=False)
    if problems:
        raise bundle_error(directory, problems)
    if not os.access(directory, os.W_OK):
        raise BundleError(f"cannot export into the bundle {directory}: its directory is not writable; export into a "
                          "copy of the bundle you can write")
    if name not in bundle.networks:
        raise BundleError(f"unknown network {name!r}: this bundle has {', '.join(bundle.networks)}")
    entry = bundle.networks[name]
    config = getattr(module, "config", None)
    try:  # checked before any file of the bundle is touched: pipeline.json is written last
        json.dumps(dict(config or {}), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(f"the new {name} network's config cannot be written into pipeline.json: {error} (every "
                          "value must be JSON: str, finite number, bool, null, list, object)") from None
    takes = config.get("in_channels") if isinstance(config, dict) else None
    if takes is not None and takes != bundle.num_features:
        raise BundleError(
            f"the new {name} network takes {takes} features but the bundle's features are "
            f"{list(bundle.feature_names)} ({bundle.num_features}); every network reads the same feature array"
        )
    # The weights go where the entry names them, else beside the network's file (same folder).
    weights_file = entry.weights["file"] if entry.weights else Path(entry.file).with_suffix(".pt").as_posix()
    # Everything is made in a scratch folder first and the new pipeline.json checked whole;
    # only then are the three files renamed into place together (an interruption leaves the
    # old bundle or the new one, a refusal leaves the bundle untouched).
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=directory))
    try:
        report = export_network(
            module, entry.kind, scratch / Path(entry.file).name, num_features=bundle.num_features,
            opset=DEFAULT_OPSET if opset is None else opset, runs=runs,
        )
        weights = save_weights(module, scratch / Path(weights_file).name)
        weights["file"] = weights_file
        new_config, new_architecture = dict(getattr(module, "config", None) or {}), architecture_name(module)
        bundle.networks[name] = NetworkEntry(name, entry.kind, entry.file, report.sha256, report.inputs, report.outputs,
                                             new_config, new_architecture, weights)
        # What was exported when, so that the provenance does not describe only the first export
        # (and says when the network is another than the one the cuts were chosen with: other
        # weights are another network, even of the same architecture and config).
        replaced = (new_architecture != entry.architecture or new_config != entry.config
                    or entry.weights is None or weights["sha256"] != entry.weights.get("sha256"))
        bundle.provenance.setdefault("exported_again", []).append({
            "network": name, "opset": report.opset,
            "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "architecture": new_architecture,
            "replaced": replaced,
            **({"replaced_architecture": entry.architecture, "note": "another network than the one the bundle was "
                "trained and tuned with: its cuts and the provenance's settings and figures describe that one"}
               if replaced else {}),
        })
        text = pipeline_json_text(bundle.to_dict())
        new_problems: list[str] = []
        parse_pipeline_data(json.loads(text), directory, new_problems, check_files=False)
        if new_problems:
            raise BundleError(f"the {name} network was not exported into {directory}, which is left as it was: with it "
                              f"the bundle would be invalid: {'; '.join(new_problems)}")
        (scratch / PIPELINE_FILE).write_text(text + "\n", encoding="utf-8")
        with signals_deferred():  # the three files of the scratch folder (the same file system) renamed together
            for file in (entry.file, weights_file, PIPELINE_FILE):
                if (directory / file).is_file():  # a file replaced keeps its permissions
                    os.chmod(scratch / Path(file).name, stat.S_IMODE((directory / file).stat().st_mode))
                os.replace(scratch / Path(file).name, directory / file)
    except OSError as error:
        raise BundleError(f"cannot export into the bundle {directory}: {error.strerror or error}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return load_bundle(directory), report
