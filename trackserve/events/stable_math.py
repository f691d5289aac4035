"""Element-wise math whose last bit does not depend on how numpy lays the inputs out.

Measured on this project's machines (numpy 1.26, AVX-512): ``numpy.arctan2`` of strided
views, such as the columns ``v[:, 1], v[:, 0]`` of an ``[n, 3]`` array, went through
buffers whose placement changes from call to call, and between one call in twelve and
one in seven gave results one unit in the last place away from the others, so a seeded simulation was not
reproducible bit for bit. On C-contiguous inputs the results were the same in every one
of thousands of calls. ``sin``, ``cos``, ``tan``, ``arctan``, ``arccos``, ``hypot``,
``sqrt``, ``log`` and ``sinh`` of the same strided views did not vary.
"""

from __future__ import annotations

import numpy as np


def arctan2(y, x) -> np.ndarray:
    """``numpy.arctan2(y, x)`` computed on C-contiguous copies of strided array inputs."""
    return np.arctan2(_contiguous(y), _contiguous(x))


def _contiguous(value):
    if isinstance(value, np.ndarray) and value.ndim and not value.flags.c_contiguous:
        return np.ascontiguousarray(value)
    return value
