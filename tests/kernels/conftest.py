"""Kernel tests run Triton's interpreter on CPU and the compiled kernels on a GPU.

TRITON_INTERPRET must be set before any ``@triton.jit`` function is created, i.e.
before ``kernels`` is imported; conftest files load before the test modules.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
