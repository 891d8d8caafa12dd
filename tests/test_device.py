"""dihs_model.device: resolving auto/cpu/cuda[:N] and the one-line errors, with CUDA simulated, so the
same checks run on machines with and without a GPU; and the device a model's weights are on."""

import pytest
import torch

from dihs_model.device import DeviceError, model_device, pick_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    """Two visible CUDA devices, the current one cuda:1 (nothing is allocated on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


@pytest.mark.parametrize("name", ["cpu", "cpu:0"])
def test_cpu_is_always_there_and_has_no_index(name):
    assert pick_device(name) == torch.device("cpu")
    assert pick_device(name).index is None


def test_auto_is_the_cpu_without_a_gpu(no_gpu):
    assert pick_device() == torch.device("cpu")
    assert pick_device("auto") == torch.device("cpu")


def test_auto_is_the_current_gpu_when_one_is_visible(two_gpus):
    assert pick_device("auto") == torch.device("cuda", 1)


def test_auto_matches_this_machine():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == want


@pytest.mark.parametrize("name, want", [("cuda", 1), ("cuda:0", 0), ("cuda:1", 1)])
def test_cuda_names_get_an_explicit_index(two_gpus, name, want):
    device = pick_device(name)
    assert device.type == "cuda" and device.index == want


def test_a_gpu_index_past_the_visible_ones_is_refused(two_gpus):
    with pytest.raises(DeviceError) as e:
        pick_device("cuda:2")
    assert str(e.value) == "device 'cuda:2': only 2 CUDA device(s) visible (cuda:0..cuda:1)"


@pytest.mark.parametrize("cuda_version, hint", [(None, " (this torch is a CPU build)"), ("12.1", "")])
def test_cuda_without_a_gpu_says_so_and_names_a_cpu_build(no_gpu, monkeypatch, cuda_version, hint):
    monkeypatch.setattr(torch.version, "cuda", cuda_version)
    with pytest.raises(DeviceError) as e:
        pick_device("cuda:0")
    assert str(e.value) == f"device 'cuda:0': no CUDA GPU is visible here{hint}"


@pytest.mark.parametrize("name", ["gpu", "mps", "meta", "cuda:x", "", "CUDA"])
def test_unknown_device_names_are_refused_with_the_choices(name):
    with pytest.raises(DeviceError) as e:
        pick_device(name)
    assert str(e.value) == f"unknown device {name!r}: choose auto, cpu, cuda or cuda:N"
    assert isinstance(e.value, ValueError)  # callers that catch ValueError see it too


def test_model_device_is_where_the_weights_are():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    meta = torch.nn.Linear(2, 2, device="meta")
    assert model_device(meta) == torch.device("meta")
