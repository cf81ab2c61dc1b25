import imageio.v3 as iio
import numpy as np

from sdm.sample import main as sample_main


def run(tmp_path, fixtures_dir, name, *extra):
    out = tmp_path / name
    rc = sample_main(["--checkpoint", str(fixtures_dir / "tiny-sdm"), "--n", "4", "--steps", "3", "--out", str(out), *extra])
    return rc, out


def test_npy_png_gif(tmp_path, fixtures_dir, capsys):
    rc, npy = run(tmp_path, fixtures_dir, "a.npy")
    assert rc == 0
    a = np.load(npy)
    assert a.shape == (4, 1, 28, 28) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    rc, png = run(tmp_path, fixtures_dir, "a.png", "--scale", "1")
    img = iio.imread(png)
    assert rc == 0 and img.shape[0] >= 56 and img.shape[1] >= 56
    rc, gif = run(tmp_path, fixtures_dir, "a.gif")
    frames = iio.imread(gif, index=None)
    assert rc == 0 and 2 <= frames.shape[0] <= 3


def test_same_seed_same_npy(tmp_path, fixtures_dir):
    _, a = run(tmp_path, fixtures_dir, "a.npy", "--seed", "3")
    _, b = run(tmp_path, fixtures_dir, "b.npy", "--seed", "3")
    assert np.array_equal(np.load(a), np.load(b))


def test_progress_bar_and_errors(tmp_path, fixtures_dir, capsys):
    run(tmp_path, fixtures_dir, "a.npy")
    assert "sampling" in capsys.readouterr().err
    rc, _ = run(tmp_path, fixtures_dir, "a.jpg")
    assert rc == 2 and ".npy, .png or .gif" in capsys.readouterr().err
    rc = sample_main(["--checkpoint", "nope", "--out", str(tmp_path / "x.npy")])
    assert rc == 2 and "available" in capsys.readouterr().err
