"""Per-stage cost of the seed recipe on the bench photos, one core, the same images for
every row (`make bench` builds them first):

    .venv/bin/python benchmarks/stages.py [--images 32]

Each row is the best of three passes over the images, in CPU milliseconds per image. The
candidates beside shardflow's choice are what was measured to choose it; OpenCV and
imagecodecs rows appear when the bench extra is installed.
"""

from __future__ import annotations

import argparse
import hashlib
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
    args = parser.parse_args()
    with tarfile.open(args.shard) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")]
    jpegs = jpegs[: args.images]
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
    print("| stage | how | ms |\n|---|---|---:|")
    for stage, how, ms in sorted(rows, key=lambda r: r[0]):
        print(f"| {stage} | {how} | {ms:.2f} |")
    print(f"\nPNG sizes: ISA-L {np.mean([len(b) for b in pngs]) / 1e3:.0f} kB per image", end="")
    if encoders.fpng is not None:
        sizes = [len(encoders.fpng_checked(p) or b"") for p in pixels]
        print(f", fpng {np.mean(sizes) / 1e3:.0f} kB", end="")
    print()


if __name__ == "__main__":
    main()
