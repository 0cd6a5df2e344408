"""The package as a user installs it: a wheel, installed non-editable into a fresh virtual environment
outside the repository, used from a temporary directory.

The new environment reuses this one's dependencies (torch and the rest) through a .pth file instead
of downloading them; its own site-packages comes first on sys.path, so `eaglefinch` is the wheel's.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent('''
    import json, sys
    from importlib import metadata, resources
    from pathlib import Path
    from packaging.requirements import Requirement

    import eaglefinch
    from eaglefinch import RWKV, RWKVConfig, RWKVState, list_presets
    from eaglefinch.text.tokenizer import WorldTokenizer

    dist = metadata.distribution("eaglefinch")
    missing = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            try:
                if metadata.version(req.name) not in req.specifier:
                    missing.append(f"{req} (found {metadata.version(req.name)})")
            except metadata.PackageNotFoundError:
                missing.append(str(req))
    presets = list_presets()
    configs = {name: RWKVConfig.load(name).to_dict() for name in presets}
    cfg = RWKVConfig.load("finch-tiny")
    model = RWKV(RWKVConfig(**{**cfg.to_dict(), "n_layer": 1, "n_embd": 64, "head_size": 16,
                               "dim_att": None, "dim_ffn": None}))
    logits, state = model(__import__("torch").tensor([[1, 2, 3]]))
    tok = WorldTokenizer()
    text = "Hello, 世界! Привет"
    print(json.dumps({
        "package": eaglefinch.__file__,
        "top_level": dist.read_text("top_level.txt").split(),
        "missing_requirements": missing,
        "presets": presets,
        "logits": list(logits.shape),
        "state_is_rwkv_state": isinstance(state, RWKVState),
        "round_trip": tok.decode(tok.encode(text)) == text,
        "ids": tok.encode("Hello"),
        "clip_config": resources.files("eaglefinch.visual").joinpath(
            "model_configs/EagleFinch-ViT-Tiny.json").is_file(),
    }))
''')


def run(args, cwd, **kwargs):
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv with the wheel installed, a working directory outside the repository)."""
    tmp = tmp_path_factory.mktemp("package")
    # build from a copy of the project's files: a build/ folder left in the checkout could add stale modules
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (tmp / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp / "src" / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
         str(tmp / "src")], cwd=tmp)
    wheels = list((tmp / "dist").glob("eaglefinch-*.whl"))
    assert len(wheels) == 1, wheels
    run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], cwd=tmp)
    python = tmp / "venv" / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip())
    # this environment's packages (torch, ...) behind the new one's own site-packages
    (site / "_dependencies_of_the_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", "--no-deps",
         "--ignore-installed", str(wheels[0])], cwd=tmp)
    work = tmp / "work"
    work.mkdir()
    return python, work


def test_wheel_is_one_package_with_its_configs_and_works_outside_the_repository(installed):
    python, work = installed
    env = dict(os.environ, PYTHONPATH="")  # nothing of the repository on the path
    report = json.loads(run([str(python), "-c", CHECK], cwd=work, env=env))
    assert report["top_level"] == ["eaglefinch"]
    assert Path(report["package"]).is_relative_to(python.parent.parent), report["package"]
    assert report["missing_requirements"] == []
    assert {"finch-1.6b", "finch-7b", "eagle-7b", "finch-tiny"} <= set(report["presets"])
    assert report["logits"] == [1, 3, 65536] and report["state_is_rwkv_state"]
    assert report["round_trip"] and report["ids"] == [33155]  # "Hello" in the World vocabulary
    assert report["clip_config"]

    eaglefinch = str(python.parent / "eaglefinch")
    assert "text" in run([eaglefinch, "--help"], cwd=work, env=env)
    corpus = work / "corpus"
    corpus.mkdir()
    for i in range(40):  # a tiny corpus of many documents, so both splits get some
        (corpus / f"doc{i}.txt").write_text(f"User: What is {i} plus {i}?\n\nAssistant: It is {2 * i}.\n" * 8)
    run([eaglefinch, "text", "prepare", "corpus", "--out", "data", "--val-fraction", "0.2"], cwd=work, env=env)
    run([eaglefinch, "text", "train", "--config", "text-tiny", "--data", "data", "--out", "run", "--max-steps", "2"],
        cwd=work, env=env)
    metrics = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2]
    assert json.loads((work / "run" / "config.json").read_text())["domain"] == "text"
    out = run([eaglefinch, "text", "generate", "--checkpoint", "run", "--prompt", "User: Hi", "--max-tokens", "3"],
              cwd=work, env=env)
    assert out.startswith("User: Hi")
