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


@pytest.fixture(scope="module")
def float32_scoring():
    """
    The device reports no native bf16, so every `precision="auto"` scoring path (xmodal.precision and the remote-code
    pipeline's copy of its check) runs in float32: for test modules that compare rankings with a float32 brute force
    (`pytestmark = pytest.mark.usefixtures("float32_scoring")`; module-scoped, so module fixtures see it too).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
        patch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        patch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
        yield
