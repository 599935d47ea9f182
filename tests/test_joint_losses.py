"""The momentum / teacher-student / redundancy-reduction losses equal NumPy re-derivations of
their papers' formulas on random inputs."""
import numpy as np
import pytest
import tensorflow as tf

from ssl_tf import losses

RNG = np.random.default_rng(0)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _f32(*shape):
    return RNG.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("graph", [False, True])
def test_info_nce_and_its_gradients_match_numpy(graph):
    """Value, accuracy and gradients w.r.t. the raw q and k, through the L2 normalisation."""
    b, d, n_queue, t = 6, 5, 12, 0.2
    q, k, queue = _f32(b, d), _f32(b, d), _f32(n_queue, d)
    qn, kn, nn_ = _unit(q), _unit(k), _unit(queue)
    logits = np.concatenate([(qn * kn).sum(1, keepdims=True), qn @ nn_.T], 1) / t
    expected = -_log_softmax(logits)[:, 0].mean()
    # gradients of the mean loss w.r.t. the unit rows (softmax p over [k, N]) ...
    p = np.exp(_log_softmax(logits))
    g_qn = (p[:, :1] * kn + p[:, 1:] @ nn_ - kn) / t / b
    g_kn = (p[:, :1] - 1) * qn / t / b

    # ... then through u = z/||z||: dL/dz = (g - (g·u) u) / ||z||
    def through_norm(g, z, u):
        return (g - (g * u).sum(1, keepdims=True) * u) / np.linalg.norm(z, axis=1, keepdims=True)

    def run(q, k):
        with tf.GradientTape() as tape:
            tape.watch([q, k])
            out = losses.info_nce(q, k, queue, t)
        return (out.loss, out.accuracy) + tuple(tape.gradient(out.loss, [q, k]))
    fn = tf.function(run) if graph else run
    loss, acc, d_q, d_k = fn(tf.constant(q), tf.constant(k))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(acc), np.mean(logits.argmax(1) == 0))
    np.testing.assert_allclose(d_q.numpy(), through_norm(g_qn, q, qn), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d_k.numpy(), through_norm(g_kn, k, kn), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 5, 12, 64])
def test_queue_cross_entropy_chunks_agree_with_numpy(chunk):
    b, d, n_queue, t = 4, 3, 12, 0.1
    qn, kn, queue = _unit(_f32(b, d)), _unit(_f32(b, d)), _f32(n_queue, d) * 3.0
    logits = np.concatenate([(qn * kn).sum(1, keepdims=True), qn @ _unit(queue).T], 1) / t
    p = np.exp(_log_softmax(logits))
    q_var, k_var = tf.Variable(qn), tf.Variable(kn)
    with tf.GradientTape() as tape:
        loss, correct = losses.queue_cross_entropy(q_var, k_var, queue, t, chunk=chunk)
        total = tf.reduce_sum(loss * np.arange(1, b + 1, dtype=np.float32))   # a different upstream per query
    d_q, d_k = tape.gradient(total, [q_var, k_var])
    weights = np.arange(1, b + 1)[:, None]
    # atol: float32 log-sum-exp over logits of ~1/T rounds to ~1e-6 absolute, ~1e-5 relative of a loss near 0
    np.testing.assert_allclose(loss.numpy(), -_log_softmax(logits)[:, 0], rtol=1e-5, atol=2e-6)
    np.testing.assert_array_equal(correct.numpy(), logits.argmax(1) == 0)
    np.testing.assert_allclose(d_q.numpy(), weights * (p[:, :1] * kn + p[:, 1:] @ _unit(queue) - kn) / t,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(d_k.numpy(), weights * (p[:, :1] - 1) * qn / t, rtol=1e-4, atol=1e-5)


def test_queue_cross_entropy_counts_the_positive_as_correct_when_it_wins():
    # query 0 is its own key (logit 1/T, above any other), query 1's key is its opposite
    q = np.eye(3, dtype=np.float32)[:2]
    k = np.stack([q[0], -q[1]])
    negatives = np.eye(3, dtype=np.float32)[[1, 2]]
    loss, correct = losses.queue_cross_entropy(tf.constant(q), tf.constant(k), tf.constant(negatives), 0.5)
    np.testing.assert_array_equal(correct.numpy(), [1.0, 0.0])
    logits = np.array([[2.0, 0.0, 0.0], [-2.0, 2.0, 0.0]])
    np.testing.assert_allclose(loss.numpy(), -_log_softmax(logits)[:, 0], rtol=1e-5)


def test_batch_contrastive_matches_numpy_with_offset():
    q, k_all, t = _f32(3, 4), _f32(6, 4), 0.5
    logits = _unit(q) @ _unit(k_all).T / t
    labels = np.arange(3) + 3
    expected = -_log_softmax(logits)[np.arange(3), labels].mean() * 2 * t
    np.testing.assert_allclose(float(losses.batch_contrastive(q, k_all, t, offset=3).loss), expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["nce", "softmax"])
def test_memory_bank_nce_matches_numpy(kind):
    b, k, d, n, t = 4, 7, 5, 100, 0.07
    f, pos, neg = _unit(_f32(b, d)), _unit(_f32(b, d)), _unit(_f32(b, k, d))
    logits = np.concatenate([(f * pos).sum(1, keepdims=True), np.einsum("bd,bkd->bk", f, neg)], 1) / t
    tf_logits = losses.memory_bank_logits(f, pos, neg, t)
    np.testing.assert_allclose(tf_logits.numpy(), logits, rtol=1e-5)
    z = np.exp(logits).mean() * n
    np.testing.assert_allclose(float(losses.nce_normaliser(tf_logits, n)), z, rtol=1e-5)
    if kind == "nce":
        p = np.exp(logits) / z
        pn = k / n
        expected = -np.mean(np.log(p[:, 0] / (p[:, 0] + pn)) + np.log(pn / (p[:, 1:] + pn)).sum(1))
    else:
        expected = -_log_softmax(logits)[:, 0].mean()
    np.testing.assert_allclose(float(losses.memory_bank_nce(tf_logits, n, z, kind)), expected, rtol=1e-5)


def test_byol_and_simsiam_losses_match_numpy():
    p1, p2, z1, z2 = (_f32(8, 6) for _ in range(4))
    cos = lambda a, b: (_unit(a) * _unit(b)).sum(1)  # noqa: E731
    byol = np.mean(2 - 2 * cos(p1, z2)) + np.mean(2 - 2 * cos(p2, z1))
    np.testing.assert_allclose(float(losses.byol_loss(p1, p2, z1, z2)), byol, rtol=1e-5)
    np.testing.assert_allclose(float(losses.normalized_mse(p1, z2)),
                               np.mean(np.sum((_unit(p1) - _unit(z2)) ** 2, 1)), rtol=1e-5)
    simsiam = -0.5 * np.mean(cos(p1, z2)) - 0.5 * np.mean(cos(p2, z1))
    np.testing.assert_allclose(float(losses.simsiam_loss(p1, p2, z1, z2)), simsiam, rtol=1e-5)


def test_stop_gradient_on_targets():
    p, z = tf.Variable(_f32(4, 3)), tf.Variable(_f32(4, 3))
    with tf.GradientTape(persistent=True) as tape:
        a = losses.normalized_mse(p, z)
        b = losses.negative_cosine(p, z)
    assert tape.gradient(a, z) is None and tape.gradient(b, z) is None
    assert np.abs(tape.gradient(a, p).numpy()).sum() > 0


def test_dino_loss_and_center_match_numpy():
    """The student's logits are its bottleneck features times the last layer's kernel (fused into
    the loss): value and gradients w.r.t. both against NumPy, pair by pair as Alg. 1 writes it."""
    b, d, k, ts, tt, m = 5, 4, 9, 0.1, 0.04, 0.9
    student = [_f32(b, d) for _ in range(4)]          # 2 global + 2 local
    kernel = _f32(d, k)
    teacher = [_f32(b, k) for _ in range(2)]
    center = _f32(k)
    total, pairs = 0.0, 0
    grads = [np.zeros((b, k)) for _ in student]       # d loss / d logits, per student view
    for i, t in enumerate(teacher):
        pt = np.exp(_log_softmax((t - center) / tt))
        for v, x in enumerate(student):
            if v != i:
                s = x.astype(np.float64) @ kernel
                total += np.mean(-(pt * _log_softmax(s / ts)).sum(1))
                # d/ds of mean_b -Σ_K P_t log softmax(s / T_s) = (softmax(s / T_s) - P_t) / (T_s · b)
                grads[v] += (np.exp(_log_softmax(s / ts)) - pt) / (ts * b)
                pairs += 1
    student_vars, kernel_var = [tf.Variable(x) for x in student], tf.Variable(kernel)
    with tf.GradientTape() as tape:
        loss = losses.dino_loss(student_vars, kernel_var, teacher, center, ts, tt)
    got = tape.gradient(loss, [kernel_var] + student_vars)
    np.testing.assert_allclose(float(loss), total / pairs, rtol=1e-5)
    want_kernel = sum(x.T @ g for x, g in zip(student, grads)) / pairs
    # float32 against float64: entries near zero are compared at 1e-5 of the largest entry
    np.testing.assert_allclose(got[0].numpy(), want_kernel, rtol=1e-4, atol=1e-5 * np.abs(want_kernel).max())
    for g_x, g_s in zip(got[1:], grads):
        want = g_s @ kernel.T / pairs
        np.testing.assert_allclose(g_x.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    mean = np.concatenate(teacher).mean(0)
    np.testing.assert_allclose(np.asarray(losses.updated_center(center, mean, m)), m * center + (1 - m) * mean,
                               rtol=1e-6)


def test_dino_teacher_entropy_matches_numpy_and_spans_zero_to_ln_k():
    b, k, tt = 6, 9, 0.04
    teacher, center = [_f32(b, k) for _ in range(2)], _f32(k)
    p = [np.exp(_log_softmax((t - center) / tt)) for t in teacher]
    want = np.mean([np.mean(-(q * np.log(q + 1e-30)).sum(1)) for q in p])
    np.testing.assert_allclose(float(losses.teacher_entropy(teacher, center, tt)), want, rtol=1e-4, atol=1e-6)
    same = [np.tile(_f32(1, k), (b, 1))]                  # every image alike: centring leaves a uniform teacher
    assert float(losses.teacher_entropy(same, same[0][0], tt)) == pytest.approx(np.log(k), rel=1e-5)
    one_hot = [np.tile(100 * np.eye(k, dtype=np.float32)[:1], (b, 1))]
    assert float(losses.teacher_entropy(one_hot, np.zeros(k, np.float32), tt)) < 1e-5


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_linear_soft_cross_entropy_and_its_gradients_match_numpy(dtype):
    """Σ_v -mean_b Σ_K w_v log softmax(x_v W / T) with rows of w_v summing to n_v, fused with the
    product x_v W (run in ``dtype``): value and its gradients g Wᵀ and Σ_v x_vᵀ g, g = (n
    softmax - w) / (T b), against NumPy — inside a tf.function (graph mode, as in training), at
    DINO's K = 65536 (softmax entries ~1/K, below float16's smallest normal number)."""
    b, d, k, t = 6, 8, 65536, 0.1
    xs = [_unit(_f32(b, d)) for _ in range(3)]
    kernel = _unit(_f32(k, d)).T                      # weight-normalised columns, as DINO's last layer
    counts = [1, 1, 2]
    ws = [sum(np.exp(_log_softmax(_f32(b, k) * 4)) for _ in range(n)) for n in counts]
    x_vars, k_var = [tf.Variable(x) for x in xs], tf.Variable(kernel)

    @tf.function
    def value_and_grads():
        with tf.GradientTape() as tape:
            loss = losses.linear_soft_cross_entropy(x_vars, k_var, ws, counts, t, dtype)
        return loss, tape.gradient(loss, [k_var] + x_vars)
    loss, got = value_and_grads()

    def rounded(a):   # the operands the product sees
        return tf.cast(tf.cast(a, dtype), tf.float64).numpy()
    want_loss, want_kernel, want_x = 0.0, 0.0, []
    for x, w, n in zip(xs, ws, counts):
        s = rounded(x) @ rounded(kernel)
        want_loss += np.mean(-(w * _log_softmax(s / t)).sum(1))
        g = (n * np.exp(_log_softmax(s / t)) - w) / (t * b)
        want_kernel = want_kernel + x.T @ g
        want_x.append(g @ kernel.T)
    assert loss.dtype == tf.float32 and all(g.dtype == tf.float32 for g in got)
    tol = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-3}[dtype]
    np.testing.assert_allclose(float(loss), want_loss, rtol=tol)
    for g, want in zip(got, [want_kernel] + want_x):
        np.testing.assert_allclose(g.numpy(), want, rtol=tol, atol=tol * np.abs(want).max())


def test_barlow_twins_matches_numpy():
    z1, z2, lam = _f32(16, 6) * 3 + 1, _f32(16, 6), 5e-3
    s1 = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + 1e-5)
    s2 = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + 1e-5)
    c = s1.T @ s2 / 16
    off = c - np.diag(np.diag(c))
    expected = np.sum((1 - np.diag(c)) ** 2) + lam * np.sum(off ** 2)
    loss, c_tf = losses.barlow_twins_loss(z1, z2, lam)
    np.testing.assert_allclose(c_tf.numpy(), c, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert losses.barlow_lambda(8192) == pytest.approx(0.0051)
    assert losses.barlow_lambda(2048) == pytest.approx(0.0051 * 4)


def test_vicreg_matches_numpy():
    n, d = 12, 5
    z1, z2 = _f32(n, d) * 0.5, _f32(n, d) * 2
    inv = np.mean((z1 - z2) ** 2)

    def var_cov(z):
        cov = np.cov(z, rowvar=False)          # unbiased
        std = np.sqrt(np.diag(cov) + 1e-4)
        off = cov - np.diag(np.diag(cov))
        return np.mean(np.maximum(0, 1 - std)), np.sum(off ** 2) / d
    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    expected = 25 * inv + 25 * (v1 + v2) / 2 + 1 * (c1 + c2)
    loss, (s, v, c) = losses.vicreg_loss(z1, z2)
    np.testing.assert_allclose([float(s), float(v), float(c)], [inv, (v1 + v2) / 2, c1 + c2], rtol=1e-5)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
