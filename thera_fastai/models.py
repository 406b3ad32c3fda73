"""The architectures: the seed's simple CNN, a CIFAR speed-run style net, and any timm model with its stem
adapted to 64x64 (`timm_64`); plus what a model costs (`model_profile`)."""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import AIRBENCH_HEADS, ARCH_NAMES, RESNET_STEMS, TIMM_STEMS, arch_stems, check_arch  # noqa: F401  (re-exported)
from .errors import TheraError

__all__ = ['check_start_weights', 'ByteDropout', 'Downsample', 'with_resolution', 'first_conv', 'SimpleCNN', 'simple_cnn', 'airbench_64', 'AIRBENCH_HEADS', 'pool_head', 'whiten_init', 'patch_covariance', 'resnet18_64', 'timm_64', 'RESNET_STEMS', 'TIMM_STEMS',
           'ARCHS', 'arch_stems', 'check_arch', 'create_model', 'model_profile']

DEFAULT_WIDTHS = ((16,), (32, 32), (64, 64), (128, 128))
DEFAULT_HEAD = (64, 128)


def conv_bn_relu(ni, nf, padding_mode='zeros'):
    "3x3 convolution, BatchNorm, ReLU; the conv has no bias since BatchNorm supplies one."
    return nn.Sequential(nn.Conv2d(ni, nf, 3, padding=1, bias=False, padding_mode=padding_mode),
                         nn.BatchNorm2d(nf), nn.ReLU(inplace=True))


class ByteDropout(nn.Dropout):
    """`nn.Dropout` whose keep mask is drawn one byte per element: 8 elements per 64-bit draw.

    torch's CPU dropout draws one 32-bit number per element from a serial Mersenne twister, a large part of
    the simple CNN's training step on a CPU (measured in docs/design.md, *Steps*). Same Bernoulli mask
    distribution and 1/(1-p) scaling, with `p` rounded to a multiple of 1/256 (0.25 is exact)."""
    def forward(self, x):
        if not self.training or self.p == 0: return x
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        layout = (x.shape[0], *x.shape[2:], x.shape[1]) if channels_last else x.shape
        draws = torch.empty((x.numel() + 7) // 8, dtype=torch.int64, device=x.device).random_(-2**63, 2**63 - 1)
        bytes_ = draws.view(torch.uint8)[:x.numel()].view(layout)
        if channels_last: bytes_ = bytes_.permute(0, 3, 1, 2)
        keep = (bytes_ >= round(self.p * 256)).to(x.dtype)
        return x * keep * (1 / (1 - self.p))


class SimpleCNN(nn.Sequential):
    "The seed's CNN: 3x3 conv blocks, max-pool and dropout between blocks, an MLP head, one logit."
    def __init__(self, widths=DEFAULT_WIDTHS, head=DEFAULT_HEAD, n_in=3, p=0.25, padding_mode='zeros'):
        layers, ni = [], n_in
        for i, block in enumerate(widths):
            if i > 0: layers += [nn.MaxPool2d(2), ByteDropout(p)]
            for nf in block:
                layers.append(conv_bn_relu(ni, nf, padding_mode))
                ni = nf
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), ByteDropout(p)]
        for nf in head: layers += [nn.Linear(ni, nf), nn.ReLU(inplace=True), ByteDropout(p)]; ni = nf
        layers.append(nn.Linear(ni, 1))
        super().__init__(*layers)


def simple_cnn(widths=DEFAULT_WIDTHS, head=DEFAULT_HEAD, padding_mode='zeros', **kwargs):
    "The seed's simple CNN; `widths` lists the conv widths of each block."
    return SimpleCNN(tuple(tuple(b) for b in widths), tuple(head), padding_mode=padding_mode, **kwargs)


def resnet18_64(stem='nopool', pretrained=False, weights=None, n_in=3):
    """A timm ResNet-18 with one logit and a stem altered for 64x64 input.

    `stem`: 'default' keeps timm's stem (2x2 final map), 'nopool' removes the stem max-pool
    (4x4 final map, the package default), 'conv3' replaces the 7x7 stride-2 conv by a 3x3
    stride-1 conv and removes the pool (8x8 final map, CIFAR-style). `pretrained=True` asks timm
    for its weights (needs the hub); `weights` is a local state-dict file loaded instead."""
    import timm
    if stem not in RESNET_STEMS: raise TheraError(f"unknown ResNet stem {stem!r}: use default, nopool or conv3")
    if pretrained and weights is None: require_cached_pretrained('resnet18')
    try: model = timm.create_model('resnet18', pretrained=pretrained and weights is None, num_classes=1, in_chans=n_in)
    except Exception as e:
        raise TheraError(f"timm could not get pretrained resnet18 weights ({type(e).__name__}); "
                         "pass --weights FILE with a local state dict, or train without --pretrained") from None
    if weights is not None: _load_backbone(model, weights)
    if stem in ('nopool', 'conv3'): model.maxpool = nn.Identity()
    if stem == 'conv3':
        model.conv1 = nn.Conv2d(n_in, 64, 3, stride=1, padding=1, bias=False)
    return model


def _load_backbone(model, path, name='resnet18'):
    "Loads a local timm state dict, skipping the classifier (it has 1000 outputs there)."
    try: state = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError: raise TheraError("the weights file does not exist", path) from None
    except Exception as e: raise TheraError(f"cannot read weights ({str(e)[:160]})", path) from None
    head = getattr(model, 'default_cfg', {}).get('classifier', 'fc')
    head_keys = {f"{head}.weight", f"{head}.bias"}
    state = {k: v for k, v in state.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - head_keys:
        raise TheraError(f"not a {name} state dict ({len(missing)} missing, {len(unexpected)} unexpected keys)", path)


def _bn(nf, momentum=None, weight=True):
    "BatchNorm in airbench's terms: `momentum` is the share of the old running statistics kept (torch's is 1 minus it)."
    if momentum is None: return nn.BatchNorm2d(nf)
    bn = nn.BatchNorm2d(nf, momentum=1 - momentum, eps=1e-12)
    bn.weight.requires_grad_(weight)
    return bn


def conv_bn_gelu(ni, nf, bn_momentum=None, bn_weight=True):
    return nn.Sequential(nn.Conv2d(ni, nf, 3, padding=1, bias=False), _bn(nf, bn_momentum, bn_weight), nn.GELU())


class AirbenchBlock(nn.Sequential):
    "airbench's block: conv, 2x2 max-pool, BatchNorm, GELU, then conv, BatchNorm, GELU."
    def __init__(self, ni, nf, bn_momentum=None, bn_weight=True):
        super().__init__(nn.Conv2d(ni, nf, 3, padding=1, bias=False), nn.MaxPool2d(2), _bn(nf, bn_momentum, bn_weight), nn.GELU(),
                         conv_bn_gelu(nf, nf, bn_momentum, bn_weight))


class Scale(nn.Module):
    def __init__(self, scale): super().__init__(); self.scale = scale
    def forward(self, x): return x * self.scale


GRID = 4  # the 'grid' head's cells a side: the last map of a 64 px image, kept whole


def pool_head(head, ni):
    """The pooling of airbench's last feature map and the width it hands the linear layer: `max` (airbench's global
    max-pool), `concat` (fastai's `AdaptiveConcatPool2d`, max and mean) or `grid` (a max-pool over each cell of a
    `GRID` x `GRID` grid, flattened: on aligned faces it keeps where a feature is, a hat's brim against a collar)."""
    if head == 'max': return nn.AdaptiveMaxPool2d(1), ni
    if head == 'concat':
        from fastai.layers import AdaptiveConcatPool2d
        return AdaptiveConcatPool2d(1), 2 * ni
    if head == 'grid': return nn.AdaptiveMaxPool2d(GRID), ni * GRID * GRID
    raise TheraError(f"unknown airbench head {head!r}: use {', '.join(AIRBENCH_HEADS)}")


def airbench_64(widths=(64, 256, 256), stem_width=24, n_in=3, whiten=False, bn_momentum=None, bn_weight=True, dirac=False, head='max'):
    """The CIFAR-10 speed-run network (Keller Jordan's airbench94) adapted to 64 px.

    A 2x2 stride-2 patch conv halves 64 px to the 32 px the CIFAR net was made for; then its three
    conv-pool-BN blocks, a pooling of the last map (`head`, `pool_head`'s; airbench's is the global max-pool) and a
    linear layer scaled by 1/9 (airbench's logit scale).
    airbench's training method builds it as airbench does: `whiten` makes the patch conv a frozen
    whitening layer with a bias and no BatchNorm (`whiten_init` sets it from training images), `bn_momentum`
    and `bn_weight=False` give BatchNorms a high momentum and frozen unit weights, `dirac` starts each conv
    as the identity on its first input channels."""
    if whiten:
        stem = nn.Conv2d(n_in, stem_width, 2, stride=2, bias=True)
        stem.weight.requires_grad_(False)
        layers = [stem, nn.GELU()]
    else: layers = [nn.Conv2d(n_in, stem_width, 2, stride=2, bias=False), nn.BatchNorm2d(stem_width), nn.GELU()]
    ni = stem_width
    for nf in widths: layers.append(AirbenchBlock(ni, nf, bn_momentum, bn_weight)); ni = nf
    pool, nf = pool_head(head, ni)
    layers += [pool, nn.Flatten(), nn.Linear(nf, 1, bias=False), Scale(1 / 9)]
    model = nn.Sequential(*layers)
    if dirac:
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3): nn.init.dirac_(m.weight.data[:m.in_channels])
    return model


def patch_covariance(images, size=2, stride=2, chunk=500):
    "The (C*size*size)-square second moment of the `size` px patches at `stride` of float `images` (N, C, H, W)."
    dim = images.shape[1] * size * size
    total, n = torch.zeros(dim, dim, dtype=torch.float64), 0
    for part in images.split(chunk):
        patches = F.unfold(part.float(), size, stride=stride).transpose(1, 2).reshape(-1, dim).double()
        total += patches.T @ patches; n += len(patches)
    return total / n


@torch.no_grad()
def whiten_init(conv, images, eps=5e-4):
    """airbench's whitening initialization of a patch conv with 2*C*k*k filters: the eigenvectors of the patch
    covariance of `images` (normalized float, N x C x H x W: training rows only), each scaled by 1/sqrt(eigenvalue
    + eps), and their negatives, so the layer's output is decorrelated with unit variance on these images."""
    k = conv.kernel_size[0]
    cov = patch_covariance(images, k, conv.stride[0])
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)
    filters = filters.reshape(-1, images.shape[1], k, k).float()
    # F.unfold orders a patch channel-major (c, y, x), the order of a conv weight's (in, kh, kw)
    conv.weight.copy_(torch.cat([filters, -filters]))
    if conv.bias is not None: conv.bias.zero_()
    return conv


def map_sizes(model, size=64, n_in=3, types=(nn.Conv2d,)):
    """(module, input width, output width) of every `types` module, in the order a no-grad eval forward pass of a
    `size` px image calls them (each module once, at its first call); the model's mode is put back afterwards."""
    seen, hooks = {}, []
    def record(mod, inp, out):
        if torch.is_tensor(inp[0]) and inp[0].dim() == 4 and torch.is_tensor(out) and out.dim() == 4:
            seen.setdefault(mod, (inp[0].shape[-1], out.shape[-1]))
    for m in model.modules():
        if isinstance(m, types): hooks.append(m.register_forward_hook(record))
    training = model.training
    try:
        model.eval()
        with torch.no_grad(): model(torch.zeros(1, n_in, size, size, device=next(model.parameters()).device))
    finally:
        for h in hooks: h.remove()
        model.train(training)
    return [(m, i, o) for m, (i, o) in seen.items()]


def _strided_steps(model, size=64, n_in=3):
    """The model's downsampling leaf modules in forward order, grouped by the spatial size they receive: one
    group per stride-2 step (a residual block's main path and shortcut fall in the same group)."""
    steps = {}
    for mod, i, o in map_sizes(model, size, n_in, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        if o < i: steps.setdefault(i, []).append(mod)
    return [steps[k] for k in sorted(steps, reverse=True)]


def _unstride(model, mod):
    "Halves one module's stride; a pool that would no longer downsample is removed."
    if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
        for parent in model.modules():
            for name, child in parent.named_children():
                if child is mod: setattr(parent, name, nn.Identity())
        return
    stride = tuple(max(s // 2, 1) for s in mod.stride)
    k = mod.kernel_size
    if all(x % 2 == 0 for x in k):  # a patchify conv (ConvNeXt's 4x4 stride 4): pad so the size divides exactly
        mod.padding = 'same' if stride == (1, 1) else tuple((x - s) // 2 for x, s in zip(k, stride))
    mod.stride = stride


def timm_64(name, stem='x2', pretrained=False, weights=None, n_in=3, size=64):
    """Any `timm.list_models()` name with one logit, adapted to `size` px by one rule.

    `stem`: how many of the model's first stride-2 steps, in forward order, become stride 1:
    'default' none (timm's network, built for 224 px: a 2x2 final map at 64 px for a 32x net), 'x2'
    one (final map 2x wider, what ResNet-18's `nopool` does), 'x4' two. A step is every downsampling
    module that receives the same input size, so a block's main path and its shortcut change together."""
    import timm
    check_arch(name)
    if stem not in TIMM_STEMS: raise TheraError(f"unknown stem {stem!r} for {name}: use {', '.join(TIMM_STEMS)}", param='stem')
    if pretrained and weights is None: require_cached_pretrained(name)
    try: model = timm.create_model(name, pretrained=pretrained and weights is None, num_classes=1, in_chans=n_in)
    except Exception as e:
        if not pretrained: raise TheraError(f"timm could not build {name} ({type(e).__name__}: {str(e)[:120]})", param='arch') from None
        raise TheraError(f"timm could not get pretrained {name} weights ({type(e).__name__}); "
                         "pass --weights FILE with a local state dict, or train without --pretrained") from None
    if weights is not None: _load_backbone(model, weights, name)
    steps = _strided_steps(model, size, n_in)
    if len(steps) < TIMM_STEMS[stem]: raise TheraError(f"{name} has only {len(steps)} downsampling steps", param='stem')
    for step in steps[:TIMM_STEMS[stem]]:
        for mod in step: _unstride(model, mod)
    return model


ARCHS = {'simple': simple_cnn, 'resnet18': resnet18_64, 'airbench': airbench_64}
assert tuple(ARCHS) == ARCH_NAMES


def _cached_pretrained(name):
    "Whether timm's pretrained weights of `name` are on this machine already (Hugging Face or torch hub cache)."
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    if cfg is None: return False
    if cfg.hf_hub_id and any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, f), str)
                             for f in (cfg.hf_hub_filename, 'model.safetensors', 'pytorch_model.bin') if f): return True
    return bool(cfg.url) and (Path(torch.hub.get_dir())/'checkpoints'/cfg.url.rsplit('/', 1)[-1]).exists()


def check_start_weights(arch, pretrained=False, weights=None, **kwargs):
    """Refuses, before anything is decoded or written, a start the fit could not make: a `weights` file that is
    missing or does not fit `arch` (the model is built with it), or timm's pretrained weights where they are not in
    the local cache (nothing is downloaded at run time)."""
    if weights is not None: create_model(arch, pretrained=True, weights=weights, **kwargs); return
    if pretrained: require_cached_pretrained(arch)


def require_cached_pretrained(name):
    "Refuses at once timm's pretrained weights of `name` where they are not in the local cache (no hub access, no retries)."
    if not _cached_pretrained(name):
        raise TheraError(f"timm could not get pretrained {name} weights: they are not in this machine's cache and nothing is "
                         "downloaded at run time; pass --weights FILE with a local state dict, or train without --pretrained",
                         param='pretrained')


class Downsample(nn.AvgPool2d):
    "Averages each `factor` x `factor` block of pixels: the model's first layer when it works below the images' size."
    def __init__(self, factor): super().__init__(factor)


def with_resolution(model, resolution, size=64):
    """`model` working at `resolution` px on `size` px images: a `Downsample` in front, so prediction, TTA, export and
    the saved weights need nothing else. A Sequential stays flat (its layers keep their order, one index later)."""
    if resolution is None or resolution == size: return model
    front = Downsample(size // resolution)
    return nn.Sequential(front, *model) if type(model) in (nn.Sequential, SimpleCNN) else nn.Sequential(front, model)


def first_conv(model):
    "The model's first `Conv2d` (airbench's whitening layer), in front of which only a `Downsample` may sit."
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def create_model(arch, resolution=None, **kwargs):
    """Builds `arch` (a key of `ARCHS`, or a timm model name through `timm_64`) from its keyword arguments, working at
    `resolution` px (None: the images' 64)."""
    model = ARCHS[arch](**kwargs) if arch in ARCHS else timm_64(arch, **kwargs)
    return with_resolution(model, resolution)


def model_profile(model, size=64, n_in=3):
    """Parameter count and training cost of `model`: GFLOP per image for a training step at `size` px, taken as
    3x the forward pass counted by torch's `FlopCounterMode` (a multiply-add is 2 FLOP). The backward pass is
    not counted directly: torch's counter overstates it for grouped convolutions (40x on EfficientNet-B0)."""
    from torch.utils.flop_counter import FlopCounterMode
    params = sum(p.numel() for p in model.parameters())
    training = model.training
    x = torch.zeros(1, n_in, size, size, device=next(model.parameters()).device)
    try:
        model.eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad(): model(x)
    finally: model.train(training)
    return dict(params=params, train_gflop=3 * counter.get_total_flops() / 1e9)
