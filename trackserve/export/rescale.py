"""Re-express trained networks for another feature scaling, with η derived inside them.

A bundle trained on the features ``r/1000, φ/π, z/1000, η`` computes, for a hit, the same
function of ``r, φ, z`` as networks that read the published ExaTrkX service's
``r/3000, φ/π, z/400`` and derive η themselves
(:class:`~trackserve.export.derived.DerivedEta`), provided every weight that multiplies a
scaled feature is multiplied by the ratio of the scales. Only the first layers read
features: the embedding's and the node encoder's first ``Linear`` (one column per
feature) and the filter's and edge encoder's first ``Linear`` (columns for each hit's
features and for their scaled differences). φ/π has the same scale in both, so its
periodic difference is unchanged. The result agrees with the original to float32
rounding; :func:`rescale_bundle` checks it on the sample event before writing.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from ..bundle.saving import package_versions
from ..errors import EventFormatError, ExportParityError, InputError

#: Largest output difference allowed between a rescaled network and its original on the
#: check event, relative to the original's output scale (at least 1), as for the export
#: parity. The two differ by float32 rounding only (η computed in float32 inside the
#: network instead of read from the features, the first layer's weights multiplied:
#: 1.4e-5 of the logit scale for the shipped GNN); a wrong rescaling differs by tenths.
RESCALE_TOLERANCE = 1e-4

#: The feature names a bundle may have for :func:`rescale_networks`: r, φ, z and η read as a
#: feature (η last), or r, φ, z alone (η derived inside the networks, or not used).
SOURCE_NAMES = ("r", "phi", "z", "eta")


def _column_factors(old_spec, new_spec) -> np.ndarray:
    """The factor of each column of a network's view of a hit (r, φ, z and η, read or derived:
    η's factor is 1, a pseudorapidity being a pure number)."""
    if tuple(old_spec.names) not in (SOURCE_NAMES, SOURCE_NAMES[:3]):
        raise InputError(f"rescaling needs a bundle on the features {list(SOURCE_NAMES)} (eta last) or "
                         f"{list(SOURCE_NAMES[:3])}; this one has {list(old_spec.names)}")
    if tuple(new_spec.names) != SOURCE_NAMES[:3]:
        raise InputError(f"the new features must be {list(SOURCE_NAMES[:3])} (eta is derived); got {list(new_spec.names)}")
    # old feature = physical / old_scale = new feature * new_scale / old_scale
    return np.array([new / old for new, old in zip(new_spec.scales, old_spec.scales[:3])] + [1.0])


def _scale_columns(linear, columns, factors) -> None:
    import torch

    with torch.no_grad():
        for column, factor in zip(columns, factors):
            linear.weight[:, column] *= float(factor)


def rescale_networks(networks: dict, old_spec, new_spec) -> dict:
    """New ``embedding``, ``filter`` and ``gnn`` torch modules reading ``new_spec`` (r, φ, z).

    ``networks`` holds the trained modules on ``old_spec``: r, φ, z, η (η then derived inside
    the new networks), or r, φ, z (η derived inside, with the new scales, where the old
    networks derived it; not used where they did not). Supported: EmbeddingNetwork,
    EdgeFilter and InteractionGNN, with or without ``pair_geometry`` (recomputed from the
    new scales); anything else raises InputError naming it.
    """
    from .derived import GEOMETRY_FLAGS, eta_spec_for, geometry_spec_for
    from .embedding import EmbeddingNetwork
    from .filter import EdgeFilter
    from .interaction_gnn import InteractionGNN

    view_factors = _column_factors(old_spec, new_spec)  # r, phi, z, eta
    reads_eta = "eta" in old_spec.names
    eta = eta_spec_for(new_spec.names, new_spec.scales)
    kinds = {"embedding": EmbeddingNetwork, "filter": EdgeFilter, "pruner": InteractionGNN, "gnn": InteractionGNN}
    out = {}
    for name, network in networks.items():
        if network.config.get("in_channels") != len(old_spec.names):
            raise InputError(f"the {name} network takes {network.config.get('in_channels')} features per hit, but "
                             f"the bundle's features are {list(old_spec.names)}")
        derives_eta = network.config.get("derived_eta") is not None
        if type(network) is not kinds.get(name) or (reads_eta and derives_eta):
            what = getattr(type(network), "architecture", type(network).__name__)
            supported = ", ".join(f"{kind} {getattr(cls, 'architecture', cls.__name__)}" for kind, cls in kinds.items())
            raise InputError(f"cannot rescale the {name} network (architecture {what}"
                             f"{', reading eta and deriving it too' if reads_eta and derives_eta else ''}); "
                             f"supported: {supported}")
        sees_eta = reads_eta or derives_eta
        config = {**network.config, "in_channels": 3, "derived_eta": eta if sees_eta else None}
        if network.config.get("pair_geometry") is not None:
            # the edge geometry is computed in mm and radians from the r, phi, z columns: same
            # columns, the new scales (its outputs join the layer after the hit columns)
            config["pair_geometry"] = geometry_spec_for(
                new_spec.names, new_spec.scales,
                **{flag: network.config["pair_geometry"].get(flag, False) for flag in GEOMETRY_FLAGS})
        fresh = type(network).from_config(config)
        fresh.load_state_dict(network.state_dict())
        width = 4 if sees_eta else 3  # the layers' view of a hit: r, phi, z (and eta)
        factors = view_factors[:width]
        if name == "embedding":
            _scale_columns(fresh.network[0], range(width), factors)
        elif name == "filter":
            blocks = 3 if fresh.edge_differences else 2
            columns = [block * width + j for block in range(blocks) for j in range(width)]
            _scale_columns(fresh.input_layer, columns, np.tile(factors, blocks))
        else:
            _scale_columns(fresh.node_encoder[0], range(width), factors)
            if fresh.edge_differences:
                hidden = fresh.config["hidden"]
                _scale_columns(fresh.edge_encoder[0], [2 * hidden + j for j in range(width)], factors)
        out[name] = fresh.eval()
    return out


def _check_phi_scale(bundle, old_spec, new_spec) -> None:
    """InputError when the φ scale changes for networks that take φ's differences as periodic:
    their period (2 for φ/π) is a property of the trained weights that rescaling cannot move."""
    if "phi" not in old_spec.names or "phi" not in new_spec.names:
        return
    old_scale = old_spec.scales[old_spec.names.index("phi")]
    new_scale = new_spec.scales[new_spec.names.index("phi")]
    periodic = [name for name, entry in bundle.networks.items() if entry.config.get("periodic_features")]
    if periodic and not np.isclose(old_scale, new_scale, rtol=1e-12, atol=0):
        given = "pi" if np.isclose(old_scale, np.pi, rtol=1e-12, atol=0) else repr(old_scale)
        raise InputError(f"phi's scale must be exactly the bundle's, {old_scale!r} (got {new_scale!r}): the "
                         f"{', '.join(periodic)} network(s) wrap phi's differences with the period "
                         f"{2 * np.pi / old_scale:g} that scale gives, which rescaling cannot move; write it as "
                         f"phi:{given}")


def rescale_bundle(source, output, new_spec, *, track_building: str | None = None, check_features=None) -> dict:
    """Write the bundle ``source`` again at ``output`` for the features ``new_spec``.

    The networks are rebuilt from the bundle's torch weights, rescaled
    (:func:`rescale_networks`), exported and validated as every bundle network is; the
    stage parameters are kept (``track_building`` replaces the method when given, and a change of method drops
    the gap cut, which was chosen for the old one).
    ``check_features`` (an Event) is run through both bundles' networks first: the largest
    output difference of each network is returned and recorded in the provenance, and a
    difference above :data:`RESCALE_TOLERANCE` (relative to the output scale) raises
    InputError naming each network before anything is written. Scales so far from the
    bundle's that the check event's features or the exported networks stop being finite
    raise InputError naming the scales.
    """
    import dataclasses

    import torch

    from ..bundle import load_bundle, make_bundle
    from ..events.features import hit_features
    from .bundle_networks import load_torch_network

    from ..bundle_output import check_bundle_output
    from ..events.event import Event
    from ..events.features import FeatureSpec

    if not isinstance(new_spec, FeatureSpec):
        raise InputError(f"new_spec must be a FeatureSpec (trackserve.events.features), got {type(new_spec).__name__}")
    if check_features is not None and not isinstance(check_features, Event):
        raise InputError(f"check_features must be a TrackML Event (read_event reads one) or None, got "
                         f"{type(check_features).__name__}")
    # before any work, as the command checks it: never the bundle it reads (by its directory or pipeline.json)
    check_bundle_output(output, overwrite=True, reads={"source (the bundle to rescale)": source}, option="output")
    bundle = load_bundle(source)
    old_spec = bundle.feature_spec
    _check_phi_scale(bundle, old_spec, new_spec)
    old = {name: load_torch_network(bundle, name) for name in bundle.networks}
    new = rescale_networks(old, old_spec, new_spec)
    differences, allowances = {}, {}
    if check_features is not None:
        old_x = torch.from_numpy(hit_features(check_features.hits, old_spec))
        try:
            new_x = torch.from_numpy(hit_features(check_features.hits, new_spec))
        except EventFormatError as error:
            raise InputError(f"the feature scales {_scales_in_words(new_spec)} (the bundle's: "
                             f"{_scales_in_words(old_spec)}) make the check event's features unusable ({error}): "
                             "give scales nearer the bundle's") from None
        rng = np.random.default_rng(0)
        edges = torch.from_numpy(rng.integers(0, old_x.shape[0], (2, 20_000)))
        failures = []
        with torch.no_grad():
            for name in old:
                extra = () if name == "embedding" else (edges,)
                expected = old[name](old_x, *extra)
                differences[name] = float((expected - new[name](new_x, *extra)).abs().max())
                allowances[name] = allowed = RESCALE_TOLERANCE * max(1.0, float(expected.abs().max()))
                if not differences[name] <= allowed:
                    failures.append(f"{name}: largest difference {differences[name]:.3g} (allowed {allowed:.3g})")
        if failures:
            raise InputError("the rescaled networks do not compute what the originals compute on the check event, "
                             "so nothing was written: " + "; ".join(failures))
    stages = bundle.stages
    if track_building is not None and track_building != stages.track_building:
        # A gap cut and piece joining belong to the best-edge method they were chosen for.
        stages = dataclasses.replace(stages, track_building=track_building, gap_cut=None, join_pieces=None)
    provenance = dict(bundle.provenance)
    record = {
        "from": str(Path(source).resolve()), "from_features": {"names": list(old_spec.names), "scales": list(old_spec.scales)},
        "max_output_difference_on_check_event": differences,
        "allowed_difference_on_check_event": allowances, "track_building": stages.track_building,
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "packages": package_versions(),
    }
    if "rescaled" in provenance:  # a bundle rescaled before: its record is kept, inside this one
        record["previous"] = provenance["rescaled"]
    provenance["rescaled"] = record
    try:
        make_bundle(output, new, features=new_spec, stages=stages, provenance=provenance)
    except ExportParityError as error:  # the export checks at features of the usual scale, not the event's
        report = dataclasses.replace(error.report, path=f"(rescaled) {Path(error.report.path).name}")
        raise InputError(f"the networks rescaled for the feature scales {_scales_in_words(new_spec)} (the bundle's: "
                         f"{_scales_in_words(old_spec)}) do not "
                         f"export with parity, so nothing was written: scales that far from the bundle's make the "
                         f"rescaled weights overflow or lose float32 precision; give scales nearer the bundle's. The "
                         f"export's check:\n{report.summary()}") from None
    return differences


def _scales_in_words(spec) -> str:
    """A feature spec's names and scales for messages: ``r 3000, phi 3.14159, z 400``."""
    return ", ".join(f"{name} {scale:g}" for name, scale in zip(spec.names, spec.scales))
