"""`resample: area`: shrinking by exact area averaging, as OpenCV's INTER_AREA does.

Each output pixel is the mean of the source over its footprint (width / target width by
height / target height source pixels), a partly covered source pixel weighing by the part
covered. Pillow's `box` filter is not that at non-integer scales: it gives each source pixel
a weight of 1 or 0 by whether its centre falls inside the footprint, which a shrink to 256
pixels (a scale of 1.3 after a JPEG's reduced decode, say) pays for in accuracy; the
comparison with an exact area average of the full-resolution image is benchmarks/accuracy.py.

Two implementations of the same geometry, chosen like the PNG encoders (the fastest
installed, recorded in the manifest since their bytes may differ):
- `opencv` (the `fast-resize` extra, opencv-python-headless): cv2.resize with INTER_AREA, on
  one thread (shardflow runs one worker per core; the setting is process-wide). It resizes
  the whole image: INTER_AREA has no region of interest that keeps the geometry.
- `numpy`: the same weights, separable, in float32, over only the region a following centre
  crop keeps: a gather, a multiply and an add per tap and axis, slower than OpenCV's SIMD
  loops all the same (benchmarks/README.md, train-224).
Both round to the nearest level; they can differ by one level where float rounding falls on
either side of a half.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .images import Scratch

Size = tuple[int, int]  # (width, height)
RESIZERS = ("opencv", "numpy")
_cv2: Any = None
_SCRATCH = Scratch()


def installed_resizer() -> str:
    """The resizer `area` uses on this install: OpenCV when it imports (a broken OpenCV, say
    a non-headless build without its system libraries, falls back too), else numpy."""
    try:
        _opencv()
    except ImportError:
        return "numpy"
    return "opencv"


def _opencv() -> Any:
    global _cv2
    if _cv2 is None:
        import cv2

        cv2.setNumThreads(
            1
        )  # one worker per core already; OpenCV's own threads would oversubscribe
        _cv2 = cv2
    return _cv2


def resizer_record(resizer: str) -> dict[str, str]:
    """What the manifest records: which resizer and its library's version."""
    version = _opencv().__version__ if resizer == "opencv" else np.__version__
    return {"resizer": resizer, "version": version}


def shrink(
    pixels: np.ndarray, size: Size, *, crop: Size | None = None, resizer: str = "numpy"
) -> np.ndarray:
    """8-bit (H, W) or (H, W, bands) pixels shrunk to `size` by exact area averaging; with
    `crop`, only the centre crop of the result (offsets `(size - crop) // 2`), contiguous.
    Each side of `size` must be at most the source's."""
    width, height = size
    if width > pixels.shape[1] or height > pixels.shape[0]:
        raise ValueError(f"area resize enlarges {pixels.shape[1]}x{pixels.shape[0]} to {size}")
    left, top = (0, 0) if crop is None else ((width - crop[0]) // 2, (height - crop[1]) // 2)
    out_w, out_h = size if crop is None else crop
    if resizer == "opencv":
        resized = _opencv().resize(pixels, size, interpolation=_cv2.INTER_AREA)
        return np.ascontiguousarray(resized[top : top + out_h, left : left + out_w])
    rows, row_weights = _taps(pixels.shape[0], height, top, out_h)
    columns, column_weights = _taps(pixels.shape[1], width, left, out_w)
    first, last = int(columns[0, 0]), int(columns[-1, -1]) + 1
    bands = 1 if pixels.ndim == 2 else pixels.shape[2]
    # Pixels as 2-D (rows, columns x bands): numpy's inner loops then run along whole rows.
    region = pixels[:, first:last].reshape(pixels.shape[0], -1)
    vertical = _weighted(region, rows, row_weights, "area-rows", axis=0)
    # Across: a column of the output is `bands` consecutive values of each row.
    spread = (bands * (columns - first))[:, :, None] + np.arange(bands)
    column_weights = np.repeat(column_weights, bands, axis=1)
    result = _weighted(
        vertical, spread.reshape(len(columns), -1), column_weights, "area-columns", axis=1
    )
    result += 0.5
    return result.astype(np.uint8).reshape((out_h, out_w, *pixels.shape[2:]))


def _taps(source: int, target: int, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """For output pixels start .. start + count along one axis: the source pixels each one
    covers (taps, count), and the share of each, (taps, count) float32; padding taps
    repeat the last pixel with a weight of 0."""
    scale = source / target
    low = np.arange(start, start + count, dtype=np.float64) * scale
    high = np.minimum(low + scale, source)
    first = np.floor(low).astype(np.intp)
    index = first[None, :] + np.arange(int(np.ceil(scale)) + 1)[:, None]
    shares = np.minimum(high, index + 1) - np.maximum(low, index)
    weights = np.clip(shares, 0.0, None) / scale
    return np.minimum(index, source - 1), weights.astype(np.float32)


def _weighted(
    pixels: np.ndarray, index: np.ndarray, weights: np.ndarray, name: str, axis: int
) -> np.ndarray:
    """Along `axis` of 2-D pixels, output i is the sum over taps t of weights[t, i] times
    the pixels at index[t, i], in float32, in this thread's buffer `name` (valid until the
    next call with that name)."""
    shape = (index.shape[1], pixels.shape[1]) if axis == 0 else (pixels.shape[0], index.shape[1])
    total = _buffer(f"{name}-total", shape, np.float32)
    gathered = _buffer(f"{name}-gathered", shape, pixels.dtype)
    term = _buffer(f"{name}-term", shape, np.float32)
    for tap, (taps, shares) in enumerate(zip(index, weights, strict=True)):
        np.take(pixels, taps, axis=axis, out=gathered)
        np.multiply(gathered, shares[:, None] if axis == 0 else shares, out=term if tap else total)
        if tap:
            total += term
    return total


def _buffer(name: str, shape: tuple[int, int], dtype: Any) -> np.ndarray:
    """A reused array of this thread's (a fresh multi-megabyte array per call is a fresh
    mapping from the kernel each time: page faults)."""
    size = shape[0] * shape[1] * np.dtype(dtype).itemsize
    return _SCRATCH.take(name, size).view(dtype).reshape(shape)
