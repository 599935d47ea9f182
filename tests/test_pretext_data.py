"""Pretext-task views and their labels, the permutation set, Lab colour and the ab bins."""
import itertools

import numpy as np
import tensorflow as tf

from ssl_tf.data import color, ops, patches, views

CFG = views.AugmentConfig(image_size=16, patch_size=8, num_copies=3)


def _image(seed=0, side=24):
    return np.random.default_rng(seed).integers(0, 256, [side, side, 3]).astype(np.uint8)


def test_rotation_views_carry_their_rotation():
    """Copy r of the RotNet batch is copy 0 rotated by r × 90° counter-clockwise (its label r)."""
    out = views.views_for("rotations", CFG)(_image(), tf.constant([1, 2], tf.int64)).numpy()
    assert out.shape == (4, 16, 16, 3)
    for r in range(4):
        np.testing.assert_array_equal(out[r], np.rot90(out[0], r))
    assert not np.allclose(out[0], out[1])


def _cell_coded_image(cell, grid=3):
    """An image whose cell i (row-major) is filled with the value i / 10."""
    img = np.zeros([grid * cell, grid * cell, 3], np.float32)
    for i in range(grid * grid):
        img[(i // grid) * cell:(i // grid + 1) * cell, (i % grid) * cell:(i % grid + 1) * cell] = i / 10
    return img


def test_grid_patches_come_from_their_cells_with_a_random_gap():
    cell = patches.cell_size(8)
    img = _cell_coded_image(cell)
    a = patches.grid_patches(tf.constant(img), tf.constant([0, 1], tf.int64), 8).numpy()
    patches.grid_patches(tf.constant(img), tf.constant([0, 2], tf.int64), 8).numpy()
    assert a.shape == (9, 8, 8, 3)
    for i in range(9):   # every patch lies entirely inside its own cell, whatever the jitter
        np.testing.assert_allclose(a[i], i / 10, atol=1e-6)
    ramp = np.tile(np.arange(3 * cell, dtype=np.float32)[None, :, None], [3 * cell, 1, 3]) / (3 * cell)
    pa = patches.grid_patches(tf.constant(ramp), tf.constant([0, 1], tf.int64), 8).numpy()
    pb = patches.grid_patches(tf.constant(ramp), tf.constant([0, 2], tf.int64), 8).numpy()
    assert not np.allclose(pa, pb)   # the offsets inside the cells are random


def _find(patch, image):
    """(y, x) where ``patch`` sits exactly in ``image``, or None."""
    p = patch.shape[0]
    for y in range(image.shape[0] - p + 1):
        for x in range(image.shape[1] - p + 1):
            if np.allclose(image[y:y + p, x:x + p], patch, atol=1e-6):
                return y, x
    return None


def test_grid_of_a_small_image_is_cut_from_it_enlarged_by_an_integer_factor():
    """A 32 px image and 16 px patches need a 63 px grid: the patches come from the image enlarged 2×
    (never resized to 63, whose drifting interpolation phase would tell a patch its cell), in row-major
    cells of one random 63 px square."""
    img = np.random.default_rng(0).random([32, 32, 3]).astype(np.float32)
    big = patches.integer_upscale(tf.constant(img), 63).numpy()
    assert big.shape == (64, 64, 3)
    np.testing.assert_allclose(big, np.clip(tf.image.resize(img, [64, 64], method="bicubic"), 0, 1), atol=1e-6)
    cell = patches.cell_size(16)
    corners = set()
    for seed in range(4):
        tiles = patches.grid_patches(tf.constant(img), tf.constant([seed, 5], tf.int64), 16).numpy()
        where = [_find(t, big) for t in tiles]
        assert None not in where
        def in_cells(oy, ox):   # every patch inside its cell of the 63 px square at (oy, ox)
            return all(0 <= y - oy - (i // 3) * cell <= cell - 16 and 0 <= x - ox - (i % 3) * cell <= cell - 16
                       for i, (y, x) in enumerate(where))
        assert any(in_cells(oy, ox) for oy in (0, 1) for ox in (0, 1))
        corners.add(where[0])
    assert len(corners) > 1
    assert patches.integer_upscale(tf.constant(img), 32).shape == (32, 32, 3)        # large enough: as it is
    assert patches.integer_upscale(tf.constant(img[:20]), 63).shape == (80, 128, 3)   # the short side decides


def test_patch_grid_view_brings_an_image_of_another_size_to_the_runs_scale_first():
    from ssl_tf.data import ops, views
    cfg = views.AugmentConfig(image_size=32, patch_size=16)
    img = np.random.default_rng(1).integers(0, 256, [48, 80, 3]).astype(np.uint8)
    seed = tf.constant([3, 4], tf.int64)
    tiles = views.patch_grid(tf.constant(img), seed, cfg).numpy()
    at_32 = tf.cast(tf.round(ops.resize(ops.to_float(tf.constant(img)), 32) * 255), tf.uint8)
    same = views.patch_grid(at_32, seed, cfg)
    assert tiles.shape == (9, 16, 16, 3)
    np.testing.assert_allclose(tiles, same.numpy(), atol=1.5 / 255)   # as the 32-px image (to uint8 rounding)


def test_relative_patch_location_pair_label_is_the_neighbour_index():
    from ssl_tf.methods.relative_patch_location import PAIRS
    cell_ids = tf.constant(np.arange(9, dtype=np.float32)[None, :, None])      # [1 image, 9 patches, F=1]
    pairs = patches.permute_and_concat(cell_ids, tf.constant(PAIRS)).numpy()   # row k = pair with label k
    for k, (first, second) in enumerate(pairs):
        assert second == patches.CENTRE and first == patches.NEIGHBOURS[k]
    # the 8 labels are the 8 distinct (dy, dx) offsets around the centre
    offsets = {(c // 3 - 1, c % 3 - 1) for c in patches.NEIGHBOURS}
    assert len(offsets) == 8 and (0, 0) not in offsets


def test_jigsaw_permutation_label_and_inverse_restore_the_image():
    img = tf.constant(np.random.default_rng(0).random([12, 12, 3]).astype(np.float32))
    tiles = patches.tile(img)
    np.testing.assert_array_equal(patches.untile(tiles).numpy(), img.numpy())
    perms = patches.hamming_permutations(20, seed=3)
    for label in (0, 7, 19):
        shuffled = patches.permute(tiles, perms[label])
        assert not np.allclose(patches.untile(shuffled).numpy(), img.numpy())
        restored = patches.permute(shuffled, patches.inverse_permutation(perms[label]))
        np.testing.assert_array_equal(patches.untile(restored).numpy(), img.numpy())
    # the classifier input for (image, permutation j) holds the tiles in the order perms[j]
    tile_ids = tf.constant(np.arange(9, dtype=np.float32)[None, :, None])
    concat = patches.permute_and_concat(tile_ids, tf.constant(perms[[4, 11]])).numpy()
    np.testing.assert_array_equal(concat, perms[[4, 11]])


def test_hamming_set_has_the_reported_minimum_distance(tmp_path, monkeypatch):
    perms = patches.hamming_permutations(64, seed=1)
    assert perms.shape == (64, 9) and len({tuple(p) for p in perms}) == 64
    assert all(sorted(p) == list(range(9)) for p in perms)
    brute = min(int(np.sum(a != b)) for a, b in itertools.combinations(perms, 2))
    assert patches.min_hamming_distance(perms) == brute
    assert brute >= 6       # greedy max-min: well above a random set's minimum
    rng = np.random.default_rng(0)
    random_set = np.array([rng.permutation(9) for _ in range(64)])
    assert patches.min_hamming_distance(random_set) < brute
    monkeypatch.setenv("SSL_TF_CACHE", str(tmp_path))
    first = patches.load_permutations(30)
    assert (tmp_path / "hamming_perms_30_seed0.npy").exists()
    np.testing.assert_array_equal(first, patches.load_permutations(30))
    np.testing.assert_array_equal(first, patches.hamming_permutations(30))


def test_chromatic_guard_removes_the_green_magenta_axis():
    x = tf.constant(np.random.default_rng(0).random([8, 8, 3]).astype(np.float32) * 0.5 + 0.25)
    p = ops.project_out_green_magenta(x).numpy()
    np.testing.assert_allclose(p @ np.array([-1, 2, -1]) / np.sqrt(6), 0, atol=1e-6)
    g = ops.chromatic_guard(x, tf.constant([0, 0], tf.int64), grayscale_p=1.0).numpy()
    np.testing.assert_allclose(g[..., 0], g[..., 1], atol=1e-6)


def test_exemplar_copies_differ_and_rotation_op_is_exact_for_quarter_turns():
    out = views.views_for("exemplar", CFG)(_image(), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == (3, 16, 16, 3)
    assert not np.allclose(out[0], out[1])
    x = tf.constant(np.random.default_rng(1).random([9, 9, 3]).astype(np.float32))
    np.testing.assert_allclose(ops.rotate(x, np.pi / 2).numpy(), np.rot90(x.numpy(), 1), atol=1e-4)


def test_lab_round_trip_and_reference_values():
    rgb = np.random.default_rng(0).random([500, 3]).astype(np.float32)
    lab = color.rgb_to_lab(rgb).numpy()
    np.testing.assert_allclose(color.lab_to_rgb(lab).numpy(), rgb, atol=1e-3)
    ref = color.rgb_to_lab(np.array([[1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)).numpy()
    np.testing.assert_allclose(ref, [[100, 0, 0], [0, 0, 0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18]],
                               atol=0.05)


def test_ab_bins_are_in_gamut_and_quantisation_is_nearest():
    centres, _ = color.ab_bins()
    assert 200 <= len(centres) <= 330          # Zhang et al.: 313 in-gamut bins of side 10
    idx = color.quantize_ab(tf.constant(centres)).numpy()
    np.testing.assert_array_equal(idx, np.arange(len(centres)))
    rgb = np.random.default_rng(0).random([2000, 3]).astype(np.float32)
    ab = color.rgb_to_lab(rgb).numpy()[:, 1:]                  # colours an image can hold
    got = color.quantize_ab(tf.constant(ab)).numpy()
    d = ((ab[:, None] - centres[None]) ** 2).sum(-1)
    # the chosen bin is the nearest in-gamut centre (ties between equidistant centres aside)
    np.testing.assert_allclose(d[np.arange(len(ab)), got], d.min(1), atol=1e-2)
