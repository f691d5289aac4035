"""Fixtures shared by the whole suite: paths to the shipped and shared data, a tiny bundle;
the skip of tests marked ``gpu`` where there is no NVIDIA GPU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_EVENT = DATA / "event000000001"
#: A labels file an earlier run left (a run replaces only files with a labels header).
EARLIER_LABELS = "event_id,hit_id,track_id\n7,1,0\n7,2,0\n"


def gpu_skip_reason(providers, gpus) -> str | None:
    """Why tests marked ``gpu`` cannot run, or None when they can: they need onnxruntime's
    ``CUDAExecutionProvider`` among ``providers`` (onnxruntime-gpu) and an NVIDIA GPU among
    ``gpus`` (the lines of ``nvidia-smi -L``)."""
    if "CUDAExecutionProvider" not in providers:
        return (f"needs an NVIDIA GPU: onnxruntime has no CUDAExecutionProvider (its providers: "
                f"{', '.join(providers) or 'none'})")
    if not gpus:
        return "needs an NVIDIA GPU: nvidia-smi is absent or lists none"
    return None


def nvidia_gpus() -> list[str]:
    """The GPUs ``nvidia-smi -L`` lists (its ``GPU n: ...`` lines); none where it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line for line in done.stdout.splitlines() if line.startswith("GPU ")] if done.returncode == 0 else []


def onnxruntime_providers() -> list[str]:
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked ``gpu`` (pyproject.toml's markers) where no NVIDIA GPU is usable."""
    marked = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not marked:
        return
    reason = gpu_skip_reason(onnxruntime_providers(), nvidia_gpus())
    if reason is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (the real reference data); tests using it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def _tiny_networks(num_features: int, seed: int):
    import torch

    from trackserve.export.embedding import EmbeddingNetwork
    from trackserve.export.filter import EdgeFilter
    from trackserve.export.interaction_gnn import InteractionGNN

    torch.manual_seed(seed)
    embedding = EmbeddingNetwork(in_channels=num_features, emb_hidden=16, nb_layer=2, emb_dim=4)
    edge_filter = EdgeFilter(in_channels=num_features, hidden=16, nb_layer=2)
    gnn = InteractionGNN(in_channels=num_features, hidden=8, n_graph_iters=2, nb_node_layer=2, nb_edge_layer=2)
    for module in (embedding, edge_filter, gnn):
        module.eval()
    return embedding, edge_filter, gnn


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A bundle of small random networks on the TRACKML_1000 features, with a radius that
    gives about ten neighbours per hit on the sample event (needs torch to build)."""
    pytest.importorskip("torch")
    import torch

    from trackserve.bundle import StageParameters, make_bundle
    from trackserve.events.features import TRACKML_1000, hit_features
    from trackserve.events.trackml import read_event

    embedding, edge_filter, gnn = _tiny_networks(TRACKML_1000.num_features, seed=7)
    features = hit_features(read_event(SAMPLE_EVENT, parts=()).hits, TRACKML_1000)
    with torch.no_grad():
        points = embedding(torch.from_numpy(features)).numpy()
    sample = points[:: max(1, len(points) // 500)]
    distances = np.sqrt(((sample[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    radius = float(np.median(np.sort(distances, axis=1)[:, 11]))
    directory = tmp_path_factory.mktemp("tiny_bundle")
    make_bundle(
        directory,
        {"embedding": embedding, "filter": edge_filter, "gnn": gnn},
        features=TRACKML_1000,
        stages=StageParameters(radius=radius, max_neighbours=64, filter_cut=0.4, gnn_cut=0.5, edge_direction="i<j"),
        provenance={"data": "random weights, for tests"},
    )
    return directory


@pytest.fixture(scope="session")
def pruned_bundle(tiny_bundle, tmp_path_factory):
    """:func:`tiny_bundle` with a pruner: a random three-step interaction GNN whose output
    bias is shifted so that its cut (``prune_cut`` 0.3, below the GNN cut 0.5) prunes about
    half of the sample event's filtered edges."""
    import torch

    from trackserve.bundle import StageParameters, load_bundle, make_bundle
    from trackserve.events.features import TRACKML_1000
    from trackserve.export.interaction_gnn import InteractionGNN
    from trackserve.runtime.config import RuntimeConfig
    from trackserve.runtime.pipeline import Pipeline

    embedding, edge_filter, gnn = _tiny_networks(TRACKML_1000.num_features, seed=7)
    torch.manual_seed(11)
    pruner = InteractionGNN(in_channels=TRACKML_1000.num_features, hidden=8, n_graph_iters=3, nb_node_layer=1,
                            nb_edge_layer=2).eval()
    pipeline = Pipeline(tiny_bundle, config=RuntimeConfig(intra_op_threads=1, graph_threads=1))
    features = hit_features_of_sample()
    filtered, _ = pipeline.filter_edges(features, pipeline.build_graph(pipeline.embed(features)))
    with torch.no_grad():
        logits = pruner(torch.from_numpy(features), torch.from_numpy(filtered)).numpy()
        pruner.output_edge_classifier[-1].bias -= float(np.median(logits)) - float(np.log(0.3 / 0.7))
    stages = StageParameters(**{**load_bundle(tiny_bundle).stages.to_dict(), "prune_cut": 0.3})
    directory = tmp_path_factory.mktemp("pruned_bundle")
    make_bundle(directory, {"embedding": embedding, "filter": edge_filter, "pruner": pruner, "gnn": gnn},
                features=TRACKML_1000, stages=stages, provenance={"data": "random weights, for tests"})
    return directory


def hit_features_of_sample() -> np.ndarray:
    """The sample event's features on the TRACKML_1000 spec."""
    from trackserve.events.features import TRACKML_1000, hit_features
    from trackserve.events.trackml import read_event

    return hit_features(read_event(SAMPLE_EVENT, parts=()).hits, TRACKML_1000)


@pytest.fixture(scope="session")
def tiny_torch_networks():
    """The torch networks of :func:`tiny_bundle` (same seed, same weights)."""
    pytest.importorskip("torch")
    from trackserve.events.features import TRACKML_1000

    return _tiny_networks(TRACKML_1000.num_features, seed=7)


def copy_with_stages(bundle: Path, directory: Path, **stages) -> Path:
    """A copy of ``bundle`` in ``directory`` with these ``stages`` of its pipeline.json changed."""
    shutil.copytree(bundle, directory)
    data = json.loads((directory / "pipeline.json").read_text())
    data["stages"].update(stages)
    (directory / "pipeline.json").write_text(json.dumps(data))
    return directory


@pytest.fixture(scope="session")
def sample_features():
    """The sample event's features on the tiny bundle's feature spec (TRACKML_1000)."""
    return hit_features_of_sample()


def assert_stages_refused(bundle: Path, directory: Path, change: dict, message: str) -> None:
    """A copy of ``bundle`` with ``change`` in its stages is refused with ``message`` (a regex)
    both by ``load_bundle`` and by ``StageParameters.from_dict``."""
    from trackserve.bundle import StageParameters, load_bundle
    from trackserve.errors import BundleError

    bad = copy_with_stages(bundle, directory, **change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)
    with pytest.raises(BundleError, match=message):
        StageParameters.from_dict(json.loads((bad / "pipeline.json").read_text())["stages"])


def mixed_size_events(features: np.ndarray) -> list[np.ndarray]:
    """Events of different sizes from one event's features (the whole, one hit, none, slices,
    reversed), twice over: results handed back to the wrong event would show."""
    return [features, features[:1], features[:0], features[:300], features[::-1].copy(), features[:40]] * 2


class LazyEvents:
    """An iterable over ``events`` that records the size of each one as it is read
    (``consumed``), to check how far ahead ``run_many`` reads."""

    def __init__(self, events):
        self.events = events
        self.consumed: list[int] = []

    def __iter__(self):
        for features in self.events:
            self.consumed.append(len(features))
            yield features
