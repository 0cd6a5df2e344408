import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from eaglefinch.visual.images import ImageError, iter_folder_images, load_image


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_greyscale_and_16_bit_greyscale_become_rgb(tmp_path):
    grey = load_image(save(Image.new("L", (5, 3), 100), tmp_path / "l.png"))
    assert grey.mode == "RGB" and grey.size == (5, 3) and grey.getpixel((0, 0)) == (100, 100, 100)
    deep = np.array([[0, 65535]], dtype=np.uint16)
    image = load_image(save(Image.fromarray(deep), tmp_path / "i16.png"))
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((1, 0)) == (255, 255, 255)
    binary = load_image(save(Image.new("1", (2, 2), 1), tmp_path / "b.png"))
    assert binary.getpixel((1, 1)) == (255, 255, 255)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    rgba.putpixel((1, 0), (0, 0, 255, 128))  # half-transparent blue -> light blue
    image = load_image(save(rgba, tmp_path / "a.png"))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    r, g, b = image.getpixel((1, 0))
    assert abs(r - 127) <= 1 and abs(g - 127) <= 1 and b == 255
    grey_alpha = Image.new("LA", (1, 1), (0, 0))
    assert load_image(save(grey_alpha, tmp_path / "la.png")).getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    image = load_image(save(palette, tmp_path / "p.png", transparency=0))  # index 0 is transparent
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 0)) == (255, 0, 0)


def test_cmyk_jpeg_and_exif_rotation(tmp_path):
    cmyk = load_image(save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95))
    r, g, b = cmyk.getpixel((4, 4))
    assert r > 230 and g < 25 and b < 25  # cyan 0, magenta and yellow full: red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = load_image(save(Image.new("RGB", (10, 4)), tmp_path / "r.jpg", exif=exif))
    assert rotated.size == (4, 10)


def png_header_claiming(width, height, path):
    """A PNG whose header claims width x height pixels but holds almost no data: a bomb's header."""
    small = path.with_suffix(".small.png")
    Image.new("L", (1, 1)).save(small)
    data = bytearray(small.read_bytes())
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_huge_images_are_refused_before_decoding(tmp_path):
    with pytest.raises(ImageError, match="over the limit"):
        load_image(png_header_claiming(7000, 7000, tmp_path / "big.png"))  # 49M pixels
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_header_claiming(50000, 50000, tmp_path / "bomb.png"))  # Pillow's own hard limit
    with pytest.raises(ImageError, match="over the limit of 50"):
        load_image(save(Image.new("RGB", (10, 10)), tmp_path / "ok.png"), max_pixels=50)


def test_unreadable_files_raise_image_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "notes.txt")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    full = save(Image.new("RGB", (64, 64), "red"), tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError):
        load_image(tmp_path / "folder.png")


def test_folder_walk_reports_bad_files_and_keeps_going(tmp_path):
    save(Image.new("RGB", (3, 3), "blue"), tmp_path / "a.png")
    (tmp_path / "b.txt").write_text("hello")
    save(Image.new("L", (2, 2)), tmp_path / "c.jpg")
    (tmp_path / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (tmp_path / ".hidden").write_text("skipped")
    (tmp_path / "sub").mkdir()
    save(Image.new("RGB", (1, 1)), tmp_path / "sub" / "e.png")
    results = list(iter_folder_images(tmp_path))
    assert [p.name for p, _ in results] == ["a.png", "b.txt", "c.jpg", "d.png"]
    good = {p.name for p, r in results if isinstance(r, Image.Image)}
    bad = {p.name for p, r in results if isinstance(r, ImageError)}
    assert good == {"a.png", "c.jpg"} and bad == {"b.txt", "d.png"}
    assert all(r.mode == "RGB" for p, r in results if p.name in good)
    assert [p.name for p, _ in iter_folder_images(tmp_path, recursive=True)][-1] == "e.png"
    with pytest.raises(ImageError, match="not a folder"):
        list(iter_folder_images(tmp_path / "a.png"))
