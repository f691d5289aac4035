"""Fixtures of the serving tests: a model repository of the tiny bundle and a real tritonserver serving it.

Tests that need the server skip, with the reason, where tritonclient or the
tritonserver of the nvidia-pytriton wheel (or its Python-backend stub) is missing.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import SAMPLE_EVENT, SHARED_DATA

LRT_EVENTS = SHARED_DATA / "exatrkx_service" / "lrt_events"


def require_triton() -> None:
    """Skip the calling test unless tritonclient and a usable tritonserver are installed."""
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as error:
        pytest.skip(f"tritonclient is not importable ({error}); install the serving extra: pip install -e '.[serving]'")
    from trackserve.errors import BackendUnavailableError
    from trackserve.serving.server import find_triton

    try:
        find_triton()
    except BackendUnavailableError as error:
        pytest.skip(f"no usable tritonserver: {error}")


def start_server(repository, **settings):
    """A started TritonServer on free loopback ports (metrics off)."""
    from trackserve.serving.server import ServerSettings, TritonServer, free_port

    options = dict(http_port=free_port(), grpc_port=free_port(), metrics_port=None, startup_timeout_s=240.0)
    options.update(settings)
    return TritonServer(repository, ServerSettings(**options)).start()


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_bundle):
    """The local runtime on the tiny bundle: the reference every served answer is compared with."""
    from trackserve.runtime.pipeline import Pipeline

    return Pipeline(tiny_bundle)


@pytest.fixture(scope="session")
def sample_features(tiny_pipeline) -> np.ndarray:
    """Features of the shipped sample event (5,527 hits) with the tiny bundle's feature spec."""
    from trackserve.events.sources import list_inputs, read_input

    kind, path = list_inputs([SAMPLE_EVENT])[0]
    return read_input(kind, path, tiny_pipeline.feature_spec).features


@pytest.fixture(scope="session")
def lrt_features() -> list[np.ndarray]:
    """Features of five events of the published service's throughput study (skips if the shared data is absent)."""
    if not LRT_EVENTS.is_dir():
        pytest.skip(f"the shared data folder {LRT_EVENTS} is absent")
    from trackserve.events.trackml import read_feature_csv

    return [read_feature_csv(LRT_EVENTS / f"evt_{i}.csv", 3) for i in (0, 1, 12, 57, 99)]


@pytest.fixture(scope="session")
def served_repository(tiny_bundle, tmp_path_factory):
    """The tiny bundle written as a repository with both layouts, one thread per instance."""
    from trackserve.serving.repository import RepositoryOptions, write_repository

    options = RepositoryOptions(layout="both", intra_op_threads=1, graph_threads=1)
    return write_repository(tiny_bundle, tmp_path_factory.mktemp("repository") / "models", options)


@pytest.fixture(scope="session")
def triton_server(served_repository):
    """A real tritonserver serving :func:`served_repository` on free loopback ports for the whole session."""
    require_triton()
    server = start_server(served_repository.path)
    yield server
    server.stop()
