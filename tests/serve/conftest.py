"""Fixtures of the server tests: a server on a tiny visual run (for the API and the chat page)."""
import pytest

from eaglefinch.visual.shapes import write_shapes_dataset
from eaglefinch.visual.train import train_visual
from tests.serve.test_server import start_server
from tests.visual.test_bad_inputs import write_config


@pytest.fixture(scope="module")
def visual(tmp_path_factory):
    """(server URL, run folder, images folder) of a tiny visual run trained one step."""
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, n_train=8, n_heldout=2, seed=3)
    folder = tmp_path_factory.mktemp("visual")
    train_visual(write_config(folder), root / "train.jsonl", folder / "run", random_encoder=True, progress=False)
    proc, base = start_server(folder / "run", "--max-image-mb", "0.05", "--allow-local-files", str(root / "images"))
    yield base, folder / "run", root / "images"
    proc.terminate()
    assert proc.wait(timeout=30) == 0
