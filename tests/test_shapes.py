"""The embedded shapes set: every label can be seen (shapes apart, colours that stand out), deterministically;
its instance masks are the visible pixels of each drawn shape, and the records hold them."""

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
        _, boxes, classes, *_ = _draw_image(rng, SIZE)
        counts.append(len(boxes))
        assert len(classes) == len(boxes) and set(classes) <= {1, 2, 3}
        for a, b in itertools.permutations(_pixel_boxes(boxes), 2):
            assert _covered_share(a, b) <= _MAX_COVERED + 1e-9
    assert min(counts) == 1 and max(counts) == 4 and 2.2 < np.mean(counts) < 2.8  # placement rarely gives up


def test_the_last_drawn_shape_stands_out_from_the_background():
    """Nothing is drawn over the last shape: its centre shows its fill, against the noisy background."""
    rng = np.random.default_rng(8)
    for _ in range(100):
        pixels, boxes, classes, *_ = _draw_image(rng, SIZE)
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
        assert np.array_equal(a.pixels, b.pixels) and a.boxes == b.boxes and a.classes == b.classes
        assert np.array_equal(a.masks, b.masks)


def test_masks_are_the_visible_pixels_of_each_drawn_shape():
    """A mask pixel shows its shape's fill; masks never overlap (a later shape takes its pixels from the
    earlier ones); a mask lies inside its box; and every pixel of the box in the shape's fill that no later
    shape covers is in the mask (an uncovered rectangle is its whole box)."""
    rng = np.random.default_rng(9)
    covered_somewhere = 0
    for _ in range(100):
        drawn = _draw_image(rng, SIZE)
        assert drawn.masks.shape == (len(drawn.boxes), SIZE, SIZE) and drawn.masks.dtype == np.uint8
        assert set(np.unique(drawn.masks)) <= {0, 1}
        assert drawn.masks.sum(axis=0).max() <= 1  # no pixel in two masks
        for index, (mask, colour, box) in enumerate(zip(drawn.masks, drawn.colours, _pixel_boxes(drawn.boxes))):
            visible = mask.astype(bool)
            assert visible.sum() > 0
            assert (drawn.pixels[visible] == colour).all()  # every mask pixel is the shape's own fill
            ys, xs = np.nonzero(visible)
            x0, y0, x1, y1 = box
            assert x0 <= xs.min() and xs.max() <= x1 and y0 <= ys.min() and ys.max() <= y1
            later = drawn.masks[index + 1:].sum(axis=0) > 0 if index + 1 < len(drawn.masks) else np.zeros_like(visible)
            in_box = np.zeros_like(visible)
            in_box[int(y0):int(y1) + 1, int(x0):int(x1) + 1] = True
            # the fill inside the box, outside later shapes: this shape (noise never lands exactly on the fill
            # in all three channels here; a mismatch would show a mask missing pixels of its shape)
            painted = in_box & ~later & (drawn.pixels == colour).all(axis=-1)
            assert np.array_equal(painted, visible), (index, int((painted ^ visible).sum()))
            if drawn.classes[index] == 1 and not later[in_box].any():
                assert visible.sum() == in_box.sum()
            covered_somewhere += int((later & in_box).any() and drawn.classes[index] == 1)
    assert covered_somewhere > 0  # the set does draw over earlier shapes, so removal was exercised


def test_records_hold_one_png_mask_per_box_as_drawn(tmp_path):
    """The TFRecords decode, through Model Garden's decoder, to the masks the generator drew."""
    import tensorflow as tf
    from official.vision.dataloaders import tf_example_decoder

    from tfodtrain.data.shapes import ensure_shapes_dataset

    size = 64
    paths = ensure_shapes_dataset(tmp_path, num_train=4, num_val=2, image_size=size, seed=5)
    decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
    rng = np.random.default_rng(5 * 2 + 2)  # the validation stream of seed 5
    records = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(paths.val_pattern)))
    decoded = {int(d["source_id"]): d for d in (decoder.decode(r) for r in records)}
    for index in range(2):
        drawn = _draw_image(rng, size)
        record = decoded[4 + 1 + index]
        masks = record["groundtruth_instance_masks"].numpy()
        assert masks.shape == drawn.masks.shape
        assert np.array_equal(masks.astype(np.uint8), drawn.masks)
        assert record["groundtruth_boxes"].shape[0] == len(drawn.boxes)
