"""Real image-caption data that installs offline: Debian's openclipart-svg, rendered to PNG.

The package holds about 7.4k titled clip-arts (25 MB download, 173 MB installed):

    sudo apt-get install openclipart-svg           # SVGs under /usr/share/openclipart/svg/<category>/
    pip install cairosvg                           # the renderer (needs libcairo2)
    eaglefinch visual prepare --out data/openclipart   # or: prepare_openclipart(SVG_ROOT, out_dir)

Each SVG's caption is its Dublin Core title (`<dc:title>` in the RDF metadata, else the SVG
`<title>`). It is rendered with cairosvg to `size` px wide, composited on white and padded to a
size x size square. The result is the image-caption JSONL that `visual.data.read_records` and
`visual.clip_train` read:

    out_dir/images/<category>/<name>.png
    out_dir/captions.jsonl        {"image": "images/<category>/<name>.png", "caption": "<title>"}

A file that cannot be parsed or rendered, or has no title, is skipped and listed in the report
with its reason; the rest are written. Rendering takes about 30 ms per file (about 4 minutes for
the whole package on one core). XML is parsed with defusedxml and cairosvg runs in its safe mode,
so entity bombs and references to external files are refused.
"""
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps

from eaglefinch.rwkv_core.files import atomic_path
from eaglefinch.visual.data import write_jsonl
from eaglefinch.visual.images import to_rgb

SVG_ROOT = Path("/usr/share/openclipart/svg")
DC = "{http://purl.org/dc/elements/1.1/}"
SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class PrepareReport:
    """What `prepare_openclipart` wrote and what it skipped."""

    jsonl: Path
    written: int = 0
    bad: list[tuple[Path, str]] = field(default_factory=list)


def svg_title(path) -> Optional[str]:
    """The clip-art's title with whitespace and underscores collapsed, or None if it has none."""
    from defusedxml import ElementTree  # ships with cairosvg

    root = ElementTree.parse(str(path)).getroot()
    element = next(root.iter(DC + "title"), None)
    if element is None:
        element = root.find(SVG + "title")
    if element is None:
        return None
    title = re.sub(r"[\s_]+", " ", "".join(element.itertext())).strip()
    return title or None


def render_svg(path, size: int = 224) -> Image.Image:
    """Render an SVG to a size x size RGB image: fitted, centred and padded with white."""
    import cairosvg

    png = cairosvg.svg2png(url=str(path), output_width=size)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return ImageOps.pad(to_rgb(image), (size, size), color="white")


def prepare_openclipart(svg_root=SVG_ROOT, out_dir="data/openclipart", size: int = 224, limit: Optional[int] = None) -> PrepareReport:
    """Render every *.svg under svg_root (sorted, at most `limit`) and write captions.jsonl."""
    svg_root, out_dir = Path(svg_root), Path(out_dir)
    try:
        import cairosvg  # noqa: F401  (checked here, so a missing renderer is one error, not one per file)
    except ImportError as e:
        raise ImportError(f"rendering SVGs needs cairosvg: pip install cairosvg ({e})") from None
    if not svg_root.is_dir():
        raise FileNotFoundError(
            f"{svg_root}: not a folder; install Debian's openclipart-svg (apt-get install openclipart-svg) "
            f"or pass the folder that holds the SVG files"
        )
    report = PrepareReport(out_dir / "captions.jsonl")
    records = []
    for path in sorted(svg_root.rglob("*.svg"))[:limit]:
        relative = path.relative_to(svg_root).with_suffix(".png")
        try:
            title = svg_title(path)
            if title is None:
                report.bad.append((path, "no title"))
                continue
            image = render_svg(path, size)
        except Exception as e:  # parser and renderer failures come in many types; each skips one file
            report.bad.append((path, f"{type(e).__name__}: {e}"))
            continue
        target = out_dir / "images" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, format="PNG")
        records.append({"image": str(Path("images") / relative), "caption": title})
    report.written = len(records)
    write_jsonl(report.jsonl, records)
    return report
