"""Triton Python-backend model: the whole trackserve pipeline of one bundle, one request = one event.

Input ``FEATURES`` FP32 ``[-1, F]``, output ``LABELS`` INT64 ``[-1]``. The bundle and the
runtime settings come from the ``parameters`` of ``config.pbtxt``, the device from its
``instance_group`` kind. See :mod:`trackserve.serving.backend`.
"""

import triton_python_backend_utils as pb_utils

from trackserve.serving.backend import PipelineModel, error_logger, respond, warning_logger


class TritonPythonModel:
    """Runs :class:`trackserve.runtime.pipeline.Pipeline` on each request."""

    def initialize(self, args):
        """Load the bundle named in the config and open its networks."""
        self.model = PipelineModel.from_args(args)
        self.log = error_logger(pb_utils)
        self.model.log_far_hits(warning_logger(pb_utils))

    def execute(self, requests):
        """One response per request, each event processed on its own; bad input gets an error response."""
        return respond(pb_utils, requests, self.model, self.log)
