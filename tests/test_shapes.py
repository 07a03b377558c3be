"""The embedded shapes set: every label can be seen (shapes apart, colours that stand out), deterministically."""

from __future__ import annotations

import itertools

import numpy as np

from tfodtrain.data.shapes import _MAX_COVERED, _covered_share, _draw_image

SIZE = 320


def _pixel_boxes(boxes):
    return [(x0 * SIZE, y0 * SIZE, x1 * SIZE, y1 * SIZE) for y0, x0, y1, x1 in boxes]


def test_images_hold_one_to_four_shapes_none_hidden_under_another():
    rng = np.random.default_rng(7)
    counts = []
    for _ in range(200):
        _, boxes, classes = _draw_image(rng, SIZE)
        counts.append(len(boxes))
        assert len(classes) == len(boxes) and set(classes) <= {1, 2, 3}
        for a, b in itertools.permutations(_pixel_boxes(boxes), 2):
            assert _covered_share(a, b) <= _MAX_COVERED + 1e-9
    assert min(counts) == 1 and max(counts) == 4 and 2.2 < np.mean(counts) < 2.8  # placement rarely gives up


def test_the_last_drawn_shape_stands_out_from_the_background():
    """Nothing is drawn over the last shape: its centre shows its fill, against the noisy background."""
    rng = np.random.default_rng(8)
    for _ in range(100):
        pixels, boxes, classes = _draw_image(rng, SIZE)
        outside = np.ones((SIZE, SIZE), bool)
        for x0, y0, x1, y1 in _pixel_boxes(boxes):
            outside[int(y0):int(np.ceil(y1)) + 1, int(x0):int(np.ceil(x1)) + 1] = False
        background = np.median(pixels[outside], axis=0)
        x0, y0, x1, y1 = _pixel_boxes(boxes)[-1]
        centre_y = int(y0 + (y1 - y0) * (0.66 if classes[-1] == 3 else 0.5))  # a triangle's body is low in its box
        centre_x = int((x0 + x1) / 2)
        fill = pixels[centre_y - 2:centre_y + 3, centre_x - 2:centre_x + 3].reshape(-1, 3).mean(axis=0)
        assert np.abs(fill - background).max() >= 48, (fill, background)  # drawn >= 64 apart; the noise median sits near the base


def test_the_same_seed_draws_the_same_images():
    first, second = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(5):
        a, b = _draw_image(first, SIZE), _draw_image(second, SIZE)
        assert np.array_equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
