"""How much of BigBiGAN's encoded z is the image's: the scale of E's mean μ(x) against its noise σ·ε.

E(x) = μ(x) + σ(x)·ε. If the noise is most of z, D's latent path cannot tell E's z from the prior's, yet
G(E(x)) hardly depends on x (the reconstructions look alike). This reads a pretraining checkpoint of a
``--method=bigbigan`` run and prints, over the first ``--images`` images of the run's training split of
an npz file (``--flagfile``'s split, as experiments/cifar10_methods.py trains on), the mean norm of
μ, the per-dimension standard deviation of μ across images, the mean σ and the mean norm of σ·ε, with
the prior's √d beside them; the same for a freshly initialised E of the same configuration.

    python experiments/bigbigan_latent_scale.py --run runs/cifar10_methods/bigbigan \
        --npz ../shared/data/cifar10/train.npz
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from ssl_tf import backend  # noqa: E402  (first: oneDNN is chosen before TensorFlow loads)

tf = backend.import_tensorflow()
from absl import flags  # noqa: E402

from ssl_tf import checkpoints, cli  # noqa: E402
from ssl_tf.errors import SSLTFError  # noqa: E402
from ssl_tf.methods.bigbigan import BigBiGAN  # noqa: E402
from ssl_tf.runner import Runner  # noqa: E402


def stats(model: BigBiGAN, x) -> str:
    _, mean, raw = model.gaussian(x, False)
    mu, sigma = mean.numpy(), tf.nn.softplus(raw).numpy()
    return (f"|mu| {np.linalg.norm(mu, axis=1).mean():.3f}, std of mu across images {mu.std(0).mean():.4f}, "
            f"sigma {sigma.mean():.3f}, |sigma*eps| {np.sqrt((sigma ** 2).sum(1)).mean():.3f} "
            f"(prior |z| ~ {np.sqrt(mu.shape[1]):.2f})")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="model_dir of a bigbigan run (its pretrain/ checkpoints)")
    p.add_argument("--npz", required=True, help="images (and labels) as experiments/cifar10_methods.py reads")
    p.add_argument("--flagfile", default=os.path.join(ROOT, "flags", "bigbigan", "cifar10_20min.flags"),
                   help="the run's recipe (its networks' sizes)")
    p.add_argument("--images", type=int, default=512)
    args = p.parse_args()
    checkpoint = checkpoints.pretraining_checkpoint(args.run)
    if checkpoint is None:
        raise SystemExit(f"--run={args.run}: no pretraining checkpoint there (expected pretrain/ckpt-*)")
    fv = flags.FlagValues()
    cli.define_flags(fv)
    cli.parse_or_exit(["bigbigan_latent_scale", f"--flagfile={args.flagfile}", f"--dataset=npz:{args.npz}",
                       "--model_dir=/tmp/bigbigan_latent_scale", "--progress=false", "--plots=false"], fv)
    try:
        runner = Runner(cli.config_from_flags(fv), log=lambda *a: None)
    except SSLTFError as e:
        raise SystemExit(str(e))
    x = tf.constant(runner.data.train.images[:args.images].astype("float32") / 255.0)
    for tag in ("initialised", "trained"):
        encoder = runner.build_encoder()
        model = BigBiGAN.from_config(runner.model_cfg, encoder, runner.data.num_classes)
        model.gaussian(x[:2], False)   # builds the head
        if tag == "trained":
            checkpoints.read_encoder(encoder, checkpoint)
            checkpoints.read_encoder(model.latent_head, checkpoint, attr="latent_head")
        print(f"{tag}: {stats(model, x)}")


if __name__ == "__main__":
    main()
