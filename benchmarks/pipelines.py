"""The pipelines `make bench` compares, each run alone in its own process by the runner.

    python benchmarks/pipelines.py NAME --threads N --inputs A.tar B.tar --outputs X.tar Y.tar

prints one JSON line: samples, wall and CPU seconds, bytes in and out, peak RSS. Timing
starts after imports, so every pipeline is charged for its work, not its start-up.

- docs: the webdataset docs recipe ("Writing Filters and Offline Augmentation") as published,
  less its random-noise augmentation and with the class read from the JSON: float32 RGB
  decode (what its "torchrgb" gives, without torch), per-image min-max, TarWriter png + cls.
- seed / seed-pillow: `shardflow augment --recipe seed` through the API, with ISA-L PNG
  (the fast-png extra) and with the Pillow fallback.
- floor: the fastest exact decode + normalise + encode found, with nothing else (no
  validation, no manifest, no hashing): libjpeg-turbo via imagecodecs, min/max and the same
  lookup table via OpenCV, PNG as Up + ISA-L (the fastest lossless encoder that releases the
  GIL and stays within 1.25x of the docs recipe's size), tarfile in and out.
- floor-fpng: the same with fpng, the fastest PNG encoder found; it holds the GIL and
  ignores encoder failures, so it stands for a one-core floor only.
- train-224: `shardflow augment --recipe train-224` (shorter side 256 by exact area
  averaging, center crop 224, JPEG q90) with the fast-resize extra (OpenCV's INTER_AREA);
  train-224-numpy: the same without it (the numpy resizer); train-224-box and
  train-224-bicubic: the same with Pillow's box and bicubic filters instead.
- train-224-floor: the bar's accuracy (a reduced decode, then an exact area average) at the
  least cost found: simplejpeg, OpenCV's INTER_AREA and JPEG encoder, no checks at all.
- img2dataset: the same job as img2dataset's resizer does it: OpenCV full decode, resize
  with INTER_AREA, center crop, OpenCV JPEG encode; webdataset in, TarWriter out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import resource
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

Runner = Callable[[list[str], list[str], int], int]
PIPELINES: dict[str, Runner] = {}


def pipeline(name: str) -> Callable[[Runner], Runner]:
    def register(function: Runner) -> Runner:
        PIPELINES[name] = function
        return function

    return register


@pipeline("docs")
def docs(inputs: list[str], outputs: list[str], threads: int) -> int:
    import webdataset as wds

    count = 0
    for url, output in zip(inputs, outputs, strict=True):
        src = (
            wds.WebDataset(url, shardshuffle=False)
            .decode("rgb")
            .to_tuple("__key__", "jpg;png", "json")
        )
        with wds.TarWriter(output) as dst:
            for key, image, data in src:
                image -= np.amin(image)
                image /= np.amax(image)
                dst.write({"__key__": key, "png": image, "cls": data["cls"]})
                count += 1
    return count


def _shardflow(
    recipe_name: str, inputs: list[str], outputs: list[str], threads: int, processes: bool = False
) -> int:
    from shardflow.steps.augment import AugmentOptions
    from shardflow.steps.augment_batch import augment_all
    from shardflow.steps.images import rely_on_own_pixel_limit
    from shardflow.steps.pipeline import Pipeline
    from shardflow.steps.recipe import load_recipe

    rely_on_own_pixel_limit()
    process = Pipeline(load_recipe(recipe_name), max_pixels=64_000_000, allowed_plugins=[])
    pairs = list(zip(inputs, outputs, strict=True))
    count = 0
    options = AugmentOptions(threads=threads, processes=processes)
    for result in augment_all(pairs, process, options):
        if result.status != "written":
            raise SystemExit(f"{result.input}: {result.error}")
        count += result.counts["written"]
    return count


@pipeline("seed")
def seed(inputs: list[str], outputs: list[str], threads: int) -> int:
    """The default install (the fast-png extra, not fpng)."""
    from shardflow.steps import encoders

    if encoders.fast_deflate is None:
        raise SystemExit("seed needs the fast-png extra (isal); seed-pillow runs without it")
    encoders.fpng = None
    return _shardflow("seed", inputs, outputs, threads)


@pipeline("seed-fpng")
def seed_fpng(inputs: list[str], outputs: list[str], threads: int) -> int:
    """With the fpng extra installed, which `auto` then picks."""
    from shardflow.steps import encoders

    if encoders.fpng is None:
        raise SystemExit("seed-fpng needs the fpng extra")
    return _shardflow("seed", inputs, outputs, threads)


@pipeline("seed-procs")
def seed_procs(inputs: list[str], outputs: list[str], threads: int) -> int:
    """seed with its `threads` workers as processes (the CLI's default), ISA-L."""
    from shardflow.steps import encoders

    encoders.fpng = None
    return _shardflow("seed", inputs, outputs, threads, processes=True)


@pipeline("seed-fpng-procs")
def seed_fpng_procs(inputs: list[str], outputs: list[str], threads: int) -> int:
    """seed-fpng with its `threads` workers as processes."""
    return _shardflow("seed", inputs, outputs, threads, processes=True)


@pipeline("seed-pillow")
def seed_pillow(inputs: list[str], outputs: list[str], threads: int) -> int:
    from shardflow.steps import encoders

    encoders.fast_deflate = None
    encoders.fpng = None
    return _shardflow("seed", inputs, outputs, threads)


@pipeline("train-224")
def train_224(inputs: list[str], outputs: list[str], threads: int) -> int:
    """With the fast-resize extra (OpenCV), which `resample: area` then uses."""
    from shardflow.steps import resample_area

    if resample_area.installed_resizer() != "opencv":
        raise SystemExit("train-224 needs the fast-resize extra; train-224-numpy runs without")
    return _shardflow("train-224", inputs, outputs, threads)


@pipeline("train-224-numpy")
def train_224_numpy(inputs: list[str], outputs: list[str], threads: int) -> int:
    """Without it: the numpy area resizer (the same geometry, pixels within a level)."""
    from shardflow.steps import resample_area

    resample_area.installed_resizer = lambda: "numpy"
    return _shardflow("train-224", inputs, outputs, threads)


def train_224_with(resample: str) -> str:
    """The train-224 recipe with another `resample`, as an inline recipe."""
    ops = [
        {"image": {"from": "jpg;png;webp", "mode": "RGB"}},
        {"resize": {"shorter": 256, "resample": resample}},
        {"center_crop": {"size": 224}},
        {"label": {"from": "json", "path": "cls"}},
        {"encode": {"members": {"jpg": {"from": "image", "quality": 90}, "cls": "cls"}}},
    ]
    return json.dumps({"name": f"train-224-{resample}", "ops": ops})


@pipeline("train-224-bicubic")
def train_224_bicubic(inputs: list[str], outputs: list[str], threads: int) -> int:
    """train-224 with Pillow's bicubic filter instead of exact area averaging."""
    return _shardflow(train_224_with("bicubic"), inputs, outputs, threads)


@pipeline("train-224-box")
def train_224_box(inputs: list[str], outputs: list[str], threads: int) -> int:
    """train-224 with Pillow's box filter (what the recipe used before `area`)."""
    return _shardflow(train_224_with("box"), inputs, outputs, threads)


def _tar_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) from a tar read as a stream, with no checks at all."""
    key, fields = None, {}
    with tarfile.open(url, "r|") as tar:
        for member in tar:
            stem, _, extension = member.name.partition(".")
            if stem != key and key is not None:
                yield key, fields
                fields = {}
            key = stem
            fields[extension] = tar.extractfile(member).read()
    if key is not None:
        yield key, fields


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(bytes(data)))


def _floor(encode: Callable[[np.ndarray], bytes]) -> Runner:
    import cv2
    import imagecodecs

    from shardflow.steps.images import minmax_lut

    cv2.setNumThreads(1)
    identity = list(range(256))

    def work(item: tuple[str, dict[str, bytes]]) -> tuple[str, bytes, bytes]:
        key, fields = item
        pixels = imagecodecs.jpeg8_decode(fields["jpg"])
        table = minmax_lut(int(pixels.min()), int(pixels.max()))
        if table != identity:
            pixels = cv2.LUT(pixels, np.array(table, dtype=np.uint8))
        return key, encode(pixels), str(json.loads(fields["json"])["cls"]).encode()

    def run(inputs: list[str], outputs: list[str], threads: int) -> int:
        count = 0
        with ThreadPoolExecutor(threads) as pool:
            mapper = pool.map if threads > 1 else map
            for url, output in zip(inputs, outputs, strict=True):
                with tarfile.open(output, "w", format=tarfile.GNU_FORMAT) as tar:
                    for key, png, cls in mapper(work, _tar_samples(url)):
                        _tar_add(tar, f"{key}.png", png)
                        _tar_add(tar, f"{key}.cls", cls)
                        count += 1
        return count

    return run


@pipeline("floor")
def floor(inputs: list[str], outputs: list[str], threads: int) -> int:
    from shardflow.steps.encoders import png_up_isal

    return _floor(png_up_isal)(inputs, outputs, threads)


@pipeline("floor-fpng")
def floor_fpng(inputs: list[str], outputs: list[str], threads: int) -> int:
    import fpng

    return _floor(fpng.from_ndarray)(inputs, outputs, threads)


@pipeline("train-224-floor")
def train_224_floor(inputs: list[str], outputs: list[str], threads: int) -> int:
    """The bar's accuracy at the least cost found, with nothing else: simplejpeg's reduced
    decode (the largest DCT reduction that still covers the target), OpenCV's INTER_AREA,
    OpenCV's JPEG q90, tarfile in and out; no checks, no manifest, no hashing."""
    import cv2
    import simplejpeg

    cv2.setNumThreads(1)
    size, crop = 256, 224

    def resize(jpeg: bytes) -> bytes:
        height, width = simplejpeg.decode_jpeg_header(jpeg)[:2]
        scale = size / min(width, height)
        target = (max(1, round(width * scale)), max(1, round(height * scale)))
        factor = max(
            f for f in (1, 2, 4, 8) if -(-width // f) >= target[0] and -(-height // f) >= target[1]
        )
        reduced = {"min_width": -(-width // factor), "min_height": -(-height // factor)}
        image = simplejpeg.decode_jpeg(jpeg, colorspace="BGR", min_factor=factor, **reduced)
        image = cv2.resize(image, target, interpolation=cv2.INTER_AREA)
        top, left = (target[1] - crop) // 2, (target[0] - crop) // 2
        image = image[top : top + crop, left : left + crop]
        return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    count = 0
    for url, output in zip(inputs, outputs, strict=True):
        with tarfile.open(output, "w", format=tarfile.GNU_FORMAT) as tar:
            for key, fields in _tar_samples(url):
                _tar_add(tar, f"{key}.jpg", resize(fields["jpg"]))
                _tar_add(tar, f"{key}.cls", str(json.loads(fields["json"])["cls"]).encode())
                count += 1
    return count


@pipeline("img2dataset")
def img2dataset_style(inputs: list[str], outputs: list[str], threads: int) -> int:
    import cv2
    import webdataset as wds

    cv2.setNumThreads(1)  # as img2dataset's resizer does
    size, crop = 256, 224

    def resize(jpeg: bytes) -> bytes:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
        height, width = image.shape[:2]
        scale = size / min(height, width)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LANCZOS4
        shape = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = cv2.resize(image, shape, interpolation=interpolation)
        top, left = (shape[1] - crop) // 2, (shape[0] - crop) // 2
        image = image[top : top + crop, left : left + crop]
        return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

    count = 0
    for url, output in zip(inputs, outputs, strict=True):
        src = wds.WebDataset(url, shardshuffle=False).to_tuple("__key__", "jpg", "json")
        with wds.TarWriter(output) as dst:
            for key, jpeg, data in src:
                cls = json.loads(data)["cls"]
                dst.write({"__key__": key, "jpg": resize(jpeg), "cls": cls})
                count += 1
    return count


@pipeline("control")
def control(inputs: list[str], outputs: list[str], threads: int) -> int:
    """Pure C work that releases the GIL (zlib on each JPEG): how much parallelism the
    machine gives right now, to read the other pipelines' thread scaling against."""
    import zlib

    def work(item: tuple[str, dict[str, bytes]]) -> int:
        return len(zlib.compress(item[1]["jpg"] * 8, 6))

    count = 0
    with ThreadPoolExecutor(threads) as pool:
        for url, output in zip(inputs, outputs, strict=True):
            count += sum(1 for _ in pool.map(work, _tar_samples(url)))
            Path(output).write_bytes(b"")
    return count


def peak_rss_mb() -> float:
    """This process's own peak RSS. ru_maxrss is not: Linux carries the parent's high-water
    mark across fork and exec, so every child would report at least the runner's RSS.
    VmHWM belongs to the address space that exec created."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _usage() -> dict[str, float]:
    """CPU seconds and minor page faults of this process and of the worker processes it
    waited for (a pipeline that runs its work in child processes is charged for them)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "user": own.ru_utime + children.ru_utime,
        "system": own.ru_stime + children.ru_stime,
        "minor_faults": own.ru_minflt + children.ru_minflt,
    }


def _import_libraries() -> None:
    """Import every pipeline's libraries before the clock starts: timing measures the work,
    not imports (a worker process, forked, does not repeat them), and every pipeline is
    treated alike whichever libraries it needs."""
    for name in (
        "shardflow.steps.augment_batch",
        "shardflow.steps.pipeline",
        "shardflow.steps.recipe",
        "webdataset",
        "cv2",
        "imagecodecs",
        "fpng",
    ):
        with contextlib.suppress(ImportError):  # a pipeline that needs it says so
            importlib.import_module(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(PIPELINES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--inputs", nargs="+", required=True)
    parser.add_argument("--outputs", nargs="+", required=True)
    args = parser.parse_args()
    _import_libraries()
    before = _usage()
    started = time.perf_counter()
    samples = PIPELINES[args.name](args.inputs, args.outputs, args.threads)
    seconds = time.perf_counter() - started
    after = _usage()
    result = {
        "name": args.name,
        "threads": args.threads,
        "samples": samples,
        "seconds": seconds,
        "cpu_seconds": after["user"] + after["system"] - before["user"] - before["system"],
        "system_seconds": after["system"] - before["system"],
        "minor_faults": after["minor_faults"] - before["minor_faults"],
        "bytes_in": sum(Path(p).stat().st_size for p in args.inputs),
        "bytes_out": sum(Path(p).stat().st_size for p in args.outputs),
        "peak_rss_mb": peak_rss_mb(),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
