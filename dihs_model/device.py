"""Where a model runs: one resolver for the CLI's --device and the service's DIHS_DEVICE."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device name that is wrong or not present on this machine, reported as one line."""


def pick_device(name: str = "auto") -> torch.device:
    """auto: the current GPU if one is visible, else the CPU; cpu; cuda or cuda:N, which must be visible."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {name!r}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        build = " (this torch is a CPU build)" if torch.version.cuda is None else ""
        raise DeviceError(f"device {name!r}: no CUDA GPU is visible here{build}")
    # an explicit index, so that devices compare equal to the one a tensor reports
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise DeviceError(f"device {name!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
