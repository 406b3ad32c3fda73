"""The two architectures: the seed's simple CNN and a timm ResNet-18 with a 64x64 stem."""
import torch
from torch import nn

from .errors import TheraError

__all__ = ['ByteDropout', 'SimpleCNN', 'simple_cnn', 'resnet18_64', 'RESNET_STEMS', 'ARCHS', 'create_model']

DEFAULT_WIDTHS = ((16,), (32, 32), (64, 64), (128, 128))
DEFAULT_HEAD = (64, 128)


def conv_bn_relu(ni, nf, padding_mode='zeros'):
    "3x3 convolution, BatchNorm, ReLU; the conv has no bias since BatchNorm supplies one."
    return nn.Sequential(nn.Conv2d(ni, nf, 3, padding=1, bias=False, padding_mode=padding_mode),
                         nn.BatchNorm2d(nf), nn.ReLU(inplace=True))


class ByteDropout(nn.Dropout):
    """`nn.Dropout` whose keep mask is drawn one byte per element: 8 elements per 64-bit draw.

    torch's CPU dropout draws one 32-bit number per element from a serial Mersenne twister; on the
    simple CNN's feature maps that was a sixth of a training step on 2 cores. Same Bernoulli mask
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


RESNET_STEMS = ('default', 'nopool', 'conv3')


def resnet18_64(stem='nopool', pretrained=False, weights=None, n_in=3):
    """A timm ResNet-18 with one logit and a stem altered for 64x64 input.

    `stem`: 'default' keeps timm's stem (2x2 final map), 'nopool' removes the stem max-pool
    (4x4 final map, the package default), 'conv3' replaces the 7x7 stride-2 conv by a 3x3
    stride-1 conv and removes the pool (8x8 final map, CIFAR-style). `pretrained=True` asks timm
    for its weights (needs the hub); `weights` is a local state-dict file loaded instead."""
    import timm
    if stem not in RESNET_STEMS: raise TheraError(f"unknown ResNet stem {stem!r}: use default, nopool or conv3")
    try: model = timm.create_model('resnet18', pretrained=pretrained and weights is None, num_classes=1, in_chans=n_in)
    except Exception as e:
        raise TheraError(f"timm could not get pretrained resnet18 weights ({type(e).__name__}); "
                         "pass --weights FILE with a local state dict, or train without --pretrained") from None
    if weights is not None: _load_backbone(model, weights)
    if stem in ('nopool', 'conv3'): model.maxpool = nn.Identity()
    if stem == 'conv3':
        model.conv1 = nn.Conv2d(n_in, 64, 3, stride=1, padding=1, bias=False)
    return model


def _load_backbone(model, path):
    "Loads a local timm resnet18 state dict, skipping the classifier (it has 1000 outputs there)."
    try: state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e: raise TheraError(f"{path}: cannot read weights ({e})") from None
    state = {k: v for k, v in state.items() if not k.startswith('fc.')}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {'fc.weight', 'fc.bias'}:
        raise TheraError(f"{path}: not a resnet18 state dict ({len(missing)} missing, {len(unexpected)} unexpected keys)")


ARCHS = {'simple': simple_cnn, 'resnet18': resnet18_64}


def create_model(arch, **kwargs):
    "Builds `arch` (a key of `ARCHS`, checked by `FitConfig`) from its keyword arguments."
    return ARCHS[arch](**kwargs)
