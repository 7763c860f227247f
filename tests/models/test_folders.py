"""Folders of your own images and the held-out split (models/folders.py)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import DataFormatError
from models.folders import holdout_split, image_files, load_image_folder


def _write(path: Path, array: np.ndarray, **save: object) -> Path:
    """An (H, W) or (H, W, C) uint8 array as the image file ``path`` (format by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return path


def _rgb(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _gray(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


# Modes -------------------------------------------------------------------------------------


def test_rgb_pngs_load_as_uint8_n_3_h_w_sorted_by_path(tmp_path):
    arrays = {name: _rgb(i) for i, name in enumerate(["b.png", "a.png", "c.png"])}
    for name, array in arrays.items():
        _write(tmp_path / name, array)
    folder = load_image_folder(tmp_path, channels=3, image_size=8)
    assert folder.images.dtype == torch.uint8 and folder.images.shape == (3, 3, 8, 8)
    assert [p.name for p in folder.paths] == ["a.png", "b.png", "c.png"]
    for image, path in zip(folder.images, folder.paths, strict=True):
        assert torch.equal(image, torch.from_numpy(arrays[path.name]).permute(2, 0, 1))


def test_grayscale_pngs_load_as_one_channel(tmp_path):
    _write(tmp_path / "g.png", _gray(0))
    folder = load_image_folder(tmp_path, channels=1, image_size=8)
    assert folder.images.shape == (1, 1, 8, 8)
    assert torch.equal(folder.images[0, 0], torch.from_numpy(_gray(0)))


def test_gray_images_are_repeated_in_three_channels_for_an_rgb_config(tmp_path):
    _write(tmp_path / "g.png", _gray(0))
    image = load_image_folder(tmp_path, channels=3, image_size=8).images[0]  # (3, 8, 8)
    for channel in image:
        assert torch.equal(channel, torch.from_numpy(_gray(0)))


def test_colour_images_become_itu_601_luminance_for_a_grayscale_config(tmp_path):
    rgb = _rgb(0)
    _write(tmp_path / "c.png", rgb)
    gray = load_image_folder(tmp_path, channels=1, image_size=8).images[0, 0].numpy()
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    luminance = (299 * r + 587 * g + 114 * b) / 1000  # ITU-R 601-2, Pillow's "L"
    assert np.abs(gray - luminance).max() <= 1.0


def test_alpha_is_dropped_not_blended(tmp_path):
    rgba = np.concatenate([_rgb(0), np.zeros((8, 8, 1), np.uint8)], axis=-1)  # transparent
    _write(tmp_path / "a.png", rgba)
    image = load_image_folder(tmp_path, channels=3, image_size=8).images[0]
    assert torch.equal(image, torch.from_numpy(_rgb(0)).permute(2, 0, 1))


def test_palette_pngs_load_as_their_colours(tmp_path):
    rgb = _rgb(0)
    Image.fromarray(rgb).quantize(16).save(tmp_path / "p.png")
    expected = np.array(Image.open(tmp_path / "p.png").convert("RGB"))
    image = load_image_folder(tmp_path, channels=3, image_size=8).images[0]
    assert torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1))


def test_sixteen_bit_grayscale_keeps_its_high_byte_instead_of_clipping(tmp_path):
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    _write(tmp_path / "deep.png", wide)
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    gray = load_image_folder(tmp_path, channels=1, image_size=8).images[0, 0]
    assert torch.equal(gray, torch.from_numpy((wide >> 8).astype(np.uint8)))


def test_jpegs_of_either_suffix_are_read(tmp_path):
    first = _write(tmp_path / "one.jpg", _rgb(0))
    _write(tmp_path / "two.JPEG", _rgb(1))
    folder = load_image_folder(tmp_path, channels=3, image_size=8)
    assert [p.name for p in folder.paths] == ["one.jpg", "two.JPEG"]
    decoded = np.array(Image.open(first).convert("RGB"))  # lossy: what the decoder gives
    assert torch.equal(folder.images[0], torch.from_numpy(decoded).permute(2, 0, 1))


def test_a_camera_jpeg_is_read_upright_by_its_exif_orientation(tmp_path):
    tall = np.zeros((8, 4, 3), np.uint8)
    tall[:, :2] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    _write(tmp_path / "photo.jpg", tall, exif=exif, quality=100)
    folder = load_image_folder(tmp_path, channels=1, image_size=8, resize=True)
    upright = folder.images[0, 0].float()  # (8, 8): the white half is now on top
    assert upright[:3].mean() > 200 and upright[-3:].mean() < 50


def test_channels_other_than_one_or_three_are_refused(tmp_path):
    _write(tmp_path / "a.png", _rgb(0))
    with pytest.raises(ValueError, match="channels must be 1"):
        load_image_folder(tmp_path, channels=4, image_size=8)


# Sizes -------------------------------------------------------------------------------------


def test_a_mis_sized_file_is_named_with_both_sizes(tmp_path):
    _write(tmp_path / "good.png", _rgb(0))
    _write(tmp_path / "wide.png", np.zeros((8, 12, 3), np.uint8))
    with pytest.raises(DataFormatError) as raised:
        load_image_folder(tmp_path, channels=3, image_size=8)
    message = str(raised.value)
    assert f"{tmp_path / 'wide.png'}: 12x8, expected 8x8" in message
    assert "--resize" in message and "good.png" not in message
    assert message.startswith("1 of 2 files")


def test_resize_makes_every_image_the_configured_size_bilinearly(tmp_path):
    big = np.kron(_gray(0, 4), np.ones((4, 4), np.uint8))  # 16x16 of 4x4 blocks
    _write(tmp_path / "big.png", big)
    _write(tmp_path / "small.png", _gray(1, 4))
    _write(tmp_path / "exact.png", _gray(2))
    folder = load_image_folder(tmp_path, channels=1, image_size=8, resize=True)
    assert folder.images.shape == (3, 1, 8, 8)
    expected = Image.fromarray(big).resize((8, 8), Image.Resampling.BILINEAR)
    assert torch.equal(folder.images[0, 0], torch.from_numpy(np.array(expected)))
    assert torch.equal(folder.images[1, 0], torch.from_numpy(_gray(2)))  # untouched


def test_resize_converts_the_mode_before_resampling(tmp_path):
    _write(tmp_path / "c.png", _rgb(0, 16))
    folder = load_image_folder(tmp_path, channels=1, image_size=8, resize=True)
    luminance = Image.fromarray(_rgb(0, 16)).convert("L")
    expected = np.array(luminance.resize((8, 8), Image.Resampling.BILINEAR))
    assert torch.equal(folder.images[0, 0], torch.from_numpy(expected))


# Unreadable files --------------------------------------------------------------------------


def test_corrupt_and_truncated_files_are_all_named_in_one_error(tmp_path):
    _write(tmp_path / "good.png", _rgb(0))
    (tmp_path / "text.png").write_text("not an image at all")
    whole = _write(tmp_path / "whole.png", _rgb(1)).read_bytes()
    (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
    jpeg = _write(tmp_path / "whole.jpg", _rgb(2)).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "empty.jpeg").write_bytes(b"")
    (tmp_path / "whole.jpg").unlink()
    with pytest.raises(DataFormatError) as raised:
        load_image_folder(tmp_path, channels=3, image_size=8)
    message = str(raised.value)
    assert message.startswith(f"4 of 6 files in {tmp_path}")
    for name in ("text.png", "truncated.png", "truncated.jpg", "empty.jpeg"):
        assert f"{tmp_path / name}: not a readable image" in message
    assert "good.png" not in message and "whole.png" not in message


def test_more_than_ten_problems_name_ten_and_count_the_rest(tmp_path):
    for i in range(13):
        (tmp_path / f"bad{i:02d}.png").write_bytes(b"\x89PNG broken")
    _write(tmp_path / "wide.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataFormatError) as raised:
        load_image_folder(tmp_path, channels=1, image_size=8)
    message = str(raised.value)
    assert message.startswith("14 of 14 files")
    assert message.endswith("; and 4 more")
    assert len(re.findall(r"bad\d\d\.png: not a readable image", message)) == 10
    assert "bad10.png" not in message and "wide.png" not in message


def test_an_empty_folder_or_one_without_images_is_an_error_naming_it(tmp_path):
    with pytest.raises(DataFormatError, match=f"{re.escape(str(tmp_path))}: holds no PNG"):
        load_image_folder(tmp_path, channels=1, image_size=8)
    (tmp_path / "notes.txt").write_text("hello")
    _write(tmp_path / "picture.gif", _gray(0))
    with pytest.raises(DataFormatError, match="holds no PNG or JPEG"):
        load_image_folder(tmp_path, channels=1, image_size=8)


def test_a_missing_folder_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_image_folder(tmp_path / "absent", channels=1, image_size=8)
    _write(tmp_path / "file.png", _gray(0))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        load_image_folder(tmp_path / "file.png", channels=1, image_size=8)


# Which files -------------------------------------------------------------------------------


def test_images_in_subfolders_at_any_depth_are_found(tmp_path):
    _write(tmp_path / "top.png", _gray(0))
    _write(tmp_path / "a" / "mid.png", _gray(1))
    _write(tmp_path / "a" / "b" / "c" / "deep.jpg", _gray(2))
    folder = load_image_folder(tmp_path, channels=1, image_size=8)
    relative = [p.relative_to(tmp_path).as_posix() for p in folder.paths]
    assert relative == ["a/b/c/deep.jpg", "a/mid.png", "top.png"]
    assert torch.equal(folder.images[1, 0], torch.from_numpy(_gray(1)))


def test_hidden_files_and_folders_and_other_suffixes_are_left_out(tmp_path):
    _write(tmp_path / "seen.png", _gray(0))
    (tmp_path / ".DS_Store.png").write_bytes(b"junk")  # would be unreadable if read
    (tmp_path / ".thumbnails").mkdir()
    (tmp_path / ".thumbnails" / "seen.png").write_bytes(b"junk")
    (tmp_path / "sub" / ".cache").mkdir(parents=True)
    (tmp_path / "sub" / ".cache" / "x.png").write_bytes(b"junk")
    (tmp_path / "readme.md").write_text("not an image")
    (tmp_path / "folder.png").mkdir()  # a directory named like an image
    assert image_files(tmp_path) == [tmp_path / "seen.png"]
    assert load_image_folder(tmp_path, channels=1, image_size=8).paths == (tmp_path / "seen.png",)


def test_a_hidden_folder_given_as_the_root_is_read(tmp_path):
    root = tmp_path / ".data"
    _write(root / "a.png", _gray(0))
    assert load_image_folder(root, channels=1, image_size=8).images.shape == (1, 1, 8, 8)


def test_subset_keeps_images_and_paths_together(tmp_path):
    for i in range(4):
        _write(tmp_path / f"{i}.png", _gray(i))
    folder = load_image_folder(tmp_path, channels=1, image_size=8)
    part = folder.subset(torch.tensor([3, 1]))
    assert [p.name for p in part.paths] == ["3.png", "1.png"]
    assert torch.equal(part.images, folder.images[[3, 1]])


# The held-out split ------------------------------------------------------------------------


def test_holdout_split_is_disjoint_covers_everything_and_is_sorted():
    kept, held = holdout_split(100, 0.1, seed=3)
    assert len(held) == 10 and len(kept) == 90
    assert sorted(kept.tolist() + held.tolist()) == list(range(100))
    assert torch.equal(kept, kept.sort().values) and torch.equal(held, held.sort().values)


def test_holdout_split_is_determined_by_the_seed():
    first, again = holdout_split(50, 0.2, 7), holdout_split(50, 0.2, 7)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(holdout_split(50, 0.2, 7)[1], holdout_split(50, 0.2, 8)[1])


def test_holdout_split_does_not_touch_the_global_random_state():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    holdout_split(20, 0.5, seed=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("n", "fraction", "held"),
    [(10, 0.0, 0), (5, 0.01, 1), (2, 0.9, 1), (1, 0.5, 0), (0, 0.5, 0), (40, 0.25, 10)],
)
def test_holdout_split_holds_out_at_least_one_and_keeps_at_least_one(n, fraction, held):
    kept, held_out = holdout_split(n, fraction, seed=0)
    assert len(held_out) == held and len(kept) == n - held


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_holdout_split_refuses_a_fraction_outside_zero_to_one(fraction):
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        holdout_split(10, fraction)
