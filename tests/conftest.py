import os

import pytest

# nothing in the test suite may try to reach a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the official `rwkv` package (the reference in tests) reads these when rwkv.model is imported
os.environ["RWKV_JIT_ON"] = "1"
os.environ["RWKV_CUDA_ON"] = "0"
os.environ.pop("RWKV_V7_ON", None)


def pytest_addoption(parser):
    parser.addoption("--wkv-launch", default="default",
                     help="Triton WKV launch settings NAME=VALUE+... (kernels.triton.chunk.LAUNCH) for every "
                          "test of this run, e.g. `pytest tests/gpu --wkv-launch max_span=-1`")


@pytest.fixture(autouse=True)
def _wkv_launch(request):
    """Applies --wkv-launch to the Triton WKV kernels for the test, then restores the defaults."""
    text = request.config.getoption("--wkv-launch")
    if text == "default":
        yield
        return
    from kernels.triton import chunk
    saved = dict(chunk.LAUNCH)
    chunk.LAUNCH.update(chunk.parse_launch(text))
    try:
        yield
    finally:
        chunk.LAUNCH.clear()
        chunk.LAUNCH.update(saved)
