"""normalize_minmax equals the docs recipe's float32 arithmetic on every range, including the
full 0..255 range where it skips the lookup pass."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shardflow.steps.images import normalize_minmax


def docs_arithmetic(pixels: np.ndarray) -> np.ndarray:
    image = pixels.astype(np.float32) / 255.0
    image -= image.min()
    image /= image.max()
    return np.array(np.clip(image, 0.0, 1.0) * 255.0, "uint8")


@pytest.mark.parametrize(("low", "high"), [(0, 255), (0, 254), (1, 255), (10, 200), (37, 38)])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_normalize_matches_the_docs_arithmetic(mode: str, low: int, high: int) -> None:
    shape = (31, 47) if mode == "L" else (31, 47, 3)
    pixels = np.random.default_rng(low + high).integers(low, high + 1, shape, dtype=np.uint8)
    pixels.flat[0], pixels.flat[-1] = low, high
    image = Image.fromarray(pixels, mode)
    normalized = normalize_minmax(image)
    assert np.array_equal(np.asarray(normalized), docs_arithmetic(pixels))
    assert (normalized is image) == ((low, high) == (0, 255))
    # Decoded pixels (the numpy path the seed recipe takes) give the same.
    as_numpy = normalize_minmax(pixels.copy())
    assert isinstance(as_numpy, np.ndarray) and as_numpy.shape == pixels.shape
    assert np.array_equal(as_numpy, docs_arithmetic(pixels))


def test_constant_image_becomes_black_not_nan() -> None:
    image = Image.new("RGB", (5, 4), (90, 90, 90))
    assert np.asarray(normalize_minmax(image)).max() == 0
