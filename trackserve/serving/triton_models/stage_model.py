"""Triton Python-backend model: one stage of the trackserve ensemble (embed, frnn, filter, applyfilter, gnn, wcc).

Which stage, the bundle and the runtime settings come from the ``parameters`` of
``config.pbtxt``. See :mod:`trackserve.serving.stages` and :mod:`trackserve.serving.backend`.
"""

import triton_python_backend_utils as pb_utils

from trackserve.serving.backend import StageModel, error_logger, respond, warning_logger


class TritonPythonModel:
    """Runs one :mod:`trackserve.serving.stages` stage on each request."""

    def initialize(self, args):
        """Load the bundle named in the config and prepare the stage."""
        self.model = StageModel.from_args(args)
        self.log = error_logger(pb_utils)
        self.model.log_far_hits(warning_logger(pb_utils))

    def execute(self, requests):
        """One response per request, each processed on its own; bad input gets an error response."""
        return respond(pb_utils, requests, self.model, self.log)
