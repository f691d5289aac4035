"""Message aggregation that is right in PyTorch and in the exported ONNX graph.

A sum over destination nodes must add every message, also when many edges share a
destination. Only ``Tensor.scatter_add`` with an index expanded to the message shape
does that in both places: the legacy ONNX exporter turns it into
``ScatterElements(reduction="add")``, which ONNX Runtime computes correctly with any
number of threads. ``index_add`` and ``index_put(accumulate=True)`` export to
scatters *without* reduction (duplicates overwrite each other), and ``ScatterND``
with ``reduction="add"`` loses updates in multi-threaded ONNX Runtime (see
``NOTES.md``), so neither is used anywhere in the networks.
"""

from __future__ import annotations

import torch


def scatter_sum(messages: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum the rows of ``messages[E, C]`` into the rows ``index[E]`` of a zero tensor shaped as ``like[N, C]``.

    ``like`` supplies the output shape, dtype and device (in the networks it is the node
    feature tensor, whose width equals the message width); passing a tensor rather than
    an integer keeps the number of nodes dynamic in an exported graph. Rows with no
    incoming message stay zero. Additions happen in edge order, as in ``torch_scatter``.
    """
    if messages.dim() != 2 or index.dim() != 1 or like.dim() != 2:
        raise ValueError(
            f"scatter_sum needs messages [E, C], index [E] and like [N, C]; got {tuple(messages.shape)}, "
            f"{tuple(index.shape)}, {tuple(like.shape)}"
        )
    if not torch.jit.is_tracing() and messages.shape[1] != like.shape[1]:
        raise ValueError(f"scatter_sum: messages have {messages.shape[1]} columns but like has {like.shape[1]}")
    expanded = index.unsqueeze(-1).expand_as(messages)
    return torch.zeros_like(like).scatter_add(0, expanded, messages)
