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


@pytest.fixture(scope="session")
def tiny_world_checkpoint(tmp_path_factory):
    """An official-layout .pth of a tiny random Finch with the full World vocabulary (weights
    perturbed off the official init, so its outputs vary with the input)."""
    import torch

    from eaglefinch.rwkv_core import RWKV, RWKVConfig, save_model
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(arch="finch", n_layer=2, n_embd=32, head_size=16, mix_lora_dim=4, decay_lora_dim=8))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    save_model(model, path)
    return path
