"""The PNGs next to a thera-fit run: per-epoch curves, pooled ROC with the chosen threshold, confusion matrix."""
from pathlib import Path

import numpy as np

from .. import metrics
from ..runs import read_history
from ..files import atomic_write

__all__ = ['pyplot', 'save_figure', 'plot_history', 'plot_roc', 'plot_confusion', 'write_plots', 'top_losses', 'image_grid', 'plot_top_losses']


def pyplot():
    "matplotlib's pyplot on the file-only Agg backend unless a notebook already chose one."
    import matplotlib
    if 'inline' not in matplotlib.get_backend(): matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    "Saves `fig` as a PNG, atomically, and closes it."
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=110, bbox_inches='tight'))
    pyplot().close(fig)


def plot_history(histories, path):
    "Training and validation loss, and validation HTER, per epoch for each fold (`histories`: fold -> frame); epochs from 0, as logged."
    plt = pyplot()
    fig, (ax_loss, ax_hter) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, h in sorted(histories.items()):
        epochs, color = h['epoch'], f"C{int(k) % 10}"
        ax_loss.plot(epochs, h['train_loss'], '--', marker='x', color=color, label=f"fold {k} train (weighted)")
        ax_loss.plot(epochs, h['valid_loss'], '-', marker='o', color=color, label=f"fold {k} valid")
        ax_hter.plot(epochs, h['hter'], marker='o', color=color, label=f"fold {k}")
    n_epochs = max(int(h['epoch'].max()) + 1 for h in histories.values())
    ax_loss.set(xlabel='epoch', ylabel='BCE loss', title='Loss per epoch')
    ax_hter.set(xlabel='epoch', ylabel='validation HTER at 0.5', title='HTER per epoch')
    for ax in (ax_loss, ax_hter):
        ax.legend(fontsize=7); ax.grid(alpha=.3)
        ax.set_xticks(range(n_epochs)); ax.set_xlim(-0.5, n_epochs - 0.5)
    fig.tight_layout(w_pad=2)
    save_figure(fig, path)


def plot_roc(probs, targs, threshold, path):
    "Pooled out-of-fold ROC as FAR vs 1-FRR, with the chosen threshold marked."
    plt = pyplot()
    fpr, tpr, _ = metrics.roc_points(probs, targs)
    far, frr = metrics.far(probs, targs, threshold), metrics.frr(probs, targs, threshold)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(fpr, tpr, label=f"ROC, AUC {metrics.auc(probs, targs):.4f}")
    ax.plot([far], [1 - frr], 'o', color='C3', label=f"threshold {threshold:.3f}: FAR {far:.3f}, FRR {frr:.3f}")
    ax.plot([0, 1], [0, 1], ':', color='grey')
    ax.set(xlabel='FAR (class 0 accepted)', ylabel='1 - FRR (class 1 accepted)', title='Pooled out-of-fold ROC')
    ax.legend(fontsize=7, loc='lower right'); ax.grid(alpha=.3)
    save_figure(fig, path)


def plot_confusion(probs, targs, threshold, path):
    "Confusion matrix of the pooled out-of-fold predictions at `threshold`, counts and row shares."
    plt = pyplot()
    t, predicted = np.asarray(targs).astype(int), (np.asarray(probs) >= threshold).astype(int)
    cm = np.array([[np.sum((t == a) & (predicted == b)) for b in (0, 1)] for a in (0, 1)])
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.imshow(cm / cm.sum(1, keepdims=True), cmap='Blues', vmin=0, vmax=1)
    for t in (0, 1):
        for p in (0, 1):
            share = cm[t, p] / cm[t].sum()
            ax.text(p, t, f"{cm[t, p]}\n{share:.1%}", ha='center', va='center', color='white' if share > .5 else 'black')
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=['0 occluded', '1 clean'], yticklabels=['0 occluded', '1 clean'],
           xlabel='predicted', ylabel='label', title=f"Out-of-fold, threshold {threshold:.3f}")
    save_figure(fig, path)


def write_plots(out, oof, threshold):
    "history.png, roc.png and confusion.png under `out` from its folds' histories and pooled `oof` frame."
    out = Path(out)
    histories = {k: read_history(out/f"fold{k}"/'history.csv') for k in sorted(oof['fold'].unique())}
    plot_history(histories, out/'history.png')
    p, t = oof['prob_tta'].to_numpy(), oof['label'].to_numpy()
    plot_roc(p, t, threshold, out/'roc.png')
    plot_confusion(p, t, threshold, out/'confusion.png')


def top_losses(oof, n=16, prob='prob_tta'):
    "The `n` out-of-fold rows with the highest BCE loss: the confident mistakes, label noise suspects first."
    p = oof[prob].clip(1e-7, 1 - 1e-7)
    loss = -(oof['label'] * np.log(p) + (1 - oof['label']) * np.log(1 - p))
    return oof.assign(loss=loss).nlargest(n, 'loss')


def image_grid(images, titles, path, maps=None, title=None, cols=8, alpha=0.45):
    "A grid of images, optionally with maps over them (jet, `alpha`); each title sits in its own band above its image."
    plt = pyplot()
    rows = max(-(-len(images) // cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 2.0 * rows + 0.4), squeeze=False)
    for ax in axes.ravel(): ax.axis('off')
    for i, (ax, img, t) in enumerate(zip(axes.ravel(), images, titles)):
        ax.imshow(img)
        if maps is not None: ax.imshow(maps[i], cmap='jet', alpha=alpha, vmin=0, vmax=1)
        ax.set_title(t, fontsize=7, pad=3)
    if title: fig.suptitle(title, fontsize=9)
    fig.tight_layout(h_pad=1.0)
    save_figure(fig, path)


def plot_top_losses(images, top, path, cols=8, maps=None):
    "A grid of the `top` rows' images titled with label, P(class 1) and loss, with their saliency `maps` if given."
    titles = [f"#{int(r['row']) + 1} y={int(r['label'])}\np={r['prob_tta']:.2f} loss={r['loss']:.1f}" for _, r in top.iterrows()]
    note = '; map: evidence of occlusion' if maps is not None else ''
    image_grid(images[top['row'].to_numpy().astype(int)], titles, path, maps,
               f'Top out-of-fold losses (y = label, p = P(clean face)){note}', cols)
