"""Seeding and progress display of the training loops."""

from __future__ import annotations

import random
import sys
from typing import Iterable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch, Python's ``random`` and numpy's legacy global state; return a numpy Generator for ``seed``.

    The training code draws every random number from the returned generator or from
    torch's seeded generator, so two runs with the same seed and thread count give the
    same weights.
    """
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    return np.random.default_rng(seed)


def progress(iterable: Iterable[T], description: str, *, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """``iterable`` wrapped in a tqdm progress bar on stderr (plain iteration when not ``enabled``)."""
    if not enabled:
        return iter(iterable)
    from tqdm import tqdm

    return iter(tqdm(iterable, desc=description, total=total, leave=False, file=sys.stderr, dynamic_ncols=True))


def report(message: str, *, enabled: bool = True) -> None:
    """Print one line of training progress to stderr without breaking an open progress bar."""
    if not enabled:
        return
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
