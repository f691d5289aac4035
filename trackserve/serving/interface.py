"""The tensors and models trackserve serves in Triton, named once for the writer, the models and the client.

The interface is the published ExaTrkX service's: one request is one event, input
``FEATURES`` FP32 ``[-1, F]`` (one row of the bundle's features per hit), output
``LABELS`` INT64 ``[-1]`` (one track label per hit). The ensemble splits the pipeline into
the published service's stage models (``embed``, ``frnn``, ``filter``, ``applyfilter``,
``gnn``, ``wcc``); the tensors flowing between them are named here. ``-1`` marks a dim
that varies from event to event; every other dim comes from the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Name of the input tensor: the node features of one event.
FEATURES = "FEATURES"
#: Name of the output tensor: the track label of each hit.
LABELS = "LABELS"
#: Name of the model that runs the whole pipeline in one Python-backend model.
DEFAULT_MODEL_NAME = "exatrkx"
#: Name of the ensemble model that chains the stage models.
DEFAULT_ENSEMBLE_NAME = "exatrkx_ensemble"

_TRITON_DTYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}
#: The wire names (``FP32``, ``INT64``) of the numpy dtypes used here.
WIRE_DTYPES = {"float32": "FP32", "int64": "INT64"}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a served model: name, numpy dtype name and dims (``-1``: varies per event)."""

    name: str
    dtype: str
    dims: tuple[int, ...]

    @property
    def config_dtype(self) -> str:
        """The ``data_type`` of ``config.pbtxt`` (``TYPE_FP32``...)."""
        return _TRITON_DTYPES[self.dtype]

    @property
    def wire_dtype(self) -> str:
        """The datatype a client sends and receives (``FP32``...)."""
        return WIRE_DTYPES[self.dtype]


@dataclass(frozen=True)
class StageSpec:
    """One model of the ensemble: its name, input and output tensor names, and what it does."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    description: str


#: The ensemble's stage models in execution order, named as in the published service.
ENSEMBLE_STAGES: tuple[StageSpec, ...] = (
    StageSpec("embed", (FEATURES,), ("EMBEDDING",), "embedding network: features -> embedding"),
    StageSpec("frnn", ("EMBEDDING",), ("EDGE_LIST",), "graph building: all pairs closer than the radius"),
    StageSpec("filter", (FEATURES, "EDGE_LIST"), ("FILTER_SCORES",), "filter network: a logit per edge"),
    StageSpec("applyfilter", ("EDGE_LIST", "FILTER_SCORES"), ("EDGE_LIST_AFTER_FILTER",),
              "keep the edges whose filter score passes the filter cut"),
    StageSpec("gnn", (FEATURES, "EDGE_LIST_AFTER_FILTER"), ("GNN_SCORES",), "GNN: a logit per kept edge"),
    StageSpec("wcc", (FEATURES, "EDGE_LIST_AFTER_FILTER", "GNN_SCORES"), (LABELS,),
              "track building: connected components of the edges passing the GNN cut"),
)
#: The stage names, in order.
STAGE_NAMES = tuple(stage.name for stage in ENSEMBLE_STAGES)


def stage_spec(name: str) -> StageSpec:
    """The :class:`StageSpec` of stage ``name``; raises KeyError naming the stages for another name."""
    for stage in ENSEMBLE_STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"no ensemble stage {name!r}; the stages are {', '.join(STAGE_NAMES)}")


def tensor_specs(num_features: int, embedding_dim: int) -> dict[str, TensorSpec]:
    """Every tensor of the served models, with the bundle's feature count and embedding width."""
    specs = (
        TensorSpec(FEATURES, "float32", (-1, int(num_features))),
        TensorSpec("EMBEDDING", "float32", (-1, int(embedding_dim))),
        TensorSpec("EDGE_LIST", "int64", (2, -1)),
        TensorSpec("FILTER_SCORES", "float32", (-1,)),
        TensorSpec("EDGE_LIST_AFTER_FILTER", "int64", (2, -1)),
        TensorSpec("GNN_SCORES", "float32", (-1,)),
        TensorSpec(LABELS, "int64", (-1,)),
    )
    return {spec.name: spec for spec in specs}


def bundle_tensor_specs(bundle) -> dict[str, TensorSpec]:
    """:func:`tensor_specs` for a loaded bundle (feature count and embedding width read from it)."""
    embedding_dims = bundle.networks["embedding"].outputs[0].dims
    return tensor_specs(bundle.num_features, int(embedding_dims[-1]))
