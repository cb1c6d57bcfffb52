"""How close each train-224 path comes to an exact area average of the full-resolution image:

    .venv/bin/python benchmarks/accuracy.py [--images 64]    # `make bench` runs it too

The job: shorter side to 256 by area averaging, centre crop 224. The reference is the exact
area average of the full-resolution decode (libjpeg-turbo's accurate IDCT with smooth
chroma upsampling, what Pillow and OpenCV decode by default) to the target size, then the crop
box our recipe cuts, both computed from the ORIGINAL size (`images.resized_size`, then
`(target - 224) // 2`). "Exact": the decoded image is taken as piecewise constant over unit
pixels; an output pixel is the mean of that function over its footprint, a rectangle of
(width / target width) x (height / target height) source pixels. Its overlap with source
pixel (k, l) is the product of the overlaps along each axis, so the average is separable:
reference = Wy @ image @ Wx.T, where W[i, k] = |[i s, (i + 1) s] & [k, k + 1]| / s. The
matrices are built from those interval lengths and applied in float64 (no rounding to 8
bits, no fixed-point weights), so the only error is float64's.

Each path's 224 x 224 pixels are compared with it before JPEG encoding (PSNR, dB) and after
(the path's own JPEG at quality 90, decoded): img2dataset-style (OpenCV full decode +
INTER_AREA), OpenCV's reduced decode (IMREAD_REDUCED_COLOR_2/4/8, the largest reduction that
still covers the target) + INTER_AREA (the bar of issue 12), and shardflow's recipes run
through the real pipeline (decode, resize, crop and encode operations).
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from shardflow.steps import images
from shardflow.steps.ops import SampleContext
from shardflow.steps.pipeline import Pipeline
from shardflow.steps.recipe import load_recipe

HERE = Path(__file__).resolve().parent
SHORTER, CROP = 256, 224
BAR = "opencv reduced decode + INTER_AREA"


def area_weights(source: int, target: int, start: int, count: int) -> np.ndarray:
    """(count, source) float64: row i is output pixel start + i's share of each source pixel
    along one axis, the overlap of [i s, (i + 1) s] with [k, k + 1] over s (s = source /
    target)."""
    scale = source / target
    low = np.arange(start, start + count, dtype=np.float64)[:, None] * scale
    high = low + scale
    k = np.arange(source, dtype=np.float64)[None, :]
    return np.clip(np.minimum(high, k + 1) - np.maximum(low, k), 0.0, None) / scale


def geometry(width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(target size, crop offset (left, top)) from the original size, as the recipe does."""
    target = images.resized_size((width, height), shorter=SHORTER, longer=None, exact=None)
    return target, ((target[0] - CROP) // 2, (target[1] - CROP) // 2)


def reference(full: np.ndarray) -> np.ndarray:
    """The exact area average of `full` (H, W, 3) to the target, cropped: (224, 224, 3) float64."""
    height, width = full.shape[:2]
    (target_w, target_h), (left, top) = geometry(width, height)
    wy = area_weights(height, target_h, top, CROP)
    wx = area_weights(width, target_w, left, CROP)
    return np.einsum("ik,klc,jl->ijc", wy, full.astype(np.float64), wx, optimize=True)


def psnr(pixels: np.ndarray, ideal: np.ndarray) -> float:
    mse = float(np.mean((pixels.astype(np.float64) - ideal) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _jpeg_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


Path_ = Callable[[bytes], tuple[np.ndarray, bytes]]  # jpeg -> (pixels before JPEG, the JPEG)


def opencv_path(reduced: bool) -> Path_:
    import cv2

    cv2.setNumThreads(1)
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2}
    flags |= {4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

    def run(jpeg: bytes) -> tuple[np.ndarray, bytes]:
        header = Image.open(io.BytesIO(jpeg))
        width, height = header.size
        (target_w, target_h), (left, top) = geometry(width, height)
        factor = 1
        if reduced:  # the largest reduction whose (rounded up) size still covers the target
            factor = max(
                f for f in flags if -(-width // f) >= target_w and -(-height // f) >= target_h
            )
        bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flags[factor])
        resized = cv2.resize(bgr, (target_w, target_h), interpolation=cv2.INTER_AREA)
        cropped = np.ascontiguousarray(resized[top : top + CROP, left : left + CROP])
        encoded = cv2.imencode(".jpg", cropped, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        return cropped[:, :, ::-1], encoded

    return run


def recipe_path(recipe: str | dict, resizer: str | None = None) -> Path_:
    """A shardflow recipe through the real pipeline: the image field after the last pixel
    operation, and the JPEG the encode operation writes from it; `resizer`: the one
    `resample: area` runs (default: the installed one)."""
    if isinstance(recipe, dict):
        recipe = json.dumps(recipe)
    pipeline = Pipeline(load_recipe(recipe), max_pixels=64_000_000, allowed_plugins=[])
    ops = pipeline.recipe.ops
    for op in ops:
        if resizer is not None and getattr(op, "resizer", None) is not None:
            op.resizer = resizer  # type: ignore[attr-defined]

    def run(jpeg: bytes) -> tuple[np.ndarray, bytes]:
        sample: dict = {"jpg": jpeg, "json": b'{"cls": 0}', "__key__": "k"}
        ctx = SampleContext("k", pipeline.recipe.seed, pipeline.max_pixels)
        for op in ops[:-1]:
            sample = op.apply(sample, ctx)
        pixels = np.asarray(sample["image"])
        members = dict(ops[-1].encode(sample, ctx))
        return pixels, bytes(members["k.jpg"])

    return run


def pillow_reducing_gap(jpeg: bytes) -> tuple[np.ndarray, bytes]:
    """Pillow's own shortcut: the full decode, reduce() by the whole factor (an exact mean of
    whole blocks), then box (`reducing_gap=1`), the crop, Pillow's JPEG."""
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    target, (left, top) = geometry(*image.size)
    resized = image.resize(target, Image.Resampling.BOX, reducing_gap=1.0)
    cropped = resized.crop((left, top, left + CROP, top + CROP))
    buffer = io.BytesIO()
    cropped.save(buffer, "JPEG", quality=90)
    return np.asarray(cropped), buffer.getvalue()


def _with_resample(resample: str) -> dict:
    recipe = load_recipe("train-224")
    ops = [{op.name: op.params()} for op in recipe.ops]
    for op in ops:
        if "resize" in op:
            op["resize"]["resample"] = resample
    return {"name": f"train-224-{resample}", "ops": ops}


def paths() -> dict[str, Path_]:
    return {
        "img2dataset-style (OpenCV full decode + INTER_AREA)": opencv_path(reduced=False),
        BAR: opencv_path(reduced=True),
        "shardflow train-224 (area, OpenCV resizer)": recipe_path("train-224", "opencv"),
        "shardflow train-224 (area, numpy resizer)": recipe_path("train-224", "numpy"),
        "shardflow, resample box (Pillow)": recipe_path(_with_resample("box")),
        "shardflow, resample bicubic (Pillow)": recipe_path(_with_resample("bicubic")),
        "Pillow full decode, reduce() + box (reducing_gap=1)": pillow_reducing_gap,
    }


def measure(shard: Path, count: int = 64) -> dict[str, dict]:
    """Per path: PSNR before and after JPEG (mean, pooled, worst) over the shard's first
    `count` photos, and on how many photos it is at least as close as the bar."""
    with tarfile.open(shard) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")][:count]
    runs = paths()
    before: dict[str, list[float]] = {name: [] for name in runs}
    after: dict[str, list[float]] = {name: [] for name in runs}
    for jpeg in jpegs:
        ideal = reference(_jpeg_pixels(jpeg))
        for name, run in runs.items():
            pixels, encoded = run(jpeg)
            if pixels.shape != ideal.shape:
                raise SystemExit(f"{name}: {pixels.shape}, expected {ideal.shape}")
            before[name].append(psnr(pixels, ideal))
            after[name].append(psnr(_jpeg_pixels(encoded), ideal))
    bar = np.array(before[BAR])
    result = {}
    for name in runs:
        values, encoded = np.array(before[name]), np.array(after[name])
        result[name] = {
            "images": len(values),
            "mean_db": float(values.mean()),
            # PSNR of the mean squared error over all photos (a bad photo weighs in full)
            "pooled_db": float(10 * np.log10(1 / np.mean(10 ** (-values / 10)))),
            "worst_db": float(values.min()),
            "at_least_bar": int(np.sum(values >= bar - 0.01)),
            "jpeg_mean_db": float(encoded.mean()),
            "jpeg_pooled_db": float(10 * np.log10(1 / np.mean(10 ** (-encoded / 10)))),
        }
    return result


def markdown(result: dict[str, dict]) -> list[str]:
    images = next(iter(result.values()))["images"]
    lines = [
        "",
        f"Accuracy against an exact area average of the full-resolution decode ({images} "
        "photos, 224 x 224 after the crop; PSNR in dB, higher is closer; pooled = PSNR of "
        "the mean squared error over all photos; benchmarks/accuracy.py):",
        "",
        "| path | mean | pooled | worst | photos >= the bar (0.01 dB) | after JPEG q90: mean "
        "| pooled |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result.items():
        lines.append(
            f"| {name} | {row['mean_db']:.2f} | {row['pooled_db']:.2f} | {row['worst_db']:.2f} "
            f"| {row['at_least_bar']}/{row['images']} | {row['jpeg_mean_db']:.2f} "
            f"| {row['jpeg_pooled_db']:.2f} |"
        )
    return lines


def main() -> None:
    import data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    args = parser.parse_args()
    shard = data.build_shards(args.data, shards=4, samples=64)[0]
    print("\n".join(markdown(measure(shard, args.images))).lstrip("\n"))


if __name__ == "__main__":
    main()
