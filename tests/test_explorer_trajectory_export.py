"""sdm.explorer.trajectory_export: a trajectory as GIF, MP4, PNG and NPZ that read back."""
from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from conftest import FIXTURES
from sdm.explorer import ModelRegistry, Session, trajectory_export
from sdm.export import load_npz

LAYER = "down.0.blocks.0.conv1.act"


def test_files_read_back_and_close_deletes_them():
    sess = Session()
    sess.start(ModelRegistry(FIXTURES).get("tiny-sdm"), "tiny-sdm", seed=4, num_steps=5, grid=4)
    sess.advance(2, 1.0)
    frames = trajectory_export.export_frames(sess)
    assert len(frames) == 4 and all(f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) == 4                   # the progress bar differs
    paths = trajectory_export.export(sess)
    assert iio.imread(paths["gif"], index=None).shape[0] == 4
    rec, meta = load_npz(paths["npz"])
    assert rec["x_t"].shape == (3, 4, 1, 28, 28) and rec[f"spikes/{LAYER}"].shape == (3, 4, 64)
    assert meta["steps_recorded"] == 3 and meta["seed"] == 4 and meta["frames"] == 4
    folder = sess.export_dir
    assert folder and all(str(p).startswith(folder) for p in paths.values())
    again = trajectory_export.export(sess)                         # the folder is emptied, not grown
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(Path(p).name for p in again.values())
    sess.close()
    assert not os.path.exists(folder)


def test_gif_and_mp4_hold_the_final_frame_before_they_loop(tmp_path):
    import cv2
    from PIL import Image

    sess = Session()
    sess.start(ModelRegistry(FIXTURES).get("tiny-sdm"), "tiny-sdm", seed=4, num_steps=3)
    paths = trajectory_export.export(sess, out_dir=tmp_path, fps=10.0)
    with Image.open(paths["gif"]) as im:
        durations = []
        for i in range(im.n_frames):
            im.seek(i)
            durations.append(im.info["duration"])
    assert len(durations) == 2                                          # x_t of the step, then the sample
    assert durations[0] == 100 and durations[-1] == 100 + 1000 * trajectory_export.HOLD_LAST_S
    cap = cv2.VideoCapture(paths["mp4"])
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    assert count == 2 + round(trajectory_export.HOLD_LAST_S * 10)        # the last frame repeated for 1.5 s
