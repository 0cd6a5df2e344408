"""The project's layering and its shipped configs.

Layers (README, "Layout"): kernels <- rwkv_core <- the domains text, music, visual <- eaglefinch
(command line, demo). rwkv_core imports no domain package; the domains import each other only
where the README says: visual uses text's tokenizer (text.tokenizer, text.subset, text.run).
Everything is imported through the one `eaglefinch` namespace.
"""
import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from eaglefinch.music.train import MusicConfig
from eaglefinch.rwkv_core.config import RunConfig, RWKVConfig, TrainConfig, list_presets, read_config, shipped_configs
from eaglefinch.rwkv_core.train import complete_deepspeed_config
from eaglefinch.text.train import TextConfig
from eaglefinch.visual.model import VisualConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"kernels": "eaglefinch.kernels", "rwkv_core": "eaglefinch.rwkv_core", "text": "eaglefinch.text",
            "music": "eaglefinch.music", "visual": "eaglefinch.visual", "research": "eaglefinch.research",
            "eaglefinch": "eaglefinch"}
# what each layer may import from the project, besides itself
ALLOWED = {
    "eaglefinch.kernels": set(),
    "eaglefinch.rwkv_core": {"eaglefinch.kernels"},
    "eaglefinch.text": {"eaglefinch.rwkv_core"},
    "eaglefinch.music": {"eaglefinch.rwkv_core"},
    "eaglefinch.visual": {"eaglefinch.rwkv_core", "eaglefinch.text.tokenizer", "eaglefinch.text.subset",
                          "eaglefinch.text.run"},
    "eaglefinch.research": {"eaglefinch.rwkv_core", "eaglefinch.text", "eaglefinch.music"},
}
TOP_LEVEL = {"kernels", "rwkv_core", "text", "music", "visual", "research"}


def imports_of(path: Path, module: str):
    """(line, what) of every import in a file, as absolute names ("eaglefinch.text.run.TextRun" for
    `from .run import TextRun` in eaglefinch.text); `module` is the file's own module name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = (module if path.name == "__init__.py" else module.rsplit(".", 1)[0]).split(".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1 packages
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def project_modules():
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            yield path, ".".join((package,) + parts)


def test_the_layers_import_only_downwards():
    bad = []
    for path, module in project_modules():
        layer = next((p for p in ALLOWED if module == p or module.startswith(p + ".")), None)
        for line, name in imports_of(path, module):
            where = f"{path.relative_to(ROOT)}:{line} imports {name}"
            if name.split(".")[0] in TOP_LEVEL:
                bad.append(where + " (use the eaglefinch namespace)")
            if layer is None or not name.startswith("eaglefinch."):
                continue
            if not (name.startswith(layer) or any(name == a or name.startswith(a + ".") for a in ALLOWED[layer])):
                bad.append(where)
    assert bad == []


def test_tests_and_benchmarks_use_the_namespace():
    bad = []
    for folder in ("tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for line, name in imports_of(path, f"{folder}.x"):
                if name.split(".")[0] in TOP_LEVEL:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert bad == []


def test_importing_all_of_rwkv_core_loads_no_domain_package():
    modules = [m for _, m in project_modules() if m.startswith(("eaglefinch.rwkv_core", "eaglefinch.kernels"))
               and ".triton" not in m]
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + \
        "print(sorted(m for m in sys.modules if m.startswith(('eaglefinch.text', 'eaglefinch.music', 'eaglefinch.visual'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


SECTION_TYPES = {"text": TextConfig, "music": MusicConfig, "visual": VisualConfig}


@pytest.mark.parametrize("name", shipped_configs())
def test_every_shipped_config_loads(name):
    raw = read_config(name)
    if name.startswith("deepspeed/"):
        ds = complete_deepspeed_config(name, TrainConfig(batch_size=4), world_size=2, on_gpu=False)
        assert ds["train_batch_size"] == 8 and ds["zero_optimization"]["stage"] in (1, 2, 3)
    elif "arch" in raw:
        assert name in list_presets()
        assert RWKVConfig.load(name).to_dict()["arch"] == raw["arch"]
    else:
        config = RunConfig.load(name, raw["domain"])
        section = SECTION_TYPES[config.domain](**config.section)
        assert dataclasses.asdict(section) == {**dataclasses.asdict(SECTION_TYPES[config.domain]()), **config.section}
        if config.model is not None or config.train.train_mode == "full":  # fine-tuning configs take the checkpoint's
            RWKVConfig.from_dict(config.model)
        assert config.to_dict()["train"] == dataclasses.asdict(config.train)


def test_shipped_configs_are_found_by_name_and_a_wrong_domain_is_refused():
    assert {"text-tiny", "music-tiny", "visual-tiny", "abc-tiny", "deepspeed/zero3", "finch-1.6b"} <= set(shipped_configs())
    assert RunConfig.load("configs/text-tiny.json", "text").section == {"trim_vocab": True}   # the README's path
    with pytest.raises(ValueError, match="text-tiny is a text config, not a music one"):
        RunConfig.load("text-tiny", "music")
    with pytest.raises(FileNotFoundError, match="no shipped config of that name"):
        RunConfig.load("text-tinny", "text")
