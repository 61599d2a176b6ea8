"""lacunes.device: the device a name asks for, or a message that says why not."""

import pytest
import torch

from lacunes.device import resolve_device


def test_auto_and_cpu_resolve_to_what_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert auto == torch.device("cpu")


def test_unknown_or_unavailable_devices_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="unknown device 'gpu0'.*auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' asked for, but CUDA is not available"):
            resolve_device("cuda:1")
