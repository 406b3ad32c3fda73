"""The two architectures: shapes, the 64x64 stems, and pretrained weights that fail clearly offline."""
import pytest
import torch

from thera_fastai.errors import TheraError
from thera_fastai.models import ByteDropout, SimpleCNN, create_model, resnet18_64


def test_simple_cnn_matches_the_spec():
    m = create_model('simple')
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert sum(isinstance(l, torch.nn.BatchNorm2d) for l in m.modules()) == 7
    assert {l.p for l in m.modules() if isinstance(l, torch.nn.Dropout)} == {0.25}
    lins = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lins] == [(128, 64), (64, 128), (128, 1)]
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 1)


@pytest.mark.parametrize('channels_last', [True, False])
def test_byte_dropout_is_a_dropout(channels_last):
    x = torch.ones(32, 16, 32, 32)
    if channels_last: x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    drop = ByteDropout(0.25)
    torch.manual_seed(0); y = drop(x)
    keep = (y != 0).float()
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert y.unique().tolist() == [0.0, pytest.approx(4 / 3)]
    assert abs(keep.mean().item() - 0.75) < 0.003
    per_channel, per_row = keep.mean((0, 2, 3)), keep.mean((0, 1, 3))  # no byte of a draw may be biased
    assert per_channel.min() > 0.73 and per_channel.max() < 0.77 and per_row.min() > 0.73 and per_row.max() < 0.77
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * mask / 0.75)/dx = mask / 0.75 = y where x is 1
    torch.manual_seed(0); assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)
    assert torch.equal(drop.eval()(x), x)


def test_simple_cnn_widths_are_configurable():
    m = SimpleCNN(widths=((8,), (16,)), head=(32,))
    assert m(torch.randn(3, 3, 64, 64)).shape == (3, 1)


@pytest.mark.parametrize('stem, fmap', [('default', 2), ('nopool', 4), ('conv3', 8)])
def test_resnet_stems_for_64px(stem, fmap):
    m = resnet18_64(stem)
    feats = m.forward_features(torch.randn(1, 3, 64, 64))
    assert feats.shape[-2:] == (fmap, fmap)
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 1)


def test_pretrained_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('HF_HOME', str(tmp_path))
    with pytest.raises(TheraError, match='could not get pretrained resnet18 weights'): resnet18_64(pretrained=True)


def test_local_weights_load_and_bad_ones_are_refused(tmp_path):
    import timm
    src = timm.create_model('resnet18', num_classes=1000)
    torch.save(src.state_dict(), tmp_path/'r18.pth')
    m = resnet18_64('nopool', weights=tmp_path/'r18.pth')
    assert torch.equal(m.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    torch.save({'x': torch.zeros(1)}, tmp_path/'bad.pth')
    with pytest.raises(TheraError, match='not a resnet18 state dict'): resnet18_64(weights=tmp_path/'bad.pth')
