"""PNG pictures of a run: training curves, a 2-D map of the evaluation embeddings, and a
nearest-neighbour retrieval grid.

Curves and maps use matplotlib, a core dependency; the ``plots`` extra adds scikit-learn for the
t-SNE map (``pip install 'ssl_tf[plots]'``). Where matplotlib is missing anyway (an install without
dependencies) ``pyplot()`` says so once and the run goes on. The retrieval grid is composed with
NumPy and written with Pillow (a core dependency), so it is always written. Every figure has a
fixed pixel size.
"""
from __future__ import annotations

import numpy as np

PLOTS_EXTRA = "pip install 'ssl_tf[plots]'"   # brings matplotlib (a core dependency) back, and scikit-learn for t-SNE
CURVES_SIZE = (1200, 360)     # width, height in pixels
MAP_SIZE = (600, 600)
CURVE_GROUPS = (("loss", ("loss",)),
                ("accuracy", ("probe_acc", "accuracy", "supervised_acc", "teacher_agreement", "mask_rate")),
                ("collapse monitor", ("embedding_std", "effective_rank")))


def pyplot(log=print):
    """matplotlib.pyplot with the Agg backend, or None (after saying which extra to install)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        return plt
    except ImportError:
        log(f"plots: matplotlib is not installed, skipping curves and embedding maps ({PLOTS_EXTRA})")
        return None


def save_top1_axes(plt, fig, ax, path: str, xlabel: str, legend_size: int = 7) -> str:
    """Label a top-1 (%) plot's axes, grid and legend, write it to ``path`` and close it."""
    ax.set_ylabel("top-1 (%)")
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _figure(plt, size, cols=1):
    dpi = 100
    return plt.subplots(1, cols, figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)


def training_curves(history: list[dict], path: str, title: str = "", log=print) -> str | None:
    """Loss, accuracies (online probe / classifier) and the collapse monitor against step."""
    plt = pyplot(log)
    if plt is None or not history:
        return None
    fig, axes = _figure(plt, CURVES_SIZE, cols=len(CURVE_GROUPS))
    steps = [h["step"] for h in history]
    for ax, (name, keys) in zip(axes, CURVE_GROUPS):
        for key in keys:
            if any(key in h for h in history):
                ax.plot(steps, [h.get(key, np.nan) for h in history], label=key)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.15, top=0.82, wspace=0.25)
    fig.savefig(path)
    plt.close(fig)
    return path


def pca_2d(features: np.ndarray) -> np.ndarray:
    """Projection of centred ``features`` on their first two principal axes."""
    x = features - features.mean(0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray | None:
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(features)


def embedding_maps(features, labels, path_prefix: str, title: str = "", seed: int = 0, limit: int = 2000,
                   log=print) -> list[str]:
    """``<prefix>_pca.png`` always, ``<prefix>_tsne.png`` when scikit-learn is installed: the first
    ``limit`` eval embeddings in 2-D, coloured by class."""
    plt = pyplot(log)
    if plt is None:
        return []
    features, labels = np.asarray(features[:limit], np.float64), np.asarray(labels[:limit])
    written = []
    projections = [("pca", pca_2d(features))]
    tsne = tsne_2d(features, seed) if len(features) > 5 else None
    if tsne is None:
        log(f"plots: scikit-learn is not installed, PCA map only ({PLOTS_EXTRA} adds t-SNE)")
    else:
        projections.append(("tsne", tsne))
    for name, xy in projections:
        fig, ax = _figure(plt, MAP_SIZE)
        points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", s=6, alpha=0.8)
        ax.legend(*points.legend_elements(), fontsize=6, loc="best", title="class", title_fontsize=6)
        ax.set_title(f"{title} · {name.upper()} of {len(features)} eval embeddings", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.93)
        path = f"{path_prefix}_{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def nearest_neighbours(features: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """[len(queries), k] indices of the most cosine-similar other gallery items of each query index."""
    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sims = f[queries] @ f.T
    sims[np.arange(len(queries)), queries] = -np.inf
    return np.argsort(-sims, axis=1)[:, :k]


def retrieval_grid(images: np.ndarray, features: np.ndarray, labels: np.ndarray, path: str, num_queries: int = 8,
                   k: int = 6, cell: int = 64) -> str:
    """Rows: a query (one per class first, in order) then its ``k`` nearest neighbours in feature
    space; a green / red bar under each neighbour of the same / another class. Size:
    ((k + 1)·(cell + 4) + 8) × num_queries·(cell + 10) pixels."""
    from PIL import Image
    queries = []
    for c in np.unique(labels):
        queries.append(int(np.flatnonzero(labels == c)[0]))
    queries += [i for i in range(len(labels)) if i not in queries]
    queries = np.array(queries[:num_queries])
    neighbours = nearest_neighbours(features, queries, k)
    pad, bar = 4, 6
    width, height = (k + 1) * (cell + pad) + 8, len(queries) * (cell + pad + bar)
    canvas = np.full((height, width, 3), 255, np.uint8)

    def tile(i):
        img = Image.fromarray(np.clip(images[i] * 255, 0, 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
        return np.asarray(img)
    for row, (q, nn) in enumerate(zip(queries, neighbours)):
        y = row * (cell + pad + bar)
        canvas[y:y + cell, 0:cell] = tile(q)
        for col, n in enumerate(nn):
            x = (col + 1) * (cell + pad) + 8
            canvas[y:y + cell, x:x + cell] = tile(n)
            canvas[y + cell + 1:y + cell + bar - 1, x:x + cell] = ((40, 170, 60) if labels[n] == labels[q]
                                                                   else (210, 50, 40))
    Image.fromarray(canvas).save(path)
    return path
