import os

# nothing in the test suite may try to reach a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the official `rwkv` package (the reference in tests) reads these when rwkv.model is imported
os.environ["RWKV_JIT_ON"] = "1"
os.environ["RWKV_CUDA_ON"] = "0"
os.environ.pop("RWKV_V7_ON", None)
