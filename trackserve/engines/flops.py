"""Floating-point operations a network must do on an event, counted from its ONNX graph.

Only the matrix products count (every ``MatMul`` and ``Gemm``: ``2 * rows * K * N``, a
multiply and an add per term); activations, normalisations, gathers and scatters are
memory-bound and left out, so the count is the work a matrix-multiply peak can be held
against. ``rows`` comes from the shapes ONNX shape inference gives each product's
input, whose dynamic dims are the graph's symbolic ``num_hits`` and ``num_edges``.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import BundleError, InputError

#: The symbolic dims a network's products may have, as the bundle names them.
SYMBOLIC_DIMS = ("num_hits", "num_edges")


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in value_info.type.tensor_type.shape.dim]


def _resolve(dims: list, sizes: dict, node, path) -> list[int]:
    resolved = []
    for dim in dims:
        if isinstance(dim, int):
            resolved.append(dim)
        elif dim in sizes:
            resolved.append(sizes[dim])
        else:
            raise BundleError(
                f"{path}: node {node.name or node.op_type} has an input dim {dim!r} that is neither fixed nor one of "
                f"{', '.join(SYMBOLIC_DIMS)}; its FLOPs cannot be counted"
            )
    return resolved


def network_flops(onnx_path: str | Path, num_hits: int, num_edges: int) -> int:
    """FLOPs of the ``MatMul`` and ``Gemm`` nodes of the network at ``onnx_path`` for one event.

    ``2 * rows * K * N`` for each product ``[rows, K] x [K, N]`` (leading batch dims of a
    ``MatMul`` multiply ``rows``), with the symbolic dims ``num_hits`` and ``num_edges``
    set to the given sizes. Needs the ``onnx`` package.

    Raises :class:`InputError` on a negative size and :class:`BundleError` when the file
    cannot be read or a product's shape is not known in terms of those dims.
    """
    for name, value in (("num_hits", num_hits), ("num_edges", num_edges)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{name} must be an integer >= 0; got {value!r}")
    import onnx

    path = Path(onnx_path)
    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    except Exception as error:  # onnx raises several exception types
        raise BundleError(f"cannot read and shape-infer the ONNX file {path}: {error}") from error
    graph = model.graph
    shapes = {v.name: _dims(v) for v in (*graph.input, *graph.value_info, *graph.output)}
    shapes.update({init.name: list(init.dims) for init in graph.initializer})
    sizes = {"num_hits": num_hits, "num_edges": num_edges}
    total = 0
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        missing = [name for name in node.input[:2] if name not in shapes]
        if missing:
            raise BundleError(f"{path}: the shape of {missing[0]!r} (input of {node.name or node.op_type}) is unknown")
        a = _resolve(shapes[node.input[0]], sizes, node, path)
        b = _resolve(shapes[node.input[1]], sizes, node, path)
        attributes = {attr.name: attr.i for attr in node.attribute if attr.name in ("transA", "transB")}
        if node.op_type == "Gemm":
            rows, inner = (a[1], a[0]) if attributes.get("transA") else (a[0], a[1])
            columns = b[0] if attributes.get("transB") else b[1]
        else:
            if len(a) < 2 or len(b) < 1:
                raise BundleError(f"{path}: MatMul {node.name} has operands of rank {len(a)} and {len(b)}")
            rows, inner = math.prod(a[:-1]), a[-1]
            columns = b[-1] if len(b) >= 2 else 1
            rows *= math.prod(b[:-2]) if len(b) > 2 and len(a) == 2 else 1
        total += 2 * rows * inner * columns
    return total
