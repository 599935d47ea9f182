import numpy as np
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import nt_xent


def numpy_nt_xent(z1, z2, t):
    """NT-Xent exactly as eq. 1 of the SimCLR paper: mean over the 2N anchors."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / t
    losses, correct = [], []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        logsumexp = np.log(np.sum(np.exp(sim[i, others])))
        losses.append(-(sim[i, j] - logsumexp))
        correct.append(others[int(np.argmax(sim[i, others]))] == j)
    return np.mean(losses), np.mean(correct)


def test_nt_xent_matches_numpy_one_replica():
    rng = np.random.default_rng(0)
    for t in (0.1, 0.5):
        z1, z2 = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)
        out = nt_xent(tf.constant(z1), tf.constant(z2), t)
        loss, acc = numpy_nt_xent(z1, z2, t)
        np.testing.assert_allclose(out.loss.numpy(), loss, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out.accuracy.numpy(), acc, atol=1e-6)


def test_nt_xent_perfect_pairs_have_lower_loss_than_random():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(8, 16)).astype(np.float32)
    aligned = nt_xent(tf.constant(z), tf.constant(z), 0.1)
    shuffled = nt_xent(tf.constant(z), tf.constant(z[::-1].copy()), 0.1)
    assert aligned.loss < shuffled.loss
    assert aligned.accuracy.numpy() == 1.0


def test_nt_xent_matches_numpy_two_replicas():
    """Each replica's local loss over gathered negatives; the replica mean is the global loss."""
    strategy = distribute.make_strategy("mirrored")
    rng = np.random.default_rng(2)
    z1, z2 = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((z1, z2)))

    @tf.function
    def step(a, b):
        def replica(a, b):
            n = tf.shape(a)[0]
            return nt_xent(a, b, 0.2, distribute.gather(a), distribute.gather(b),
                           offset=distribute.replica_id() * n).loss
        return strategy.reduce("MEAN", strategy.run(replica, args=(a, b)), axis=None)
    (a, b), = list(ds)
    loss = step(a, b).numpy()
    expected, _ = numpy_nt_xent(z1, z2, 0.2)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-5)
