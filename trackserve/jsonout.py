"""JSON output of the commands: standard JSON only (no NaN), numpy values as Python values."""

from __future__ import annotations

import json
import math

import numpy as np


def json_ready(value):
    """``value`` with nested dicts/lists converted: NaN and infinities -> ``None``, numpy scalars and arrays -> Python."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value, **kwargs) -> str:
    """Standard JSON text of ``value`` (see :func:`json_ready`)."""
    return json.dumps(json_ready(value), allow_nan=False, **kwargs)
