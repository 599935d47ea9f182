import numpy as np

from ssl_tf.data import subsets
from ssl_tf.eval import knn_predict, probe


def brute_force_knn(train_x, train_y, test_x, num_classes, k, t):
    a = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    preds = []
    for q in test_x:
        s = a @ (q / np.linalg.norm(q))
        idx = np.argsort(-s)[:k]
        votes = np.zeros(num_classes)
        for i in idx:
            votes[train_y[i]] += np.exp(s[i] / t)
        preds.append(np.argmax(votes))
    return np.array(preds)


def test_knn_equals_brute_force():
    rng = np.random.default_rng(0)
    train_x, train_y = rng.normal(size=(300, 8)), rng.integers(0, 4, 300)
    test_x = rng.normal(size=(50, 8))
    for k, t in ((1, 0.1), (20, 0.1), (300, 0.5)):
        got = knn_predict(train_x, train_y, test_x, 4, k=k, temperature=t, chunk=16)
        np.testing.assert_array_equal(got, brute_force_knn(train_x, train_y, test_x, 4, k, t))


def test_linear_probe_separates_separable_data_and_not_noise():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 3
    y = rng.integers(0, 3, 600)
    x = (centers[y] + rng.normal(size=(600, 16))).astype(np.float32)
    res = probe(x[:500], y[:500], x[500:], y[500:], 3, epochs=20, seed=0)
    assert res["top1"] > 90
    noise = rng.normal(size=(600, 16)).astype(np.float32)
    assert probe(noise[:500], y[:500], noise[500:], y[500:], 3, epochs=20, seed=0)["top1"] < 60


def test_stratified_split_is_balanced_and_seeded():
    labels = np.repeat(np.arange(5), 40)
    tr, va = subsets.stratified_split(labels, 0.1, seed=3)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == 200
    assert np.all(np.bincount(labels[va]) == 4)
    tr2, va2 = subsets.stratified_split(labels, 0.1, seed=3)
    np.testing.assert_array_equal(va, va2)
    assert not np.array_equal(va, subsets.stratified_split(labels, 0.1, seed=4)[1])


def test_label_fraction_is_class_balanced_and_seeded():
    labels = np.repeat(np.arange(10), 100)
    idx = subsets.label_fraction(labels, 0.01, seed=0)
    assert np.all(np.bincount(labels[idx]) == 1)
    idx10 = subsets.label_fraction(labels, 0.1, seed=0)
    assert np.all(np.bincount(labels[idx10]) == 10)
    np.testing.assert_array_equal(idx10, subsets.label_fraction(labels, 0.1, seed=0))
    assert len(subsets.label_fraction(labels, 1.0, seed=0)) == 1000
