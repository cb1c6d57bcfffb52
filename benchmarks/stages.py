"""Per-stage cost of the seed recipe, then of train-224, on the bench photos, one core, the
same images for every row (`make bench` builds them first):

    .venv/bin/python benchmarks/stages.py [--images 32] [--only train-224]

Each row is the best of three passes over the images, in CPU milliseconds per image. The
candidates beside shardflow's choice are what was measured to choose it; OpenCV and
imagecodecs rows appear when the bench extra is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from shardflow.steps import encoders, images

HERE = Path(__file__).resolve().parent


def best_ms(items: list, work: Callable, passes: int = 3) -> float:
    best = float("inf")
    for _ in range(passes):
        started = time.process_time()
        for item in items:
            work(item)
        best = min(best, (time.process_time() - started) / len(items) * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--shard", type=Path, default=HERE / "data" / "bench-000000.tar")
    parser.add_argument("--only", choices=("seed", "train-224"))
    args = parser.parse_args()
    with tarfile.open(args.shard) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    jpegs = jpegs[: args.images]
    if args.only != "train-224":
        seed_stages(jpegs)
    if args.only != "seed":
        train_224_stages(jpegs)


def print_rows(rows: list[tuple[str, str, float]]) -> None:
    print("| stage | how | ms |\n|---|---|---:|")
    for stage, how, ms in sorted(rows, key=lambda r: r[0]):
        print(f"| {stage} | {how} | {ms:.2f} |")


def train_224_stages(jpegs: list[bytes]) -> None:
    """Decode, shrink to 256 + crop 224, JPEG q90: each way, on the same photos (bold:
    shardflow's; OpenCV full decode + INTER_AREA + OpenCV JPEG is the img2dataset style)."""
    import cv2
    import simplejpeg

    from shardflow.steps import resample_area

    cv2.setNumThreads(1)
    items = []
    for jpeg in jpegs:
        height, width = simplejpeg.decode_jpeg_header(jpeg)[:2]
        target = images.resized_size((width, height), shorter=256, longer=None, exact=None)
        factor = max(
            f for f in (1, 2, 4, 8) if -(-width // f) >= target[0] and -(-height // f) >= target[1]
        )
        scaled = {"min_width": -(-width // factor), "min_height": -(-height // factor)}
        items.append((jpeg, target, factor, scaled))
    reduced = [simplejpeg.decode_jpeg(j, min_factor=f, **s) for j, _, f, s in items]
    full = [simplejpeg.decode_jpeg(j) for j, *_ in items]
    sized = list(zip(reduced, [t for _, t, _, _ in items], strict=True))
    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2}
    flags |= {4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
    crop = (224, 224)

    def pillow_box(item: tuple[np.ndarray, images.Size]) -> Image.Image:
        pixels, (width, height) = item
        left, top = (width - 224) // 2, (height - 224) // 2
        sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
        box = (left * sx, top * sy, (left + 224) * sx, (top + 224) * sy)
        return Image.fromarray(pixels).resize(crop, Image.Resampling.BOX, box=box)

    crops = [resample_area.shrink(p, t, crop=crop) for p, t in sized]
    rows: list[tuple[str, str, float]] = []

    def row(stage: str, how: str, items: list, work: Callable) -> None:
        rows.append((stage, how, best_ms(items, work)))

    row(
        "1 decode",
        "OpenCV, full size (img2dataset)",
        jpegs,
        lambda j: cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR),
    )
    row(
        "1 decode",
        "OpenCV, IMREAD_REDUCED_COLOR_2/4/8 (the bar)",
        items,
        lambda i: cv2.imdecode(np.frombuffer(i[0], np.uint8), flags[i[2]]),
    )
    row("1 decode", "simplejpeg, full size", jpegs, simplejpeg.decode_jpeg)
    row(
        "1 decode",
        "**simplejpeg, reduced (strict)**",
        items,
        lambda i: simplejpeg.decode_jpeg(i[0], min_factor=i[2], strict=True, **i[3]),
    )
    row(
        "2 shrink + crop",
        "OpenCV INTER_AREA of the full decode (img2dataset)",
        list(zip(full, [t for _, t, _, _ in items], strict=True)),
        lambda i: cv2.resize(i[0], i[1], interpolation=cv2.INTER_AREA),
    )
    row(
        "2 shrink + crop",
        "**OpenCV INTER_AREA of the reduced decode** (fast-resize)",
        sized,
        lambda i: resample_area.shrink(i[0], i[1], crop=crop, resizer="opencv"),
    )
    row(
        "2 shrink + crop",
        "**numpy area, the crop's region only** (without the extra)",
        sized,
        lambda i: resample_area.shrink(i[0], i[1], crop=crop, resizer="numpy"),
    )
    row("2 shrink + crop", "Pillow box, the crop's region only (before)", sized, pillow_box)
    row(
        "3 JPEG q90",
        "**Pillow**",
        crops,
        lambda p: Image.fromarray(p).save(io.BytesIO(), "JPEG", quality=90),
    )
    row(
        "3 JPEG q90",
        "OpenCV (img2dataset)",
        crops,
        lambda p: cv2.imencode(".jpg", p, [cv2.IMWRITE_JPEG_QUALITY, 90]),
    )
    row(
        "3 JPEG q90",
        "simplejpeg, 4:2:0 as Pillow's",
        crops,
        lambda p: simplejpeg.encode_jpeg(p, quality=90, colorsubsampling="420"),
    )

    def pillow_jpeg(pixels: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    encoders_ = {
        "Pillow": pillow_jpeg,
        "OpenCV": lambda p: cv2.imencode(
            ".jpg", np.ascontiguousarray(p[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )[1].tobytes(),  # OpenCV takes BGR
        "simplejpeg": lambda p: simplejpeg.encode_jpeg(p, quality=90, colorsubsampling="420"),
    }
    sizes, closeness = {}, {}
    for name, encode in encoders_.items():
        encoded = [encode(p) for p in crops]
        sizes[name] = [len(e) for e in encoded]
        errors = [
            np.mean((np.asarray(Image.open(io.BytesIO(e))).astype(np.float64) - p) ** 2)
            for e, p in zip(encoded, crops, strict=True)
        ]
        closeness[name] = 10 * np.log10(255.0**2 / np.mean(errors))
    row(
        "2 shrink + crop",
        "Pillow reduce() by the whole factor, then box (reducing_gap=1), of the full decode",
        list(zip(full, [t for _, t, _, _ in items], strict=True)),
        lambda i: Image.fromarray(i[0]).resize(i[1], Image.Resampling.BOX, reducing_gap=1.0),
    )
    factors = [f for _, _, f, _ in items]
    print(
        f"\ntrain-224: {len(items)} photos, decoded at 1/2 for {factors.count(2)}, "
        f"1/4 for {factors.count(4)}, full size for {factors.count(1)}; "
        "CPU ms per image (best of 3 passes)\n"
    )
    print_rows(rows)
    print(
        "\nJPEG q90, mean size per image and PSNR of the decoded JPEG against the pixels "
        "encoded (pooled): "
        + ", ".join(
            f"{name} {np.mean(s) / 1e3:.1f} kB, {closeness[name]:.2f} dB"
            for name, s in sizes.items()
        )
    )


def seed_stages(jpegs: list[bytes]) -> None:
    scratch = images.Scratch()
    pixels = [
        np.array(
            images.decode_image_or_pixels(j, "jpg", max_pixels=1 << 30, pixels=("RGB", scratch))
        )
        for j in jpegs
    ]
    pillow = [Image.fromarray(p) for p in pixels]
    table = np.arange(256, dtype=np.uint8)[::-1].copy()
    rows: list[tuple[str, str, float]] = []

    def row(stage: str, how: str, items: list, work: Callable) -> None:
        rows.append((stage, how, best_ms(items, work)))

    row(
        "JPEG decode",
        "Pillow, its strict-jpeg check, np.asarray (before)",
        jpegs,
        lambda j: np.asarray(images.decode_image(j, "jpg", max_pixels=1 << 30)),
    )
    row(
        "JPEG decode",
        "**simplejpeg into a reused buffer**, header by Pillow",
        jpegs,
        lambda j: images.decode_image_or_pixels(
            j, "jpg", max_pixels=1 << 30, pixels=("RGB", scratch)
        ),
    )
    row("min/max", "Pillow histogram (before)", pillow, lambda im: im.histogram())
    row("min/max", "**numpy min, max**", pixels, lambda p: (p.min(), p.max()))
    row(
        "lookup table",
        "Pillow point on an RGB image (before)",
        pillow,
        lambda im: im.point(table.tolist() * 3),
    )
    row("lookup table", "numpy take", pixels, lambda p: np.take(table, p))
    row(
        "lookup table",
        "**Pillow point on an 8-bit view of the buffer**, back to numpy",
        pixels,
        lambda p: np.asarray(
            Image.frombuffer("L", (p.size // p.shape[0], p.shape[0]), p, "raw", "L", 0, 1).point(
                table.tolist()
            )
        ),
    )
    row("PNG encode", "**Up filter + ISA-L level 1** (default)", pixels, encoders.png_up_isal)
    if encoders.fpng is not None:
        row("PNG encode", "**fpng, output checked** (fpng extra)", pixels, encoders.fpng_checked)
    pngs = [bytes(encoders.png_up_isal(p)) for p in pixels]
    row("sha256 of the output", "hashlib", pngs, lambda b: hashlib.sha256(b).digest())
    row(
        "PNG check alone",
        "chunk CRCs (ISA-L crc32)",
        pngs,
        lambda b: encoders._well_formed_png(b, b[16:29]),
    )
    try:
        import cv2

        cv2.setNumThreads(1)
        row(
            "min/max",
            "OpenCV minMaxLoc (not used)",
            pixels,
            lambda p: cv2.minMaxLoc(p.reshape(p.shape[0], -1)),
        )
        row("lookup table", "OpenCV LUT (not used)", pixels, lambda p: cv2.LUT(p, table))
    except ImportError:
        pass
    mpx = np.mean([p.shape[0] * p.shape[1] for p in pixels]) / 1e6
    print(f"{len(pixels)} photos, mean {mpx:.2f} Mpx, CPU ms per image (best of 3 passes)\n")
    print_rows(rows)
    print(f"\nPNG sizes: ISA-L {np.mean([len(b) for b in pngs]) / 1e3:.0f} kB per image", end="")
    if encoders.fpng is not None:
        sizes = [len(encoders.fpng_checked(p) or b"") for p in pixels]
        print(f", fpng {np.mean(sizes) / 1e3:.0f} kB", end="")
    print()


if __name__ == "__main__":
    main()
