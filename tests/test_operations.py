"""Each operation, through the real pipeline on real encoded images."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shardflow.steps.errors import UsageError
from shardflow.steps.pipeline import Outcome, Pipeline
from shardflow.steps.recipe import parse_recipe
from shardflow.steps.samples import RawSample

from helpers import image_bytes


def run(
    ops: list, sample: dict[str, bytes], *, key: str = "k", seed: int = 0, plugins=()
) -> Outcome:
    pipeline = Pipeline(
        parse_recipe({"seed": seed, "ops": ops}), max_pixels=64_000_000, allowed_plugins=plugins
    )
    return pipeline.process(RawSample(key, dict(sample), {k: len(v) for k, v in sample.items()}))


def written(outcome: Outcome) -> dict[str, bytes]:
    assert outcome.members is not None, outcome
    return {name.split(".", 1)[1]: bytes(data) for name, data in outcome.members}


def png_out(outcome: Outcome, ext: str = "png") -> Image.Image:
    return Image.open(io.BytesIO(written(outcome)[ext]))


def jpg_sample(width: int = 300, height: int = 200, **kw) -> dict[str, bytes]:
    return {"jpg": image_bytes(width, height, quality=95, **kw), "json": b'{"cls": 4}'}


ENCODE_PNG = {"encode": {"members": {"png": "image"}}}


@pytest.mark.parametrize(
    ("resize", "size"),
    [
        ({"shorter": 100}, (150, 100)),
        ({"longer": 150}, (150, 100)),
        ({"width": 64, "height": 64}, (64, 64)),
        ({"shorter": 400, "upscale": False}, (300, 200)),
        ({"shorter": 400}, (600, 400)),
    ],
)
def test_resize(resize: dict, size: tuple[int, int]) -> None:
    outcome = run([{"image": {}}, {"resize": resize}, ENCODE_PNG], jpg_sample())
    assert png_out(outcome).size == size


def test_resize_of_a_jpeg_uses_draft_decoding_and_stays_close_to_a_full_decode() -> None:
    sample = jpg_sample(800, 600)
    drafted = np.asarray(
        png_out(run([{"image": {}}, {"resize": {"shorter": 150}}, ENCODE_PNG], sample))
    )
    full = Image.open(io.BytesIO(sample["jpg"])).convert("RGB").resize((200, 150), Image.BICUBIC)
    difference = np.abs(drafted.astype(int) - np.asarray(full).astype(int))
    assert drafted.shape == (150, 200, 3)
    assert difference.mean() < 4  # the same picture, not bit-identical (DCT scaling)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    upright = png_out(run([{"image": {}}, ENCODE_PNG], {"jpg": buffer.getvalue()}))
    assert upright.size == (20, 40)
    top = np.asarray(upright)[2, 10]
    assert top[2] > 200 and top[0] < 60  # the blue half is now on top


def test_exif_orientation_with_draft_gives_the_requested_size() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 800, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 8
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    outcome = run(
        [{"image": {}}, {"resize": {"shorter": 100}}, ENCODE_PNG], {"jpg": buffer.getvalue()}
    )
    assert png_out(outcome).size == (100, 200)


def test_center_crop_takes_the_middle() -> None:
    gradient = np.tile(np.arange(200, dtype=np.uint8), (100, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient, "L").save(buffer, "PNG")
    outcome = run(
        [{"image": {"from": "png"}}, {"center_crop": {"size": 50}}, ENCODE_PNG],
        {"png": buffer.getvalue()},
    )
    cropped = np.asarray(png_out(outcome))
    assert cropped.shape == (50, 50)
    assert cropped[0, 0] == 75 and cropped[0, -1] == 124


def test_center_crop_larger_than_the_image_fails_the_sample() -> None:
    outcome = run([{"image": {}}, {"center_crop": {"size": 500}}, ENCODE_PNG], jpg_sample())
    assert outcome.failed and "smaller than the crop 500x500" in outcome.failed


def test_random_crop_and_flip_are_seeded_per_sample_key() -> None:
    ops = [
        {"image": {"from": "png"}},
        {"random_crop": {"size": 40}},
        {"hflip": {"p": 0.5}},
        ENCODE_PNG,
    ]
    sample = {"png": image_bytes(120, 90, fmt="PNG")}
    first = {
        key: written(run(ops, sample, key=key))["png"] for key in ("a", "b", "c", "d", "e", "f")
    }
    again = {key: written(run(ops, sample, key=key))["png"] for key in first}
    assert first == again  # same (seed, key) -> same crop and flip
    assert len(set(first.values())) > 1  # different keys -> different draws
    other_seed = {key: written(run(ops, sample, key=key, seed=7))["png"] for key in first}
    assert other_seed != first


def test_hflip_with_p_1_mirrors() -> None:
    sample = {"png": image_bytes(30, 20, fmt="PNG")}
    original = np.asarray(Image.open(io.BytesIO(sample["png"])))
    flipped = np.asarray(
        png_out(run([{"image": {"from": "png"}}, {"hflip": {"p": 1.0}}, ENCODE_PNG], sample))
    )
    assert np.array_equal(flipped, original[:, ::-1])


def test_convert_mode() -> None:
    outcome = run([{"image": {}}, {"convert": {"mode": "L"}}, ENCODE_PNG], jpg_sample())
    assert png_out(outcome).mode == "L"


def test_label_from_a_json_path_with_list_index_and_classes() -> None:
    sample = {"jpg": image_bytes(), "json": json.dumps({"objects": [{"name": "dog"}]}).encode()}
    ops = [
        {"label": {"path": "objects.0.name", "classes": ["cat", "dog"]}},
        {"encode": {"members": {"cls": "cls"}}},
    ]
    assert written(run(ops, sample))["cls"] == b"1"
    missing = run([{"label": {"path": "objects.3.name"}}, ops[1]], sample)
    assert missing.failed and "'objects.3.name'" in missing.failed


def test_filter_by_minimum_size_drops_with_a_reason() -> None:
    ops = [{"image": {}}, {"filter": {"min_width": 301}}, ENCODE_PNG]
    outcome = run(ops, jpg_sample(300, 200))
    assert outcome.dropped == "image width 300 is below min_width 301"
    assert run(ops, jpg_sample(320, 200)).members


def test_keep_drop_rename_and_passthrough() -> None:
    sample = {"jpg": b"JPEGBYTES", "json": b"{}", "txt": b"hello", "extra": b"x"}
    ops = [
        {"drop": ["extra"]},
        {"rename": {"fields": {"txt": "caption.txt"}}},
        {"encode": {"members": {"json": "json"}, "passthrough": True}},
    ]
    assert written(run(ops, sample)) == {
        "json": b"{}",
        "jpg": b"JPEGBYTES",
        "caption.txt": b"hello",
    }
    keep = [{"keep": ["txt"]}, {"encode": {"members": {"txt": "txt"}}}]
    assert written(run(keep, sample)) == {"txt": b"hello"}


@pytest.mark.parametrize(
    ("member", "check"),
    [
        ({"jpg": {"from": "image", "quality": 50}}, lambda d: d[:2] == b"\xff\xd8"),
        ({"webp": {"from": "image", "lossless": True}}, lambda d: d[8:12] == b"WEBP"),
        ({"png": {"from": "image", "compress_level": 9}}, lambda d: d[:4] == b"\x89PNG"),
        ({"json": "json"}, lambda d: json.loads(d) == {"cls": 4}),
        ({"cls": "cls"}, lambda d: d == b"4"),
    ],
)
def test_encoders(member: dict, check) -> None:
    ops = [{"image": {}}, {"label": {}}, {"encode": {"members": member}}]
    data = next(iter(written(run(ops, jpg_sample())).values()))
    assert check(data)


def test_lossless_webp_round_trips_pixels() -> None:
    sample = {"png": image_bytes(40, 30, fmt="PNG")}
    ops = [
        {"image": {"from": "png"}},
        {"encode": {"members": {"webp": {"from": "image", "lossless": True}}}},
    ]
    out = np.asarray(png_out(run(ops, sample), "webp"))
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(sample["png"]))))


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "myplugins.py").write_text(
        textwrap.dedent(
            """
            def tag(sample):
                if sample["__key__"].startswith("skip"):
                    return None
                sample["txt"] = "tagged " + sample["__key__"]
                return sample

            def boom(sample):
                raise RuntimeError("kaput")

            def is_even(sample):
                return int(sample["__key__"]) % 2 == 0
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "myplugins"
    sys.modules.pop("myplugins", None)


def test_map_plugin(plugin_module: str) -> None:
    ops = [{"map": {"function": "myplugins:tag"}}, {"encode": {"members": {"txt": "txt"}}}]
    outcome = run(ops, {"json": b"{}"}, key="k1", plugins=[plugin_module])
    assert written(outcome) == {"txt": b"tagged k1"}
    assert run(ops, {"json": b"{}"}, key="skip1", plugins=[plugin_module]).dropped
    boom = [{"map": {"function": "myplugins:boom"}}, ops[1]]
    assert "RuntimeError: kaput" in run(boom, {}, plugins=[plugin_module]).failed


def test_filter_predicate_plugin(plugin_module: str) -> None:
    ops = [
        {"filter": {"predicate": "myplugins:is_even"}},
        {"encode": {"members": {"json": "json"}}},
    ]
    assert run(ops, {"json": b"{}"}, key="2", plugins=[plugin_module]).members
    assert "returned false" in run(ops, {"json": b"{}"}, key="3", plugins=[plugin_module]).dropped


def test_plugins_are_refused_unless_their_module_is_allowed(plugin_module: str) -> None:
    ops = [{"map": {"function": "myplugins:tag"}}, {"encode": {"members": {"txt": "txt"}}}]
    with pytest.raises(UsageError, match="--plugins myplugins"):
        run(ops, {}, plugins=[])
    with pytest.raises(UsageError, match="not allowed"):
        run([{"map": {"function": "os:system"}}, ops[1]], {}, plugins=["myplugins"])


def test_resize_then_center_crop_resamples_only_the_kept_region() -> None:
    sample = {"png": image_bytes(400, 300, fmt="PNG")}
    ops = [{"image": {"from": "png"}}, {"resize": {"shorter": 120}}, {"center_crop": {"size": 96}}]
    fused = np.asarray(png_out(run([*ops, ENCODE_PNG], sample))).astype(int)
    source = Image.open(io.BytesIO(sample["png"]))
    resized = source.resize((160, 120), Image.BICUBIC)
    separate = np.asarray(resized.crop((32, 12, 128, 108))).astype(int)
    assert fused.shape == separate.shape == (96, 96, 3)
    assert np.abs(fused - separate).max() <= 1  # rounding only
    planned = Pipeline(
        parse_recipe({"ops": [*ops, ENCODE_PNG]}), max_pixels=10**8, allowed_plugins=()
    )
    assert planned.recipe.ops[1].crop == (96, 96)  # the fused path is the one taken
    too_small = run([ops[0], {"resize": {"shorter": 60}}, ops[2], ENCODE_PNG], sample)
    assert too_small.failed and "image 80x60 is smaller than the crop 96x96" in too_small.failed


def _pillow_decoded(jpeg: bytes, mode: str) -> np.ndarray:
    """What the Pillow path gives: decode, EXIF transpose, convert."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg)))
    return np.asarray(image.convert(mode))


def _pixel_path_recipe(mode: str | None) -> list:
    image = {"image": {"mode": mode}} if mode else {"image": {}}
    return [image, {"normalize": {}}, ENCODE_PNG]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_decoded_to_numpy_is_pillows_upright_image_for_every_exif_orientation(
    orientation: int,
) -> None:
    """The seed recipe's path (decode straight to a reused numpy buffer, no Pillow image) must
    give exactly the pixels of Pillow's decode + exif_transpose, whatever the orientation."""
    image = Image.open(io.BytesIO(image_bytes(61, 37, seed=orientation)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    jpeg = buffer.getvalue()
    pipeline = Pipeline(
        parse_recipe({"ops": _pixel_path_recipe("RGB")}), max_pixels=1 << 20, allowed_plugins=[]
    )
    assert pipeline.recipe.ops[0].scratch is not None  # the numpy path is the one under test
    for _ in range(2):  # the second sample reuses the first one's buffers
        outcome = pipeline.process(RawSample("k", {"jpg": jpeg}, {"jpg": len(jpeg)}))
        written_png = np.asarray(png_out(outcome))
        expected = _pillow_decoded(jpeg, "RGB")
        assert written_png.shape == expected.shape
        low, high = int(expected.min()), int(expected.max())
        from shardflow.steps.images import minmax_lut

        assert np.array_equal(written_png, np.array(minmax_lut(low, high), np.uint8)[expected])


@pytest.mark.parametrize(("source", "mode"), [("L", "RGB"), ("L", None), ("RGB", None)])
def test_jpeg_numpy_path_gives_pillows_pixels_for_gray_and_colour(
    source: str, mode: str | None
) -> None:
    jpeg = image_bytes(80, 50, mode=source, quality=85)
    recipe = [{"image": {"mode": mode}} if mode else {"image": {}}, ENCODE_PNG]
    outcome = run(recipe, {"jpg": jpeg})
    assert np.array_equal(np.asarray(png_out(outcome)), _pillow_decoded(jpeg, mode or source))


def test_a_step_that_needs_pillow_gets_a_pillow_image() -> None:
    """Only steps that take numpy pixels see them: a flip after the decode keeps Pillow."""
    pipeline = Pipeline(
        parse_recipe({"ops": [{"image": {}}, {"hflip": {"p": 1.0}}, ENCODE_PNG]}),
        max_pixels=1 << 20,
        allowed_plugins=[],
    )
    assert pipeline.recipe.ops[0].scratch is None
    jpeg = image_bytes(30, 20)
    outcome = pipeline.process(RawSample("k", {"jpg": jpeg}, {"jpg": len(jpeg)}))
    assert np.array_equal(np.asarray(png_out(outcome)), _pillow_decoded(jpeg, "RGB")[:, ::-1])


def test_resize_target_comes_from_the_original_size_not_the_drafted_one() -> None:
    """514x751 decoded at half size is 257x376 (libjpeg rounds up): the target of shorter 256
    must be 256x374, as from the original, not 256x375 as from the drafted size."""
    jpeg = image_bytes(514, 751, quality=90)
    outcome = run([{"image": {}}, {"resize": {"shorter": 256}}, ENCODE_PNG], {"jpg": jpeg})
    assert png_out(outcome).size == (256, 374)
    cropped = run(
        [{"image": {}}, {"resize": {"shorter": 256}}, {"center_crop": {"size": 224}}, ENCODE_PNG],
        {"jpg": jpeg},
    )
    assert png_out(cropped).size == (224, 224)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("source_mode", ["RGB", "L"])
def test_a_drafted_jpeg_decoded_by_simplejpeg_is_what_pillow_decodes(
    orientation: int, source_mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JPEG about to be shrunk is decoded at reduced size by simplejpeg (one strict pass)
    when it is installed: the same pixels as Pillow's draft + exif_transpose."""
    pytest.importorskip("simplejpeg")
    from shardflow.steps import images

    image = Image.open(io.BytesIO(image_bytes(517, 389, seed=orientation, mode=source_mode)))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    sample = {"jpg": buffer.getvalue()}
    ops = [{"image": {"mode": "RGB"}}, {"resize": {"shorter": 100}}, ENCODE_PNG]
    direct = np.asarray(png_out(run(ops, sample)))
    monkeypatch.setattr(images, "simplejpeg", None)
    through_pillow = np.asarray(png_out(run(ops, sample)))
    assert np.array_equal(direct, through_pillow)


def test_a_jpeg_icc_profile_still_reaches_the_png() -> None:
    """The numpy decode path is for JPEGs without an ICC profile: one with a profile goes
    through Pillow, whose PNG writer keeps the profile, as before."""
    from PIL import ImageCms

    buffer = io.BytesIO()
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.open(io.BytesIO(image_bytes(40, 30))).save(buffer, "JPEG", icc_profile=profile)
    outcome = run(
        [{"image": {"mode": "RGB"}}, {"normalize": {}}, ENCODE_PNG], {"jpg": buffer.getvalue()}
    )
    assert png_out(outcome).info.get("icc_profile") == profile
