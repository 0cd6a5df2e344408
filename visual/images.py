"""Loading images from disk for the encoder: always RGB, or one clear `ImageError`.

Modes are converted, not rejected: greyscale and 16-bit greyscale are scaled to 8-bit RGB, CMYK
and other colour spaces go through Pillow's conversion, transparent images (RGBA, LA, palette
with a transparent colour) are composited on white, and EXIF rotation is applied. Files that
cannot be decoded, are not images, are truncated, or hold more than `max_pixels` pixels (a guard
against decompression bombs, checked from the header before any pixel is decoded) raise
`ImageError` naming the file and the reason (a name that is not UTF-8 shown with \\x escapes).
"""
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # about 6300 x 6300; below Pillow's own bomb warning (89M)
HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class ImageError(ValueError):
    """An image file is missing, unreadable, not an image, or too large."""


def printable(path) -> str:
    """The path as text any UTF-8 stream can write: the bytes of a name that is not UTF-8 (which
    Python holds as lone surrogates) show as \\xff escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def load_image(path, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Read an image file (a path, or the file's bytes) as a fully decoded RGB PIL image of the same
    width and height. `name` is what errors call it (default: the path)."""
    source = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else Path(path)
    name = name or printable(source)
    try:
        with warnings.catch_warnings():
            # our own limit below decides; Pillow's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.width * image.height > max_pixels:
                    raise ImageError(
                        f"{name}: {image.width}x{image.height} = {image.width * image.height:,} pixels is over "
                        f"the limit of {max_pixels:,} (possible decompression bomb); --max-pixels (max_pixels=) raises the limit"
                    )
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: too many pixels (possible decompression bomb): {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        # Pillow reports truncated or corrupt data as OSError / SyntaxError / ValueError
        raise ImageError(f"{name}: cannot read image: {e}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any decoded PIL image -> 8-bit RGB; transparency is composited on white."""
    if image.mode in HIGH_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        if pixels.max(initial=0) > 255:  # 16-bit data: scale the full range down to 8 bits
            pixels = pixels * (255 / 65535)
        elif image.mode == "F" and pixels.max(initial=0) <= 1:  # float data in [0, 1]
            pixels = pixels * 255
        image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="L")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


ImageOrError = Union[Image.Image, ImageError]


def read_or_error(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageOrError:
    """The RGB image, or the ImageError that says why the file cannot be read (for callers that
    skip bad files and report them)."""
    try:
        return load_image(path, max_pixels)
    except ImageError as error:
        return error


def image_error(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[ImageError]:
    """None if the file decodes as an image within the limit, else its ImageError (the pixels are
    not kept: for checking many files up front)."""
    result = read_or_error(path, max_pixels)
    return result if isinstance(result, ImageError) else None


def warn_skipped(errors: Sequence[tuple[Path, ImageError]], shown: int = 10) -> None:
    """One warning line on stderr for each of the first `shown` unreadable images, then how many more."""
    from tqdm import tqdm  # writes around a progress bar, if one is showing

    for _, error in errors[:shown]:
        tqdm.write(f"warning: {error}; skipped", file=sys.stderr)
    if len(errors) > shown:
        tqdm.write(f"warning: and {len(errors) - shown} more unreadable image(s), skipped", file=sys.stderr)


def iter_folder_images(folder, recursive: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[tuple[Path, ImageOrError]]:
    """Yield (path, RGB image) or (path, ImageError) for every file in the folder, sorted by path.

    Bad files do not stop the walk: the caller processes the images and reports the errors.
    Hidden files (names starting with ".") are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{printable(folder)}: not a folder")
    paths = folder.rglob("*") if recursive else folder.iterdir()
    for path in sorted(p for p in paths if p.is_file() and not p.name.startswith(".")):
        yield path, read_or_error(path, max_pixels)
