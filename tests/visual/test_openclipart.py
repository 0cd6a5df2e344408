import json

import pytest
from PIL import Image

pytest.importorskip("cairosvg")

from eaglefinch.visual.openclipart import prepare_openclipart, svg_title  # noqa: E402

RDF_TITLED = """<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     xmlns:cc="http://creativecommons.org/ns#" xmlns:dc="http://purl.org/dc/elements/1.1/"
     width="40" height="20" viewBox="0 0 40 20">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>Red   brick_wall</dc:title>
    <dc:description>A wall</dc:description>
  </cc:Work></rdf:RDF></metadata>
  <rect x="0" y="0" width="40" height="20" fill="#ff0000"/>
</svg>
"""
SVG_TITLED = """<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">
  <title>Blue dot</title>
  <circle cx="5" cy="5" r="5" fill="blue"/>
</svg>
"""
UNTITLED = """<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>"""
BROKEN = """<svg xmlns="http://www.w3.org/2000/svg"><rect width="10" """
ENTITY_BOMB = """<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><title>&b;</title></svg>
"""


def test_prepare_renders_titled_svgs_and_reports_the_rest(tmp_path):
    root = tmp_path / "svg"
    (root / "shapes").mkdir(parents=True)
    (root / "shapes" / "wall.svg").write_text(RDF_TITLED)
    (root / "dot.svg").write_text(SVG_TITLED)
    (root / "untitled.svg").write_text(UNTITLED)
    (root / "broken.svg").write_text(BROKEN)
    (root / "bomb.svg").write_text(ENTITY_BOMB)
    (root / "readme.txt").write_text("not an svg")
    report = prepare_openclipart(root, tmp_path / "out", size=32)

    assert report.written == 2
    assert sorted((p.name, reason.split(":")[0]) for p, reason in report.bad) == [
        ("bomb.svg", "EntitiesForbidden"), ("broken.svg", "ParseError"), ("untitled.svg", "no title"),
    ]
    records = [json.loads(line) for line in report.jsonl.read_text().splitlines()]
    assert records == [
        {"image": "images/dot.png", "caption": "Blue dot"},
        {"image": "images/shapes/wall.png", "caption": "Red brick wall"},
    ]
    dot = Image.open(tmp_path / "out" / records[0]["image"])
    wall = Image.open(tmp_path / "out" / records[1]["image"])
    assert dot.size == wall.size == (32, 32) and dot.mode == wall.mode == "RGB"
    assert dot.getpixel((16, 16)) == (0, 0, 255) and dot.getpixel((0, 0)) == (255, 255, 255)
    # the 2:1 wall is fitted to the width and padded top and bottom with white
    assert wall.getpixel((16, 16)) == (255, 0, 0) and wall.getpixel((16, 2)) == (255, 255, 255)


def test_titles_and_missing_root(tmp_path):
    (tmp_path / "a.svg").write_text(RDF_TITLED)
    assert svg_title(tmp_path / "a.svg") == "Red brick wall"
    with pytest.raises(FileNotFoundError, match="openclipart-svg"):
        prepare_openclipart(tmp_path / "nowhere", tmp_path / "out")
