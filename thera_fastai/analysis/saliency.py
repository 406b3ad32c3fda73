"""Where a one-logit model looks: Grad-CAM on fastai's hooks, at the last convolution whose map is still half the
image size (32x32 at 64 px), and overlays of the maps on the images.

Why so shallow: deeper maps put the evidence in a ring around the occlusion rather than on it (measured in
docs/design.md, *Label audit and saliency*)."""
import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.hook import hook_output

from ..data.loaders import images_dl
from ..models import map_sizes

__all__ = ['cam_layer', 'grad_cam', 'oof_saliency', 'plot_saliency']


def cam_layer(model, size=64, min_map=None, n_in=3):
    """The last `Conv2d`, in forward order, whose output map is at least `min_map` pixels wide (default: half the width
    the first conv receives: 32 for a 64 px model, 16 for one working at 32 px)."""
    convs = map_sizes(model, size, n_in)
    min_map = min_map or convs[0][1] // 2
    wide = [m for m, _, out in convs if out >= min_map]
    return wide[-1] if wide else convs[0][0]


def grad_cam(learn, images, target=0, layer=None, bs=64):
    """Grad-CAM maps (N, H, W) in [0, 1] of `learn`'s model for uint8 `images` (N, H, W, C), after the learner's own
    normalization. `target=0` explains the evidence for class 0 (occlusion: the gradient of minus the logit),
    `target=1` for class 1; each map is scaled to its own maximum. `layer` defaults to `cam_layer(model)`."""
    model = learn.model.eval()
    layer = layer or cam_layer(model, images.shape[1])
    sign = -1.0 if target == 0 else 1.0
    maps = []
    for (xb,) in images_dl(learn.dls, images, bs=bs):
        with hook_output(layer) as acts, hook_output(layer, grad=True) as grads:
            with torch.enable_grad(), torch.autocast(xb.device.type, enabled=False):
                logits = model(xb.float().requires_grad_(True)).float().view(-1)
                (sign * logits).sum().backward()
        a, g = acts.stored.float(), grads.stored[0].float()
        cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[1:3], mode='bilinear', align_corners=False)[:, 0]
        cam = cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        maps.append(cam.detach().cpu().numpy())
    model.zero_grad(set_to_none=True)
    return np.concatenate(maps)


def oof_saliency(run, rows, images, target=0, device='cpu'):
    """Grad-CAM maps for out-of-fold rows of run folder `run` (a frame with `row` and `fold` columns, as `read_oof`
    gives), each from the fold model that held the row out; `images` is the training cache."""
    from ..train.learner import load_fold_learner
    from ..runs import fold_dir
    maps = np.zeros((len(rows), *images.shape[1:3]), np.float32)
    for fold in rows['fold'].unique():
        learn = load_fold_learner(fold_dir(run, int(fold)), device=device, precision='fp32')
        mine = (rows['fold'] == fold).to_numpy()
        maps[mine] = grad_cam(learn, images[rows['row'].to_numpy()[mine]], target)
    return maps


def plot_saliency(images, maps, titles, path, cols=8, title=None, alpha=0.45):
    "A grid of images with their saliency maps over them (jet, `alpha`), each title in its own band above its image."
    from .plots import image_grid
    image_grid(images, titles, path, maps, title, cols, alpha)
