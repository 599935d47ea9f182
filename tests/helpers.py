"""Shared test helpers (imported by test modules; pytest puts this directory on sys.path)."""
import tensorflow as tf

from ssl_tf.data import pipeline


def run_replica_steps(strategy, model, examples, view_fn, global_batch, steps):
    """``steps`` training steps of a built ``model`` under ``strategy`` on the seeded stream of
    ``examples``; the replica-mean logs of each step as floats."""
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.train_stream(examples, view_fn, global_batch=global_batch, seed=0, input_context=ctx))

    @tf.function
    def step(b):
        logs = strategy.run(model.train_step, args=(b,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}
    it = iter(ds)
    return [{k: float(v) for k, v in step(next(it)).items()} for _ in range(steps)]
