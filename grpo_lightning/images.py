"""Reading a picture as a person sees it in an image viewer: upright, 8-bit RGB, transparency over white.

Every place that turns an image file into pixels (the dataset, the start-up scan, the CLIP reward, the report
thumbnails) goes through :func:`load_rgb`, so the model, the reward and the page a person reads all see the
same picture. Pillow's own ``convert("RGB")`` gets three kinds of files wrong, and this module is the fix:

- **EXIF orientation.** A phone stores a portrait photo as landscape pixels plus an Orientation tag; viewers
  apply the tag, Pillow does not. All eight orientations are applied (``ImageOps.exif_transpose``).
- **16-bit grayscale** (PNG, TIFF, PGM: modes ``I;16``, ``I;16B``, ``I`` with values 0..65535). Pillow clips
  these to 0..255, so a 16-bit PNG comes out almost all white. They are scaled by keeping the high byte
  (``value >> 8``), the same reduction Pillow applies to 16-bit RGB and RGBA PNGs, which it opens as 8-bit
  ``RGB``/``RGBA``; one rule for all 16-bit files keeps gray and colour pictures consistent. ``I`` values
  outside 0..65535 (a 32-bit TIFF) are clipped.
- **Transparency** (``RGBA``, ``LA``, ``PA``, a palette or gray image with a transparent colour). Dropping the
  alpha shows whatever colour the transparent pixels happen to hold (often black); they are composited over
  white instead, as a viewer shows them on a white page.

Float images (``F``) have no fixed range; they are read on Pillow's own scale for them, 0..255, rounded and
clipped. Everything else (``P``, ``CMYK``, ``L``, ``1``, ``YCbCr``, ...) is Pillow's conversion to RGB.

:func:`loaded_size` is the size of that picture, downscaled as the dataset downscales it, read from the file's header
alone: the start-up check of prompt lengths needs it for every image of a split, without decoding any.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin

#: The colour transparent pixels are shown on: a white page.
BACKGROUND = (255, 255, 255)

#: The EXIF tag that says how the camera was held, and its values for a quarter turn (with or without a mirror): the
#: upright picture of such a file has its stored width and height swapped.
EXIF_ORIENTATION = 0x0112
QUARTER_TURN_ORIENTATIONS = frozenset({5, 6, 7, 8})

_SIXTEEN_BIT_GRAY = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_WITH_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """The picture at ``path`` as the user sees it: upright 8-bit RGB, fully read, its file closed.

    The file is closed before returning, so a dataloader worker holds no file handle per image.

    Args:
        path: an image file Pillow can read.

    Returns:
        A new ``RGB`` image (see :func:`to_rgb` for how each mode is converted).

    Raises:
        OSError: the file is missing, unreadable, not an image, or its data is corrupt.
        ValueError: Pillow rejects the file's contents.
        PIL.Image.DecompressionBombError: the image is larger than Pillow's safety limit.
    """
    with Image.open(path) as image:
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """An already-open image as the user sees it: EXIF orientation applied, 8-bit RGB, transparency over white.

    Args:
        image: any Pillow image; it is read in full but not modified.

    Returns:
        A new ``RGB`` image that does not depend on ``image``'s file.
    """
    # Pillow's own transpose, not ours: it reads the orientation that _exif_orientation reads, but after decoding the
    # whole file, and removes the tag from its result, so nothing that saves the result turns it a second time. A copy
    # even when upright: the result never shares the file.
    image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_GRAY:
        return _gray_to_rgb(np.asarray(image).astype(np.int64) >> 8)
    if image.mode == "F":
        return _gray_to_rgb(np.rint(np.nan_to_num(np.asarray(image))))
    # a palette or gray image may name one transparent colour (PNG tRNS) instead of having an alpha band;
    # spelled out rather than Image.has_transparency_data, which Pillow 10.0 lacks
    if image.mode in _WITH_ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _gray_to_rgb(levels: np.ndarray) -> Image.Image:
    """Gray levels on the 0..255 scale (any dtype; values outside are clipped) as an RGB image."""
    return Image.fromarray(np.clip(levels, 0, 255).astype(np.uint8)).convert("RGB")


def loaded_size(path: str | os.PathLike[str], max_side: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of :func:`load_rgb`'s picture of ``path`` once ``Image.thumbnail((max_side, max_side))``
    has downscaled it (as :class:`~grpo_lightning.data.VQADataset` does), read from the file's header: no pixel is
    decoded, so a split of tens of thousands of images takes seconds.

    The stored size, its width and height swapped when the EXIF orientation is a quarter turn, then reduced as PIL's
    thumbnail reduces it. One known gap: a PNG may carry its EXIF block (or XMP packet) after the pixel data, where
    some writers put it. A header-only read does not reach it, so such a file counts as upright here while
    :func:`load_rgb`, which reads the whole file, turns it.

    Args:
        path: an image file Pillow can read.
        max_side: the longest side the picture is downscaled to (None: kept as it is).

    Raises:
        OSError: the file is missing, unreadable or not an image.
    """
    with Image.open(path) as image:
        width, height = _stored_size(image)
        if _exif_orientation(image) in QUARTER_TURN_ORIENTATIONS:
            width, height = height, width
    return _thumbnail_size(width, height, max_side)


def _stored_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an open image's pixels as its file stores them, before any orientation is applied."""
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        # Newer Pillow's TIFF reader turns the picture upright itself as it loads, and reports the turned size from the
        # header on; the tags keep the stored size whichever Pillow reads the file.
        return image.tag_v2[TiffImagePlugin.IMAGEWIDTH], image.tag_v2[TiffImagePlugin.IMAGELENGTH]
    return image.size


def _exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 to 8; 1 when there is none) that ``ImageOps.exif_transpose`` applies to ``image``, from
    what Pillow has read of its file so far: only the header of a file opened and not yet loaded.

    Read as Pillow's ``Image.getexif`` reads it: the EXIF block (or a TIFF's own tags), then the XMP packet when that
    has none.
    """
    # The base class's reader, called past the PNG plugin's override: that one decodes every pixel first to look for
    # an EXIF block after them. The result is cached on the image, so call it only on an image nothing loads later.
    return int(Image.Image.getexif(image).get(EXIF_ORIENTATION, 1))


def _thumbnail_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size ``Image.thumbnail((max_side, max_side))`` gives a ``width`` x ``height`` image, without the image.

    PIL keeps the aspect ratio and rounds the shorter side down or up, whichever keeps the ratio closer (at least 1
    pixel); images that fit (or ``max_side`` None) keep their size.
    """
    if max_side is None or (width <= max_side and height <= max_side):
        return width, height
    aspect = width / height

    def closest(value: float, error: Callable[[int], float]) -> int:
        return max(min(math.floor(value), math.ceil(value), key=error), 1)

    if aspect <= 1:
        return closest(max_side * aspect, lambda n: abs(aspect - n / max_side)), max_side
    return max_side, closest(max_side / aspect, lambda n: 0 if n == 0 else abs(aspect - max_side / n))
