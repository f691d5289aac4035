"""The training gathers and sums compute what plain indexing and scatter_sum compute, gradients included."""

from __future__ import annotations

import pytest
import torch

from trackserve.export.scatter import scatter_sum
from trackserve.export.training_rows import gather_rows, sum_rows


def _index(kind: str, num_rows: int, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(size + num_rows)
    if kind == "empty":
        return torch.zeros(0, dtype=torch.int64)
    if kind == "one_row_many_times":
        return torch.full((size,), num_rows - 1, dtype=torch.int64)
    # repeated indices, and rows that no index names (their gradient / sum must stay zero)
    return torch.randint(0, max(1, num_rows // 2), (size,), generator=generator) * 2


INDEXES = ["random_with_repeats", "one_row_many_times", "empty"]


@pytest.mark.parametrize("kind", INDEXES)
@pytest.mark.parametrize("num_rows, size", [(1, 7), (50, 3000)])
def test_gather_rows_is_plain_indexing_with_the_same_gradient(kind, num_rows, size):
    index = _index(kind, num_rows, size)
    values = torch.randn(num_rows, 5, dtype=torch.float64, requires_grad=True)
    plain = values.detach().clone().requires_grad_(True)
    weights = torch.randn(index.shape[0], 5, dtype=torch.float64)
    got, expected = gather_rows(values, index), plain[index]
    assert torch.equal(got, expected)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.allclose(values.grad, plain.grad, rtol=0, atol=1e-12)
    if kind == "random_with_repeats" and num_rows > 1:
        assert torch.all(values.grad[1::2] == 0)  # odd rows are never gathered
        assert values.grad.abs().max() > 0


@pytest.mark.parametrize("kind", INDEXES)
@pytest.mark.parametrize("num_rows, size", [(1, 7), (50, 3000)])
def test_sum_rows_is_scatter_sum_with_the_same_gradient(kind, num_rows, size):
    index = _index(kind, num_rows, size)
    like = torch.zeros(num_rows, 4, dtype=torch.float64)
    messages = torch.randn(index.shape[0], 4, dtype=torch.float64, requires_grad=True)
    plain = messages.detach().clone().requires_grad_(True)
    got, expected = sum_rows(messages, index, like), scatter_sum(plain, index, like)
    assert got.shape == expected.shape == (num_rows, 4)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    weights = torch.randn(num_rows, 4, dtype=torch.float64)
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    assert torch.equal(messages.grad, plain.grad)
    if kind == "one_row_many_times":
        assert torch.allclose(got[-1], messages.detach().sum(0)) and torch.all(got[:-1] == 0)


def test_gradients_pass_gradcheck():
    index = torch.tensor([0, 2, 2, 2, 1, 0], dtype=torch.int64)
    values = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    messages = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    like = torch.zeros(4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: gather_rows(v, index), (values,))
    assert torch.autograd.gradcheck(lambda m: sum_rows(m, index, like), (messages,))


def test_float32_sums_add_in_index_order():
    """index_add_ adds one index after another: a training run is reproducible."""
    index = torch.randint(0, 30, (20000,), generator=torch.Generator().manual_seed(1))
    messages = torch.randn(20000, 8, generator=torch.Generator().manual_seed(2))
    like = torch.zeros(30, 8)
    first, second = sum_rows(messages, index, like), sum_rows(messages, index, like)
    assert torch.equal(first, second)


def test_bad_arguments_are_refused_clearly():
    values = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="one-dimensional int64"):
        gather_rows(values, torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="one-dimensional int64"):
        gather_rows(values, torch.zeros(2, 2, dtype=torch.int64))
    # values out of range: the kernels' own errors
    with pytest.raises(IndexError, match="out of range"):
        gather_rows(values, torch.tensor([3]))
    with pytest.raises(ValueError, match="2 indices for 3 message rows"):
        sum_rows(torch.zeros(3, 2), torch.tensor([0, 1]), values)
    with pytest.raises(ValueError, match=r"messages \[E, C\] and like \[N, C\]"):
        sum_rows(torch.zeros(2, 5), torch.tensor([0, 1]), values)
    with pytest.raises(RuntimeError, match="out of bounds"):
        sum_rows(torch.zeros(2, 2), torch.tensor([0, 3]), values)
