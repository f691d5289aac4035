"""The number type of the training steps: float32, or bfloat16 matrix products (mixed precision).

``trackserve train --precision bfloat16`` runs the forward pass of every filter and GNN
training step under ``torch.autocast`` on the CPU with bfloat16: the matrix products (the
linear layers) compute in bfloat16, while the weights, the optimiser's state, the loss and
its reduction and LayerNorm stay in float32. The row sums of message passing and their
gradients (:mod:`trackserve.export.training_rows`, ``index_add_``) see bfloat16 rows;
PyTorch's CPU kernel adds them up in float32 and rounds each sum once, so a hit's sum of
thousands of messages is as exact as a bfloat16 number can hold (a plain bfloat16 running
sum would stop growing at 256 ones). On a CPU with bfloat16
instructions (AVX512-BF16, AMX) the products run several times faster; the whole step less
so, since the gathers, sums and norms around them do not change (on this project's
machine: ``benchmarks/bench_training_precision.py``). Validation, the
cut choices and the exported networks are float32 whatever the training precision.

PyTorch's bfloat16 products on a CPU go through oneDNN, which builds (compiles) a kernel
for each new matrix shape and caches it; training steps whose sub-graphs all differ in
size would build one every step, which on this project's machine cost more than the
bfloat16 products saved (the default bundle's second GNN: 43 s an epoch against 25–33 s in
float32). So in bfloat16 every step's hits and edges are padded up to a multiple of
:data:`SHAPE_MULTIPLE` (:func:`pad_step`): padding hits that no real
edge touches, and padding edges from the first padding hit to itself, left out of the
loss. A message passes along an edge only between its two hits and every network here
scores an edge from its own hits and their messages, so the real edges' scores, the loss
and its gradients are those of the unpadded step; the shapes repeat, and the kernels are
built once. Float32 steps are not padded.

The embedding's steps stay float32: its hinge loss compares distances between outputs
with the margin, and bfloat16's 8-bit mantissa would round those outputs at about a
hundredth of their size, the scale of the neighbourhoods the radius graph then keeps.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

#: The training precisions: ``float32`` (plain) and ``bfloat16`` (mixed: bfloat16 products).
TRAINING_PRECISIONS = ("float32", "bfloat16")


#: The CPU flags (as Linux's /proc/cpuinfo names them) of instructions that compute in bfloat16.
BFLOAT16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def bfloat16_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...] | None:
    """The :data:`BFLOAT16_CPU_FLAGS` this machine's CPU has (empty: none), or None where
    ``cpuinfo`` cannot be read or lists no flags (not Linux): then nobody knows here."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(flag for flag in BFLOAT16_CPU_FLAGS if flag in flags)
    return None


def emulation_warning(precision: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """A warning when ``precision`` is bfloat16 and the CPU has none of :data:`BFLOAT16_CPU_FLAGS`
    (PyTorch then emulates bfloat16, which may make the training slower than float32); None otherwise."""
    if precision != "bfloat16" or bfloat16_cpu_flags(cpuinfo) != ():
        return None
    return ("warning: --precision bfloat16 on a CPU without bfloat16 instructions (none of "
            f"{', '.join(BFLOAT16_CPU_FLAGS)} in {cpuinfo}): PyTorch emulates them, which may train slower "
            "than float32; time a few epochs of each before a long run")


def step_precision(precision: str):
    """The context a training step's forward pass runs in for ``precision`` (one of :data:`TRAINING_PRECISIONS`).

    ``float32``: no change; ``bfloat16``: ``torch.autocast("cpu", dtype=torch.bfloat16)``.
    Compute the loss from the outputs as float32, outside the context.
    """
    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    raise ValueError(f"unknown training precision {precision!r}: use one of {', '.join(TRAINING_PRECISIONS)}")


#: Hits and edges of a bfloat16 training step are padded up to a multiple of this (see above).
SHAPE_MULTIPLE = 256


def pad_hits(features: np.ndarray, multiple: int = SHAPE_MULTIPLE) -> tuple[np.ndarray, int]:
    """``(features padded, dummy)``: ``features [N, F]`` with 1 to ``multiple`` rows more, copies
    of row 0 (any finite values do), to a multiple of ``multiple`` rows; ``dummy`` = N, the first
    padding row, which :func:`pad_edges` joins to itself. An empty ``features`` gets ``multiple`` rows."""
    num_hits = features.shape[0]
    padded = -(-(num_hits + 1) // multiple) * multiple
    source = features[:1] if num_hits else np.zeros((1, features.shape[1]), dtype=features.dtype)
    return np.concatenate([features, np.repeat(source, padded - num_hits, axis=0)]), num_hits


def pad_edges(edges: np.ndarray, labels: np.ndarray, counted: np.ndarray | None, dummy: int,
              multiple: int = SHAPE_MULTIPLE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges, labels, counted)`` padded to a multiple of ``multiple`` edges with the edge
    ``dummy -> dummy`` (a padding hit of :func:`pad_hits`), labelled false and not counted;
    ``counted`` None (every edge counts) becomes all true for the real edges."""
    num_edges = edges.shape[1]
    extra = -(-num_edges // multiple) * multiple - num_edges
    counted = np.ones(num_edges, dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
    return (np.concatenate([edges, np.full((2, extra), dummy, dtype=edges.dtype)], axis=1),
            np.concatenate([np.asarray(labels, dtype=bool), np.zeros(extra, dtype=bool)]),
            np.concatenate([counted, np.zeros(extra, dtype=bool)]))


def pad_step(features: np.ndarray, edges: np.ndarray, labels: np.ndarray, counted: np.ndarray | None,
             edge_weights: np.ndarray | None = None, hits: tuple[np.ndarray, int] | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """A bfloat16 training step's ``(features, edges, labels, counted, edge_weights)`` with its
    hits (:func:`pad_hits`) and edges (:func:`pad_edges`) padded; the padding edges weigh 1
    (they are not counted), and ``edge_weights`` None stays None. ``hits``: the
    :func:`pad_hits` of ``features`` when the caller padded them once for many steps (the
    filter's steps all read their event's whole hit table); None pads them here."""
    padded, dummy = pad_hits(features) if hits is None else hits
    edges, labels, counted = pad_edges(edges, labels, counted, dummy)
    if edge_weights is not None:
        padding = np.ones(edges.shape[1] - edge_weights.size, dtype=np.float32)
        edge_weights = np.concatenate([np.asarray(edge_weights, dtype=np.float32), padding])
    return padded, edges, labels, counted, edge_weights
