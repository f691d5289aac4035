"""Tests marked ``gpu`` are skipped, with the reason, where no NVIDIA GPU is usable (tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests import conftest


def test_the_decision_needs_both_the_cuda_provider_and_a_gpu():
    gpu = ["GPU 0: NVIDIA H200 (UUID: GPU-0)"]
    without_cuda = conftest.gpu_skip_reason(["AzureExecutionProvider", "CPUExecutionProvider"], gpu)
    assert without_cuda == ("needs an NVIDIA GPU: onnxruntime has no CUDAExecutionProvider (its providers: "
                            "AzureExecutionProvider, CPUExecutionProvider)")
    assert "its providers: none" in conftest.gpu_skip_reason([], gpu)  # onnxruntime not importable
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert conftest.gpu_skip_reason(cuda, []) == "needs an NVIDIA GPU: nvidia-smi is absent or lists none"
    assert conftest.gpu_skip_reason(cuda, gpu) is None


class _Item:
    """What the hook uses of a collected test item."""

    def __init__(self, marked: bool):
        self.markers = [pytest.mark.gpu.mark] if marked else []

    def get_closest_marker(self, name):
        return next((mark for mark in self.markers if mark.name == name), None)

    def add_marker(self, marker):
        self.markers.append(marker.mark)


@pytest.mark.parametrize("providers, gpus, skipped", [
    (["CPUExecutionProvider"], ["GPU 0: NVIDIA H200"], True),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], [], True),
    (["CUDAExecutionProvider", "CPUExecutionProvider"], ["GPU 0: NVIDIA H200"], False),
])
def test_the_hook_skips_only_the_marked_items_and_only_without_a_gpu(monkeypatch, providers, gpus, skipped):
    monkeypatch.setattr(conftest, "onnxruntime_providers", lambda: providers)
    monkeypatch.setattr(conftest, "nvidia_gpus", lambda: gpus)
    marked, plain = _Item(True), _Item(False)
    conftest.pytest_collection_modifyitems(None, [plain, marked])
    skips = [mark for mark in marked.markers if mark.name == "skip"]
    assert plain.markers == []
    if skipped:
        assert len(skips) == 1 and skips[0].kwargs["reason"] == conftest.gpu_skip_reason(providers, gpus)
    else:
        assert skips == []
