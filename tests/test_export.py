import json
import zipfile

import cv2
import imageio.v3 as iio
import numpy as np
import pytest

from sdm import export


def _uint8_frames(n, h=20, w=30):
    # distinct frames (a GIF merges identical consecutive frames)
    frames = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, : (i + 1) * w // n] = (255, 0, 0) if i % 2 else (0, 0, 255)
        frames.append(f)
    return frames


def test_gif_roundtrip_uint8(tmp_path):
    path = export.write_gif(_uint8_frames(6), tmp_path / "a.gif", fps=5)
    back = iio.imread(path, index=None)
    assert back.shape[0] == 6 and back.shape[1:3] == (20, 30)
    assert iio.immeta(path, index=0).get("loop") == 0


def test_gif_accepts_float_chw(tmp_path):
    frames = [np.full((1, 12, 16), i / 3.0, np.float32) for i in range(4)]
    back = iio.imread(export.write_gif(frames, tmp_path / "b.gif"), index=None)
    assert back.shape[:3] == (4, 12, 16)


def test_mp4_roundtrip_and_even_padding(tmp_path):
    frames = [np.full((3, 33, 47), i / 7.0, np.float32) for i in range(8)]    # odd size
    path = export.write_mp4(frames, tmp_path / "v.mp4", fps=10)
    cap = cv2.VideoCapture(path)
    n, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape
    cap.release()
    assert n == 8 and shape == (34, 48, 3)


def test_png_roundtrip(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    back = iio.imread(export.write_png(img, tmp_path / "x.png"))
    np.testing.assert_array_equal(back[..., :3], img)
    gray = iio.imread(export.write_png(np.ones((1, 5, 4)), tmp_path / "g.png"))
    assert gray.shape[:2] == (5, 4) and (gray == 255).all()


@pytest.mark.parametrize("bad", [[], [np.zeros((4, 4, 4), np.uint8)], [np.zeros((2, 5, 5, 5))]])
def test_bad_frames_raise_value_error(tmp_path, bad):
    with pytest.raises(ValueError):
        export.write_gif(bad, tmp_path / "x.gif")
    with pytest.raises(ValueError):
        export.write_mp4(bad, tmp_path / "x.mp4")


def test_mismatched_frame_sizes_raise(tmp_path):
    with pytest.raises(ValueError, match="same size"):
        export.write_gif([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)], tmp_path / "x.gif")


def test_npz_roundtrip_without_pickle(tmp_path):
    records = {
        "down.0.res.0.conv1/spikes": np.random.default_rng(1).random((3, 4, 2, 8)) < 0.3,
        "down.0.res.0.conv1.v": np.arange(24, dtype=np.float16).reshape(4, 6),
        "x0": np.linspace(-1, 1, 12).reshape(1, 3, 2, 2),
    }
    meta = {"model": "lif", "T": np.int64(4), "steps": [999, 500, 0], "threshold_scale": 1.25}
    path = export.save_npz(tmp_path / "run.data", records, meta)
    assert path.endswith("run.data")                       # written exactly where asked
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["metadata"]))["T"] == 4
    rec, md = export.load_npz(path)
    assert set(rec) == set(records)
    for k, v in records.items():
        assert rec[k].dtype == v.dtype
        np.testing.assert_array_equal(rec[k], v)
    assert md == {"model": "lif", "T": 4, "steps": [999, 500, 0], "threshold_scale": 1.25}
    with zipfile.ZipFile(path) as zf:                     # plain .npy members, no pickle protocol
        assert all(n.endswith(".npy") for n in zf.namelist())


def test_npz_refuses_objects_and_reserved_names(tmp_path):
    with pytest.raises(ValueError, match="pickle"):
        export.save_npz(tmp_path / "a.npz", {"x": np.array([{"a": 1}], dtype=object)}, {})
    with pytest.raises(ValueError, match="reserved"):
        export.save_npz(tmp_path / "a.npz", {"metadata": np.zeros(2)}, {})
    with pytest.raises(ValueError, match="JSON"):
        export.save_npz(tmp_path / "a.npz", {"x": np.zeros(2)}, {"bad": object()})
