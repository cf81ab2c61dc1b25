import numpy as np
import pytest

from sdm import imaging


def test_to_display_maps_model_space_and_clips():
    x = np.array([[[-1.0, 0.0, 1.0, 3.0]]])
    np.testing.assert_allclose(imaging.to_display(x), [[[0.0, 0.5, 1.0, 1.0]]])
    np.testing.assert_allclose(imaging.to_display(np.array([-0.5, 0.25, 2.0]), from_model_space=False),
                               [0.0, 0.25, 1.0])


@pytest.mark.parametrize("channels", [1, 3])
def test_upscale_is_exact_nearest_neighbour(channels):
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, size=(channels, 5, 7))
    img = levels / 255.0
    s = 3
    out = imaging.upscale(img, s)
    assert out.dtype == np.uint8 and out.shape == (5 * s, 7 * s, 3)
    for y in range(5):
        for x in range(7):
            block = out[y * s:(y + 1) * s, x * s:(x + 1) * s]
            expected = levels[:, y, x] if channels == 3 else np.repeat(levels[0, y, x], 3)
            assert (block == expected).all()


def test_upscale_rejects_bad_input():
    with pytest.raises(ValueError):
        imaging.upscale(np.zeros((4, 5, 5)), 2)
    with pytest.raises(ValueError):
        imaging.upscale(np.zeros((1, 5, 5)), 0)


def test_image_grid_shape_and_padding():
    imgs = np.zeros((5, 1, 4, 6))
    g = imaging.image_grid(imgs, pad=1, scale=2)            # ceil(sqrt(5)) = 3 per row -> 2 rows
    assert g.dtype == np.uint8
    assert g.shape == (2 * (8 + 1) + 1, 3 * (12 + 1) + 1, 3)
    assert (g[0] == 255).all() and (g[1:9, 1:13] == 0).all()
    assert (g[10:18, 27:39] == 255).all()                 # unused cell filled with pad colour
    assert imaging.image_grid(imgs, nrow=5, pad=0).shape == (4, 30, 3)


def test_filmstrip_includes_first_and_last():
    frames = [np.full((1, 2, 2), i / 29.0) for i in range(30)]
    assert imaging.pick_frames(30, 10)[0] == 0 and imaging.pick_frames(30, 10)[-1] == 29
    assert len(imaging.pick_frames(30, 10)) == 10 and imaging.pick_frames(3, 10) == [0, 1, 2]
    strip = imaging.filmstrip(frames, max_frames=10, scale=2, pad=2)
    assert strip.shape == (2 * 2 + 4, 10 * (4 + 2) + 2, 3)
    first = strip[2:6, 2:6]
    last = strip[2:6, -6:-2]
    assert (first == 0).all() and (last == 255).all()


def test_diff_to_rgb_is_white_at_zero_and_saturates():
    d = np.array([[[[0.0, 0.25, 0.5, 2.0, -0.5]]]])                        # [1, 1, 1, 5]
    rgb = imaging.diff_to_rgb(d, 0.5)
    assert rgb.shape == (1, 3, 1, 5) and rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_allclose(rgb[0, :, 0, 0], [1, 1, 1])
    np.testing.assert_allclose(rgb[0, :, 0, 2], np.array([0xD5, 0x5E, 0x00]) / 255, atol=1e-6)   # +limit: orange
    np.testing.assert_allclose(rgb[0, :, 0, 3], rgb[0, :, 0, 2])                                  # saturated
    np.testing.assert_allclose(rgb[0, :, 0, 4], np.array([0x00, 0x72, 0xB2]) / 255, atol=1e-6)   # -limit: blue
    np.testing.assert_allclose(rgb[0, :, 0, 1], (1 + rgb[0, :, 0, 2]) / 2, atol=1e-6)            # half way
    with pytest.raises(ValueError):
        imaging.diff_to_rgb(d, 0)


def test_filmstrip_captions_and_empty_cells():
    frames = [np.full((1, 2, 2), 0.0), np.full((1, 2, 2), 1.0), None]
    plain = imaging.filmstrip(frames, scale=2, pad=2)
    assert plain.shape == (2 * 2 + 4, 3 * (4 + 2) + 2, 3)
    assert (plain[2:6, -6:-2] == round(0.93 * 255)).all()                 # the missing frame: a gray cell
    cap = imaging.filmstrip(frames, scale=2, pad=2, captions=["a", "b", "c"])
    assert cap.shape[0] > plain.shape[0] and np.array_equal(cap[:plain.shape[0]], plain)
    assert (cap[plain.shape[0]:] < 128).any()                             # some dark caption pixels
    with pytest.raises(ValueError, match="captions"):
        imaging.filmstrip(frames, captions=["a"])
    with pytest.raises(ValueError, match="None"):
        imaging.filmstrip([None, None])
