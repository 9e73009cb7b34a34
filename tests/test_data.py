"""Datasets: folders, zips, labels, splits, the sampler, and refusing bad data."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from ada.data import MAX_CLASSES, MAX_PIXELS, ImageDataset, open_dataset
from ada.dataset_tool import convert
from ada.errors import UserError
from ada.loader import InfiniteBatchSampler, split_validation, take_subset
from tests.conftest import write_images


def test_folder_dataset_is_read_recursively(tmp_path):
    write_images(tmp_path / "a", 3, 16)
    write_images(tmp_path / "a" / "b", 2, 16, seed=1)
    ds = open_dataset(str(tmp_path / "a"))
    assert ds.info.num_images == 5 and ds.resolution == 16 and ds.channels == 1
    x, c = ds[0]
    assert x.shape == (1, 16, 16) and x.dtype.is_floating_point is False and c.shape == (0,)


def test_dataset_info_hashes_the_pixels_once(image_folder, monkeypatch):
    """info fingerprints every held pixel; a run reads it at each snapshot, so it is computed once."""
    import ada.data

    ds = open_dataset(str(image_folder))
    calls = []
    sha256 = ada.data.hashlib.sha256

    def counting(*args):
        calls.append(1)
        return sha256(*args)

    monkeypatch.setattr(ada.data.hashlib, "sha256", counting)
    first = ds.info
    assert ds.info is first and ds.subset([0, 1]).info is not first
    assert len(calls) == 2  # the dataset's and its subset's, each once
    assert ds.subset(list(range(len(ds.names)))).info == first


def test_any_colour_image_makes_the_dataset_rgb(tmp_path):
    write_images(tmp_path, 2, 8, mode="L")
    write_images(tmp_path / "c", 1, 8, mode="RGB")
    assert open_dataset(str(tmp_path)).channels == 3


def test_mirror_doubles_with_flipped_copies(image_folder):
    ds = open_dataset(str(image_folder), mirror=True)
    assert len(ds) == 2 * ds.info.num_images
    n = ds.info.num_images
    np.testing.assert_array_equal(ds[n + 3][0].numpy(), ds[3][0].numpy()[:, :, ::-1])
    images, _ = ds.batch([3, n + 3])
    np.testing.assert_array_equal(images[1].numpy(), images[0].numpy()[:, :, ::-1])


def test_labels_from_dataset_json_and_cond(tmp_path):
    paths = write_images(tmp_path, 6, 8)
    labels = [[p.name, i % 3] for i, p in enumerate(paths)]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    ds = open_dataset(str(tmp_path), cond=True)
    assert ds.c_dim == 3
    _, c = ds.batch([4])
    assert c.tolist() == [[0, 1, 0]]


def test_one_hot_labels_of_the_largest_class_ids_take_no_identity_matrix(monkeypatch):
    """At the accepted maximum class id an identity matrix would be 65536^2 floats (16 GiB) per batch."""
    c_dim = MAX_CLASSES
    class_ids = np.array([0, c_dim - 1, 7, c_dim - 1], dtype=np.int64)
    ds = ImageDataset(None, ["a", "b", "c", "d"], rgb=False, resolution=8, labels=class_ids, c_dim=c_dim,
                      mirror=True, name="ids")

    def no_identity(*args, **kwargs):
        raise AssertionError("np.eye builds a c_dim x c_dim matrix")

    monkeypatch.setattr(np, "eye", no_identity)
    indices = [1, 6, 0, 3]  # 6 is the mirror of image 2
    labels = ds.labels_of(indices)
    assert labels.shape == (4, c_dim) and labels.dtype == torch.float32
    expected = torch.zeros(4, c_dim)
    expected[torch.arange(4), torch.tensor([c_dim - 1, 7, 0, c_dim - 1])] = 1
    assert torch.equal(labels, expected)
    assert all(torch.equal(labels[k], torch.from_numpy(ds.label(i))) for k, i in enumerate(indices))


def test_cond_without_labels_is_refused(image_folder):
    with pytest.raises(UserError, match="--cond needs labels"):
        open_dataset(str(image_folder), cond=True)


def test_validation_split_is_fixed_and_disjoint(image_folder):
    ds = open_dataset(str(image_folder))
    train, val = split_validation(ds, 0.25)
    assert len(val.names) == 6 and len(train.names) == 18
    assert not set(train.names) & set(val.names)
    assert split_validation(ds, 0.25)[1].names == val.names
    assert split_validation(ds, 0.0)[1] is None


def test_subset_is_seeded(image_folder):
    ds = open_dataset(str(image_folder))
    assert take_subset(ds, 5).names == take_subset(ds, 5).names
    assert len(take_subset(ds, 5).names) == 5


def test_sampler_shards_the_global_batch_by_rank():
    single = iter(InfiniteBatchSampler(10, batch=4, seed=3))
    ranks = [iter(InfiniteBatchSampler(10, batch=4, rank=r, world_size=2, seed=3)) for r in range(2)]
    for _ in range(7):  # crosses epoch boundaries
        whole = next(single)
        assert next(ranks[0]) + next(ranks[1]) == whole
    # One epoch visits every image once.
    first = [i for _ in range(5) for i in next(iter([next(single)]))]
    assert len(first) == 20


def test_sampler_resumes_mid_stream():
    full = iter(InfiniteBatchSampler(7, batch=3, seed=1))
    batches = [next(full) for _ in range(5)]
    resumed = iter(InfiniteBatchSampler(7, batch=3, seed=1, start_batch=3))
    assert next(resumed) == batches[3]


def test_zip_dataset_and_dataset_tool(tmp_path):
    write_images(tmp_path / "src", 5, (40, 30), mode="RGB")
    out = convert(str(tmp_path / "src"), str(tmp_path / "data.zip"), 16)
    with zipfile.ZipFile(out) as zf:
        assert "00000/img00000000.png" in zf.namelist()
    ds = open_dataset(str(out))
    assert (ds.info.num_images, ds.resolution, ds.channels) == (5, 16, 3)


# ----- bad input -----


def test_missing_path(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        open_dataset(str(tmp_path / "nope"))


def test_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no images found"):
        open_dataset(str(tmp_path))


def test_corrupt_image_is_named(image_folder):
    (image_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="broken.png"):
        open_dataset(str(image_folder))


def test_truncated_image_is_named(image_folder):
    data = (image_folder / "img0000.png").read_bytes()
    (image_folder / "img0000.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="img0000.png"):
        open_dataset(str(image_folder))


def test_mixed_sizes(tmp_path):
    write_images(tmp_path, 2, 16)
    write_images(tmp_path / "x", 1, 32)
    with pytest.raises(UserError, match="all images must share one size"):
        open_dataset(str(tmp_path))


def test_non_square(tmp_path):
    write_images(tmp_path, 2, (16, 8))
    with pytest.raises(UserError, match="not square"):
        open_dataset(str(tmp_path))


def test_non_power_of_two(tmp_path):
    write_images(tmp_path, 2, 24)
    with pytest.raises(UserError, match="power of two"):
        open_dataset(str(tmp_path))


def test_zip_with_parent_entries_is_refused(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../outside.png", b"x")
    with pytest.raises(UserError, match="unsafe zip entry"):
        open_dataset(str(path))


def test_zip_with_absolute_entries_is_refused(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("/etc/x.png", b"x")
    with pytest.raises(UserError, match="unsafe zip entry"):
        open_dataset(str(path))


def test_symlinks_out_of_the_folder_are_not_followed(tmp_path):
    write_images(tmp_path / "data", 3, 16)
    write_images(tmp_path / "outside", 1, 32)
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "outside" / "img0000.png")
    (tmp_path / "data" / "linkdir").symlink_to(tmp_path / "outside", target_is_directory=True)
    ds = open_dataset(str(tmp_path / "data"))  # the 32 px file would be a size mismatch if it were read
    assert ds.info.num_images == 3


def test_huge_images_are_refused_before_decoding(tmp_path, monkeypatch):
    write_images(tmp_path, 1, 64)
    monkeypatch.setattr("ada.data.MAX_PIXELS", 64 * 64 - 1)
    with pytest.raises(UserError, match="megapixel limit"):
        open_dataset(str(tmp_path))
    assert MAX_PIXELS >= 1024 * 1024


def test_bad_dataset_json(image_folder):
    (image_folder / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        open_dataset(str(image_folder), cond=True)


def test_lazy_mode_reads_the_same_pixels(image_folder):
    held = open_dataset(str(image_folder))
    lazy = open_dataset(str(image_folder), cache_bytes=0)
    assert lazy.images is None
    np.testing.assert_array_equal(held.batch([1, 2])[0].numpy(), lazy.batch([1, 2])[0].numpy())
    img = Image.open(image_folder / "img0001.png")
    np.testing.assert_array_equal(held[1][0].numpy()[0], np.asarray(img))
