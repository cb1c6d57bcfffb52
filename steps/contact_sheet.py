"""A contact sheet: a few output images from a few shards, on one PNG, labelled with key and
class, so a person sees at a glance what the augmentation did (Argo's UI shows .png artifacts).

One row per shard (its name above the row), one tile per sample. Tiles are made where the
bytes were read (in the verify worker, from the samples `list_archive` kept), so only
thumbnails are held, never full images. Images are decoded with the same bounded decoder as
the augment step: the shards are untrusted.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from .images import PIL_FORMATS, ImageDecodeError, convert_mode, decode_image
from .verify import KeptSample

TILE = 160  # thumbnail box, pixels
PAD = 8
CAPTION = 18  # shard name above each row
LABEL = 32  # two lines under each tile: key, class
BACKGROUND = (245, 245, 245)
TEXT = (20, 20, 20)
PLACEHOLDER = (200, 200, 200)
IMAGE_EXTENSIONS = tuple(PIL_FORMATS)
CLASS_EXTENSION = "cls"


def wanted_extension(extension: str) -> bool:
    """The members a sheet needs: an image and the class."""
    return extension in IMAGE_EXTENSIONS or extension == CLASS_EXTENSION


@dataclass
class Tile:
    key: str
    label: str  # "cls 2", or why there is no image
    thumbnail: Image.Image | None  # RGB, within TILE x TILE


@dataclass
class SheetRow:
    shard: str
    tiles: list[Tile]


def make_tile(sample: KeptSample, *, max_pixels: int) -> Tile:
    """Decode the sample's first image member into a thumbnail; never raises for bad data."""
    cls = sample.members.get(CLASS_EXTENSION)
    label = f"cls {cls.decode('utf-8', 'replace').strip()[:12]}" if cls else "no cls"
    extension = next((e for e in IMAGE_EXTENSIONS if e in sample.members), None)
    if extension is None:
        return Tile(sample.key, f"{label}, no image", None)
    try:
        image = decode_image(
            sample.members[extension],
            extension,
            max_pixels=max_pixels,
            draft=lambda size: (TILE, TILE),
        )
        image = convert_mode(image, "RGB")
        image.thumbnail((TILE, TILE))
    except (ImageDecodeError, OSError, ValueError) as exc:
        return Tile(sample.key, f"{label}, bad image: {exc}", None)
    return Tile(sample.key, label, image)


def sheet_size(rows: list[SheetRow]) -> tuple[int, int]:
    """(width, height) of the sheet for these rows; every row has room for the longest."""
    columns = max((len(row.tiles) for row in rows), default=0)
    width = PAD + max(columns, 1) * (TILE + PAD)
    height = PAD + max(len(rows), 1) * (CAPTION + TILE + LABEL + PAD)
    return width, height


def tile_box(row: int, column: int) -> tuple[int, int, int, int]:
    """The TILE x TILE square of the tile at (row, column)."""
    left = PAD + column * (TILE + PAD)
    top = PAD + row * (CAPTION + TILE + LABEL + PAD) + CAPTION
    return left, top, left + TILE, top + TILE


def render_sheet(rows: list[SheetRow]) -> bytes:
    """The sheet as PNG bytes; with no tiles at all, a small sheet that says so."""
    rows = [row for row in rows if row.tiles]
    sheet = Image.new("RGB", sheet_size(rows), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    if not rows:
        draw.text((PAD, PAD), "no samples to show", fill=TEXT, font=font)
    for r, row in enumerate(rows):
        left, top, _, _ = tile_box(r, 0)
        caption = _fit(draw, row.shard, font, sheet.width - 2 * PAD, keep_end=True)
        draw.text((left, top - CAPTION + 2), caption, fill=TEXT, font=font)
        for c, tile in enumerate(row.tiles):
            box = tile_box(r, c)
            if tile.thumbnail is None:
                draw.rectangle(box, fill=PLACEHOLDER)
            else:
                offset_x = box[0] + (TILE - tile.thumbnail.width) // 2
                offset_y = box[1] + (TILE - tile.thumbnail.height) // 2
                sheet.paste(tile.thumbnail, (offset_x, offset_y))
            for line, text in enumerate((tile.key, tile.label)):
                fitted = _fit(draw, text, font, TILE, keep_end=line == 0)
                draw.text((box[0], box[3] + 2 + 14 * line), fitted, fill=TEXT, font=font)
    buffer = io.BytesIO()
    sheet.save(buffer, "PNG")
    return buffer.getvalue()


def _fit(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: int,
    keep_end: bool,
) -> str:
    """`text` shortened with an ellipsis to fit `width` pixels (keys keep their end)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(f"…{text}", font=font) > width:
        text = text[1:] if keep_end else text[:-1]
    return f"…{text}" if keep_end else f"{text}…"


def choose_shards(count: int, wanted: int) -> list[int]:
    """`wanted` shard positions spread evenly over `count` shards, first and last included."""
    if wanted <= 0 or count <= 0:
        return []
    if wanted >= count:
        return list(range(count))
    if wanted == 1:
        return [0]
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})
