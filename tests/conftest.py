"""Shared test settings: offline, deterministic, small thread pool."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property-based tests draw the same examples on every run: CI stays deterministic (a new failing example is found by
# changing the code, not by chance).
settings.register_profile("xmodal", derandomize=True)
settings.load_profile("xmodal")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
