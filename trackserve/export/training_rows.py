"""Row gathers and row sums with cheap CPU gradients, for training steps only.

A GNN step gathers hit rows onto edges (``x[start]``) and sums edge rows into hits
(:func:`~trackserve.export.scatter.scatter_sum`). PyTorch's own gradients of those are
slow on a CPU: the gradient of ``x[index]`` is an accumulating ``index_put`` that sorts
the index first, and the gradient of ``scatter_add`` over an expanded index is a
``gather`` that reads one index per element. On a 15k-edge sector of the default GNN
they took a third of a training step. The two functions here compute the same values
with each other's cheap kernels as gradients:

* :func:`gather_rows`: ``values.index_select(0, index)``; gradient ``index_add_``.
* :func:`sum_rows`: ``zeros.index_add_(0, index, messages)``; gradient ``index_select``.

Both are exact sums in index order (``index_add_`` on a CPU adds the rows one index after
another), so a training run stays reproducible. They are autograd functions that ONNX
cannot express: the networks' exported forms keep plain indexing and ``scatter_sum``,
and only :func:`~trackserve.export.inference_forms.factored_form` with ``training=True``
(what ``trackserve train`` steps through) uses these.
"""

from __future__ import annotations

import torch


class _GatherRows(torch.autograd.Function):
    """``values[index]`` whose gradient adds the rows back with ``index_add_``."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = values.shape[0]
        return values.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        out = grad.new_zeros((ctx.num_rows,) + tuple(grad.shape[1:]))
        return out.index_add_(0, index, grad), None


class _SumRows(torch.autograd.Function):
    """Rows of ``messages`` summed into the rows ``index`` of a zero tensor; gradient ``index_select``."""

    @staticmethod
    def forward(ctx, messages: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
        ctx.save_for_backward(index)
        out = messages.new_zeros((num_rows,) + tuple(messages.shape[1:]))
        return out.index_add_(0, index, messages)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


def _check_index(index: torch.Tensor, name: str) -> None:
    # Values out of range are refused by index_select / index_add_ themselves.
    if index.dim() != 1 or index.dtype != torch.int64:
        raise ValueError(f"{name}: the index must be one-dimensional int64, got {tuple(index.shape)} {index.dtype}")


def gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` (rows of ``values[N, ...]`` picked by ``index[E]`` int64, repeats allowed),
    differentiable in ``values`` with an ``index_add_`` gradient."""
    _check_index(index, "gather_rows")
    return _GatherRows.apply(values, index)


def sum_rows(messages: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """What :func:`~trackserve.export.scatter.scatter_sum` computes (rows of ``messages[E, C]``
    added into the rows ``index[E]`` of a zero ``[N, C]`` tensor shaped as ``like``),
    differentiable in ``messages`` with an ``index_select`` gradient."""
    if messages.dim() != 2 or like.dim() != 2 or messages.shape[1] != like.shape[1]:
        raise ValueError(f"sum_rows needs messages [E, C] and like [N, C]; got {tuple(messages.shape)} and "
                         f"{tuple(like.shape)}")
    if index.shape[0] != messages.shape[0]:
        raise ValueError(f"sum_rows: {index.shape[0]} indices for {messages.shape[0]} message rows")
    _check_index(index, "sum_rows")
    return _SumRows.apply(messages, index, like.shape[0])
