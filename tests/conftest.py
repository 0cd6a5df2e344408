import os

# nothing in the test suite may try to reach a model hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
