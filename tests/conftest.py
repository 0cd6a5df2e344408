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
                     help="Triton WKV launch settings NAME=VALUE+... over the defaults (WKVLaunch, "
                          "kernels/wkv_op/triton/launch.py) for every kernel test of this run, e.g. "
                          "`pytest tests/gpu --wkv-launch max_span=-1`")


@pytest.fixture(scope="session")
def wkv_launch(request):
    """The run's Triton WKV launch settings (--wkv-launch): kernel tests pass them as `launch=`."""
    from eaglefinch.kernels.wkv_op.triton import WKVLaunch
    return WKVLaunch.parse(request.config.getoption("--wkv-launch"))
