"""One way to read a picture: every image mode and EXIF orientation, each place that opens image files, and the size
of the picture read from the header alone."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from grpo_lightning.data import Sample, ViVQAXDataModule, VQADataset
from grpo_lightning.images import EXIF_ORIENTATION, load_rgb, loaded_size, to_rgb
from grpo_lightning.report import thumbnail_data_uri
from grpo_lightning.rewards.clip_score import open_images

WHITE, BLACK = (255, 255, 255), (0, 0, 0)
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
CYAN, MAGENTA, YELLOW = (0, 255, 255), (255, 0, 255), (255, 255, 0)

#: 16-bit levels and the 8-bit levels they must become: the high byte (value >> 8).
LEVELS_16 = [0, 255, 256, 32767, 32768, 65280, 65535]
LEVELS_8 = [0, 0, 1, 127, 128, 255, 255]

#: Six distinct colours, two rows of three: no rotation or flip of this grid maps it onto itself.
ASYMMETRIC = [[RED, GREEN, BLUE], [YELLOW, BLACK, WHITE]]


# ------------------------------------------------------------------------------------------ helpers
def grays(levels: list[int]) -> list[list[tuple[int, int, int]]]:
    return [[(v, v, v) for v in levels]]


def blocks(grid: list[list[tuple[int, ...]]], side: int, mode: str = "RGB") -> Image.Image:
    """An image of ``side`` x ``side`` blocks, one per grid cell: JPEG keeps a flat block's colour."""
    image = Image.new(mode, (len(grid[0]) * side, len(grid) * side))
    for r, row in enumerate(grid):
        for c, colour in enumerate(row):
            image.paste(colour, (c * side, r * side, (c + 1) * side, (r + 1) * side))
    return image


def block_centres(image: Image.Image, rows: int, cols: int) -> list[list[tuple[int, ...]]]:
    """The pixel at the centre of each of the rows x cols blocks that tile ``image``."""
    width, height = image.size
    return [
        [image.getpixel((int((c + 0.5) * width / cols), int((r + 0.5) * height / rows))) for c in range(cols)]
        for r in range(rows)
    ]


def assert_pixels(image: Image.Image, expected: list[list[tuple[int, int, int]]], tolerance: int = 0) -> None:
    assert image.mode == "RGB"
    actual = block_centres(image, len(expected), len(expected[0]))
    difference = np.abs(np.array(actual, dtype=int) - np.array(expected, dtype=int)).max()
    assert difference <= tolerance, f"{actual} != {expected} (off by {difference}, allowed {tolerance})"


#: The eight bytes every PNG file starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[bytes]:
    """The chunks of a PNG file, each whole (length, type, data, CRC)."""
    assert data.startswith(PNG_SIGNATURE)
    chunks, position = [], len(PNG_SIGNATURE)
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        chunks.append(data[position : position + 12 + length])
        position += 12 + length
    return chunks


def write_png_16bit(path: Path, rows: list[list[tuple[int, ...]]], colour_type: int) -> Path:
    """A 16-bit-per-channel PNG written byte by byte (Pillow cannot write 16-bit colour PNGs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    channels = {2: 3, 6: 4}[colour_type]
    header = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 16, colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + struct.pack(f">{len(row) * channels}H", *sum(row, ())) for row in rows)
    path.write_bytes(PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def palette_image(transparency: int | bytes | None) -> Image.Image:
    image = Image.new("P", (3, 1))
    image.putpalette([*RED, *GREEN, *BLUE])
    image.putdata([0, 1, 2])
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


def gray16_png(path: Path, side: int = 1) -> Path:
    """A 16-bit gray PNG of :data:`LEVELS_16`, each level a ``side`` x ``side`` block."""
    levels = np.kron(np.array([LEVELS_16], dtype=np.uint16), np.ones((side, side), dtype=np.uint16))
    return save(Image.fromarray(levels), path)


def gray16_pgm(path: Path) -> Path:
    path.write_bytes(b"P5 7 1 65535\n" + np.array(LEVELS_16, dtype=">u2").tobytes())
    return path


def oriented_jpeg(path: Path, orientation: int, grid=ASYMMETRIC, side: int = 16) -> Path:
    """A JPEG of ``grid`` whose EXIF says to show it with ``orientation`` (4:4:4, so colours stay put)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return save(blocks(grid, side), path, exif=exif.tobytes(), quality=95, subsampling=0)


# ------------------------------------------------------------------------------------------ image modes
def _cmyk(grid):
    return blocks(grid, 8, mode="CMYK")


CMYK_GRID = [[(255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 0), (0, 255, 255, 0)]]
CMYK_AS_RGB = [[CYAN, BLACK, WHITE, RED]]

#: (writes the file into a folder, the mode Pillow opens it in, the pixels a viewer shows, JPEG's tolerance)
MODE_CASES = {
    "16-bit gray PNG": (lambda d: gray16_png(d / "a.png"), "I;16", grays(LEVELS_8), 0),
    "16-bit big-endian gray TIFF": (
        lambda d: save(Image.fromarray(np.array([LEVELS_16], dtype=">u2")), d / "a.tif"),
        "I;16B",
        grays(LEVELS_8),
        0,
    ),
    "16-bit gray PGM": (lambda d: gray16_pgm(d / "a.pgm"), "I", grays(LEVELS_8), 0),
    # Pillow reads 16-bit colour PNGs as 8-bit by their high byte: the same rule as for gray above
    "48-bit RGB PNG": (
        lambda d: write_png_16bit(d / "a.png", [[(65535, 0, 32768), (256, 255, 65280)]], colour_type=2),
        "RGB",
        [[(255, 0, 128), (1, 0, 255)]],
        0,
    ),
    "64-bit RGBA PNG": (
        lambda d: write_png_16bit(d / "a.png", [[(65535, 0, 0, 32896), (0, 0, 65535, 0)]], colour_type=6),
        "RGBA",
        [[(255, 127, 127), WHITE]],
        0,
    ),
    "float TIFF": (
        lambda d: save(Image.fromarray(np.array([[-5, 0, 0.4, 127.6, 255, 300]], dtype=np.float32)), d / "a.tif"),
        "F",
        grays([0, 0, 0, 128, 255, 255]),
        0,
    ),
    "palette PNG": (lambda d: save(palette_image(None), d / "a.png"), "P", [[RED, GREEN, BLUE]], 0),
    "palette PNG, one transparent index": (
        lambda d: save(palette_image(0), d / "a.png", transparency=0),
        "P",
        [[WHITE, GREEN, BLUE]],
        0,
    ),
    "palette PNG, alpha per index": (
        lambda d: save(palette_image(bytes([255, 128, 0])), d / "a.png", transparency=bytes([255, 128, 0])),
        "P",
        [[RED, (127, 255, 127), WHITE]],
        0,
    ),
    "CMYK TIFF": (lambda d: save(_cmyk(CMYK_GRID), d / "a.tif"), "CMYK", CMYK_AS_RGB, 0),
    "CMYK JPEG": (lambda d: save(_cmyk(CMYK_GRID), d / "a.jpg", quality=95), "CMYK", CMYK_AS_RGB, 8),
    "LA PNG, half transparent": (
        lambda d: save(blocks([[(0, 128), (200, 0), (0, 255)]], 1, mode="LA"), d / "a.png"),
        "LA",
        [[(127, 127, 127), WHITE, BLACK]],
        0,
    ),
    "RGBA PNG, half transparent": (
        lambda d: save(blocks([[(255, 0, 0, 128), (0, 0, 255, 0), (0, 0, 255, 255)]], 1, mode="RGBA"), d / "a.png"),
        "RGBA",
        [[(255, 127, 127), WHITE, BLUE]],
        0,
    ),
    "gray PNG": (
        lambda d: save(blocks([[(0,), (100,), (255,)]], 1, mode="L"), d / "a.png"),
        "L",
        grays([0, 100, 255]),
        0,
    ),
    "gray PNG, one transparent level": (
        lambda d: save(blocks([[(0,), (100,), (255,)]], 1, mode="L"), d / "a.png", transparency=100),
        "L",
        [[BLACK, WHITE, WHITE]],
        0,
    ),
    "bilevel PNG": (lambda d: save(blocks([[(0,), (1,)]], 1, mode="1"), d / "a.png"), "1", [[BLACK, WHITE]], 0),
    "RGB JPEG": (lambda d: save(blocks(ASYMMETRIC, 16), d / "a.jpg", quality=95), "RGB", ASYMMETRIC, 12),
}


@pytest.mark.parametrize(("write", "opened_mode", "expected", "tolerance"), MODE_CASES.values(), ids=MODE_CASES)
def test_each_mode_reads_as_the_8_bit_rgb_a_viewer_shows_on_a_white_page(
    tmp_path, write: Callable[[Path], Path], opened_mode, expected, tolerance
):
    path = write(tmp_path)
    with Image.open(path) as image:
        assert image.mode == opened_mode  # the case covers the mode it is named for
    assert_pixels(load_rgb(path), expected, tolerance)


def test_a_palette_image_with_alpha_in_memory_is_composited_over_white():
    """``PA`` exists only in memory (Pillow writes no PA files), so it goes through :func:`to_rgb`."""
    image = Image.new("PA", (3, 1))
    image.putpalette([*RED, *GREEN, *BLUE])
    image.putdata([(0, 255), (1, 128), (2, 0)])
    assert_pixels(to_rgb(image), [[RED, (127, 255, 127), WHITE]])


def test_a_sixteen_bit_gradient_keeps_its_high_byte():
    gradient = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)  # 0, 257, ..., 65535
    result = np.asarray(to_rgb(Image.fromarray(gradient)))
    assert result.shape == (16, 16, 3)
    assert (result == np.arange(256, dtype=np.uint8).reshape(16, 16, 1)).all()


# ------------------------------------------------------------------------------------------ EXIF orientation
def _transpose(grid):
    return [list(column) for column in zip(*grid, strict=True)]


#: How a viewer shows the stored grid for each EXIF orientation (the tag says where stored row 0 and column 0 go).
SHOWN = {
    1: lambda g: g,  # row 0 at the top, column 0 at the left
    2: lambda g: [row[::-1] for row in g],  # top, right: mirrored left-right
    3: lambda g: [row[::-1] for row in g[::-1]],  # bottom, right: turned half a turn
    4: lambda g: g[::-1],  # bottom, left: mirrored top-bottom
    5: lambda g: _transpose(g),  # left, top: mirrored about the main diagonal
    6: lambda g: _transpose(g[::-1]),  # right, top: turned a quarter clockwise
    7: lambda g: [row[::-1] for row in _transpose(g)[::-1]],  # right, bottom: mirrored about the other diagonal
    8: lambda g: _transpose(g)[::-1],  # left, bottom: turned a quarter anticlockwise
}


@pytest.mark.parametrize("orientation", SHOWN)
def test_every_exif_orientation_is_applied(tmp_path, orientation):
    path = oriented_jpeg(tmp_path / "photo.jpg", orientation)
    image = load_rgb(path)
    expected = SHOWN[orientation](ASYMMETRIC)
    assert image.size == (len(expected[0]) * 16, len(expected) * 16)
    assert_pixels(image, expected, tolerance=12)


def test_a_rotated_sixteen_bit_png_is_turned_and_scaled(tmp_path):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    levels = np.array([LEVELS_16[:3], LEVELS_16[4:]], dtype=np.uint16)
    path = save(Image.fromarray(levels), tmp_path / "a.png", exif=exif.tobytes())
    expected = SHOWN[6]([[(v, v, v) for v in LEVELS_8[:3]], [(v, v, v) for v in LEVELS_8[4:]]])
    assert_pixels(load_rgb(path), expected)


def test_the_loaded_image_owns_its_pixels_and_leaves_the_input_alone(tmp_path):
    path = oriented_jpeg(tmp_path / "photo.jpg", 6)
    loaded = load_rgb(path)
    assert not isinstance(loaded, ImageFile.ImageFile)  # no file object behind it: the file is closed
    with Image.open(path) as image:
        to_rgb(image)
        assert (image.size, image.getexif()[EXIF_ORIENTATION]) == ((48, 32), 6)


# ------------------------------------------------------------------------------------------ size from the header
def dataset_image_size(path: Path, max_side: int | None) -> tuple[int, int]:
    """The size of the picture :class:`VQADataset` hands the model for the image file at ``path``."""
    sample = Sample("1", "Bức ảnh chụp gì?", path.name, "bầu trời", ("vì nó màu xanh",), where="split.json:2")
    return VQADataset([sample], path.parent, max_image_side=max_side)[0]["image"].size


def xmp_oriented(orientation: int) -> PngImagePlugin.PngInfo:
    """PNG text chunks holding an XMP packet, before the pixel data, whose ``tiff:Orientation`` is ``orientation``."""
    info = PngImagePlugin.PngInfo()
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{orientation}"/>'
        "</rdf:RDF></x:xmpmeta>"
    )
    info.add_itxt("XML:com.adobe.xmp", packet)
    return info


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


#: Where each format keeps the orientation: (file name, how to save a picture there with a given orientation).
ORIENTED_FILES = {
    "JPEG, EXIF": ("a.jpg", lambda image, path, o: image.save(path, exif=exif_bytes(o))),
    "PNG, EXIF block before the pixels": ("a.png", lambda image, path, o: image.save(path, exif=exif_bytes(o))),
    "PNG, XMP packet": ("a.png", lambda image, path, o: image.save(path, pnginfo=xmp_oriented(o))),
    "TIFF, its own tag": ("a.tif", lambda image, path, o: image.save(path, tiffinfo={EXIF_ORIENTATION: o})),
    # compressed: read through libtiff, another path through Pillow's TIFF reader
    "LZW TIFF, its own tag": (
        "a.tif",
        lambda image, path, o: image.save(path, tiffinfo={EXIF_ORIENTATION: o}, compression="tiff_lzw"),
    ),
    "WebP, EXIF": ("a.webp", lambda image, path, o: image.save(path, exif=exif_bytes(o))),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("max_side", [None, 40])
@pytest.mark.parametrize("file", ORIENTED_FILES.values(), ids=ORIENTED_FILES)
def test_the_header_size_is_the_size_of_the_image_the_dataset_gives(tmp_path, file, orientation, max_side):
    """A camera's picture stored 120x50 with orientation 6 is a 50x120 picture once the loader turns it upright."""
    name, write = file
    write(Image.new("RGB", (120, 50), (10, 120, 200)), tmp_path / name, orientation)
    given = dataset_image_size(tmp_path / name, max_side)
    assert loaded_size(tmp_path / name, max_side) == given
    stored, turned = {None: ((120, 50), (50, 120)), 40: ((40, 17), (17, 40))}[max_side]
    assert given == (turned if orientation >= 5 else stored)


@pytest.mark.parametrize(
    ("width", "height", "max_side"),
    [
        (640, 480, 100),
        (480, 640, 100),
        (101, 100, 100),
        (100, 101, 100),
        (3, 1000, 64),
        (1000, 3, 64),
        (7, 5, 6),
        (333, 77, 50),
        (50, 50, 50),
        (60, 40, None),
    ],
)
def test_the_header_size_is_downscaled_as_pil_downscales(tmp_path, width, height, max_side):
    """PIL's rounding of the shorter side, at the edges: aspect ratios near 1, strips, sides of a few pixels."""
    path = save(Image.new("L", (width, height)), tmp_path / "a.png")
    assert loaded_size(path, max_side) == dataset_image_size(path, max_side)


def test_an_exif_block_after_a_pngs_pixels_is_the_known_gap_of_the_header_read(tmp_path):
    """Some writers put a PNG's EXIF block after its pixel data: the loader, which reads the whole file, turns the
    picture; the header read never gets there and takes it as upright."""
    path = save(Image.new("RGB", (120, 50)), tmp_path / "a.png", exif=exif_bytes(6))
    chunks = png_chunks(path.read_bytes())
    names = [chunk[4:8] for chunk in chunks]
    assert names.index(b"eXIf") < names.index(b"IDAT")  # where Pillow writes it
    moved = [chunk for chunk in chunks if chunk[4:8] != b"eXIf"]
    moved.insert(-1, chunks[names.index(b"eXIf")])  # just before IEND
    path.write_bytes(PNG_SIGNATURE + b"".join(moved))
    assert load_rgb(path).size == (50, 120)
    assert loaded_size(path) == (120, 50)


# ------------------------------------------------------------------------------------------ the callers
def test_the_data_module_serves_sixteen_bit_and_rotated_images_as_seen(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    gray16_png(images / "gray16.png")
    oriented_jpeg(images / "rotated.jpg", 8)
    lines = [
        {
            "id": str(i),
            "image": name,
            "conversations": [
                {"from": "human", "value": "<image>Màu gì?"},
                {"from": "gpt", "value": "<answer>đỏ</answer><explain>vì nó màu đỏ</explain>"},
            ],
        }
        for i, name in enumerate(["gray16.png", "rotated.jpg"])
    ]
    data_file = tmp_path / "train.jsonl"
    data_file.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    data = ViVQAXDataModule(
        train_file=str(data_file), train_image_dir=str(images), batch_size=2, shuffle=False, verify_images=True
    )
    data.setup("fit")
    dataset = data.dataset("train")
    assert_pixels(dataset[0]["image"], grays(LEVELS_8))
    assert_pixels(dataset[1]["image"], SHOWN[8](ASYMMETRIC), tolerance=12)


def test_the_clip_reward_sees_the_same_pictures(tmp_path):
    paths = [str(gray16_png(tmp_path / "gray16.png")), str(oriented_jpeg(tmp_path / "rotated.jpg", 6))]
    gray, rotated = open_images(paths, ids=["a", "b"])
    assert_pixels(gray, grays(LEVELS_8))
    assert_pixels(rotated, SHOWN[6](ASYMMETRIC), tolerance=12)


@pytest.mark.parametrize(
    ("write", "size", "expected"),
    [
        # 300 x 200 stored, shown 200 x 300, thumbnailed to fit 192: 128 x 192
        (lambda d: oriented_jpeg(d / "a.jpg", 6, side=100), (128, 192), SHOWN[6](ASYMMETRIC)),
        (lambda d: gray16_png(d / "a.png", side=16), (112, 16), grays(LEVELS_8)),
    ],
    ids=["rotated JPEG", "16-bit PNG"],
)
def test_the_report_thumbnail_shows_the_picture_as_seen(tmp_path, write, size, expected):
    uri = thumbnail_data_uri(write(tmp_path))
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    with Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :]))) as thumbnail:
        assert thumbnail.size == size
        assert_pixels(thumbnail.convert("RGB"), expected, tolerance=16)
