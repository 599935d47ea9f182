"""Strategy creation and the cross-replica helpers every method uses.

Inside ``strategy.run`` the helpers gather across replicas; outside any replica context
(one device, model building) they are the identity, so losses are written once.
"""
from __future__ import annotations

import json
import os
import socket

import tensorflow as tf

from ssl_tf.errors import SSLTFError

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def replica_context():
    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


def num_replicas() -> int:
    ctx = replica_context()
    return ctx.num_replicas_in_sync if ctx else 1


def replica_id():
    """This replica's index as an int32 tensor (0 outside distribution)."""
    ctx = replica_context()
    if ctx is None:
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


def cross_replica_sum(x):
    """Sum of ``x`` over replicas (identity outside distribution); differentiable: its gradient
    is the sum of the replicas' gradients."""
    ctx = replica_context()
    return ctx.all_reduce("SUM", x) if ctx else x


def run_if(pred, fn, *args):
    """``fn(*args)`` only where the boolean ``pred`` (equal on every replica) is true. ``fn`` may
    synchronise replicas (``apply_gradients`` does): a replica-context ``cond`` around it fails
    under MirroredStrategy, so with several replicas the ``cond`` runs in the cross-replica
    context and calls ``fn`` on each replica from there (as Keras's ``LossScaleOptimizer``)."""
    ctx = replica_context()   # None with one replica
    if ctx is None:
        tf.cond(pred, lambda: fn(*args) or tf.no_op(), tf.no_op)
        return

    def cross_replica(strategy, pred, *args):
        first = strategy.experimental_local_results(pred)[0]   # the same on every replica
        tf.cond(first, lambda: strategy.extended.call_for_each_replica(fn, args=args) or tf.no_op(), tf.no_op)
    ctx.merge_call(cross_replica, args=(pred, *args))


def gather(x):
    """Concatenate ``x`` over replicas along axis 0; gradients flow back to each replica's part.

    A ``cross_replica_sum`` of ``x`` zero-padded into its replica's rows, so each replica
    receives the gradient of every replica's loss with respect to its own rows. Equal batch
    sizes per replica.
    """
    ctx = replica_context()
    if ctx is None:
        return x
    n, rid = ctx.num_replicas_in_sync, tf.cast(ctx.replica_id_in_sync_group, tf.int32)
    b = tf.shape(x)[0]
    pads = [[rid * b, (n - 1 - rid) * b]] + [[0, 0]] * (len(x.shape) - 1)
    return cross_replica_sum(tf.pad(x, pads))


def moments(x, axes):
    """Mean and (biased) variance of ``x`` over ``axes`` and over every replica's batch.

    Each replica computes its own two-pass moments; one ``gather`` brings every replica's
    (count, mean, M2) and they are combined as Chan et al.'s parallel variance,
    M2 = sum_r [M2_r + n_r (mean_r - mean)^2], which avoids the E[x^2] - E[x]^2 cancellation.
    """
    if replica_context() is None:
        return tf.nn.moments(x, axes)
    local_mean, local_var = tf.nn.moments(x, axes)
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype)
    stats = gather(tf.concat([count[None], local_mean, local_var * count], 0)[None])   # [R, 1 + 2C]
    c = local_mean.shape[-1]
    counts, means, m2 = stats[:, :1], stats[:, 1:1 + c], stats[:, 1 + c:]
    total = tf.reduce_sum(counts)
    mean = tf.reduce_sum(counts * means, 0) / total
    var = tf.reduce_sum(m2 + counts * tf.square(means - mean), 0) / total
    return mean, var


def worker_role(strategy) -> tuple[int, int, bool]:
    """(this worker's index, number of workers, is it the chief) — (0, 1, True) off a cluster.

    The chief is task ``chief`` if the cluster has one, else worker 0 (as tf.distribute).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or isinstance(strategy, tf.distribute.TPUStrategy):
        return 0, 1, True
    spec = resolver.cluster_spec().as_dict()
    order = [("chief", i) for i in range(len(spec.get("chief", [])))] + \
            [("worker", i) for i in range(len(spec.get("worker", [])))]
    if (resolver.task_type, resolver.task_id) not in order:
        return 0, 1, True
    index = order.index((resolver.task_type, resolver.task_id))
    return index, len(order), index == 0


def make_strategy(name: str = "auto", tpu: str | None = None) -> tf.distribute.Strategy:
    """``--strategy``: auto (mirrored over GPUs when there are several, else the default device),
    one_device, mirrored (all local GPUs, or all logical CPUs), multi_worker (``TF_CONFIG``), tpu."""
    if name not in STRATEGIES:
        raise SSLTFError(f"--strategy={name}: unknown; accepted: {', '.join(STRATEGIES)}")
    if name == "multi_worker":   # before anything initialises TensorFlow's devices (collectives)
        return _multi_worker()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        # On CPU devices the default collective ops can launch sync-BN all-reduces and all_gather in a
        # different order on each replica (a collective-instance mismatch); reducing through one device
        # is ordered, and exact (tests/test_distribute.py).
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")],
                                              cross_device_ops=tf.distribute.ReductionToOneDevice())
    where = f"--strategy=tpu --tpu={tpu or ''}"
    if tpu and tpu.startswith("grpc://"):   # an unreachable address would make TensorFlow wait forever
        host, _, port = tpu[len("grpc://"):].rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise SSLTFError(f"{where}: no TPU found (cannot connect to {host}:{port})") from None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # noqa: BLE001 — the resolver raises ValueError, URLError, OpError, RuntimeError…
        reason = (str(e).splitlines() or [e.__class__.__name__])[0][:200]
        raise SSLTFError(f"{where}: no TPU found ({reason}); on a machine without a TPU use --strategy=auto, "
                         "one_device or mirrored") from None
    return tf.distribute.TPUStrategy(resolver)


def _multi_worker() -> tf.distribute.Strategy:
    if "TF_CONFIG" not in os.environ:
        raise SSLTFError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                         "(cluster spec and this worker's task)")
    try:
        spec = json.loads(os.environ["TF_CONFIG"])
        task = spec["task"]
        workers = spec["cluster"][task["type"]]
        assert 0 <= int(task["index"]) < len(workers)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise SSLTFError('--strategy=multi_worker: TF_CONFIG must be JSON like {"cluster": {"worker": '
                         '["host:port", ...]}, "task": {"type": "worker", "index": i}} with i a valid index') from None
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as e:
        raise SSLTFError(f"--strategy=multi_worker: {str(e).splitlines()[0]} (create the strategy before "
                         "any other TensorFlow call)") from None


def set_threads(intra_op: int = 0, inter_op: int = 0) -> None:
    """Size TensorFlow's intra-op and inter-op thread pools (0 keeps TensorFlow's default).

    Must run before TensorFlow initialises its runtime; asking again for the sizes already in
    force is fine."""
    setters = {"intra_op_threads": (tf.config.threading.get_intra_op_parallelism_threads,
                                    tf.config.threading.set_intra_op_parallelism_threads, intra_op),
               "inter_op_threads": (tf.config.threading.get_inter_op_parallelism_threads,
                                    tf.config.threading.set_inter_op_parallelism_threads, inter_op)}
    for flag, (get, set_, n) in setters.items():
        if n and get() != n:
            try:
                set_(n)
            except RuntimeError:
                raise SSLTFError(f"--{flag}={n}: TensorFlow is already initialised with {get() or 'its default'}; "
                                 "thread pools must be sized before the first TensorFlow op") from None


def split_cpu(num_devices: int) -> None:
    """Split the CPU into ``num_devices`` logical devices (tests, and mirrored runs on a CPU host).

    Must run before TensorFlow initialises its devices.
    """
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current and len(current) == num_devices:
        return
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError:
        raise SSLTFError(f"--num_cpu_devices={num_devices}: TensorFlow is already initialised; "
                         "it must be set before the first TensorFlow op") from None
