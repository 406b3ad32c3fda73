"""The architectures: shapes, the 64x64 stems of the simple CNN, ResNet-18 and any timm model, costs, and pretrained weights that fail clearly offline."""
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


@pytest.mark.parametrize('name', ['resnet10t', 'regnetx_002', 'mobilenetv3_small_100', 'convnext_atto', 'repvgg_a0'])
def test_any_timm_model_is_adapted_to_64px_by_one_rule(name):
    import timm
    from thera_fastai.models import timm_64
    side = {stem: timm_64(name, stem).forward_features(torch.randn(1, 3, 64, 64)).shape[-1] for stem in ('default', 'x2', 'x4')}
    assert side['x2'] == 2 * side['default'] and side['x4'] == 4 * side['default']
    assert side['default'] == timm.create_model(name).forward_features(torch.randn(1, 3, 64, 64)).shape[-1]
    m = timm_64(name)
    assert m(torch.randn(2, 3, 64, 64)).shape == (2, 1)


def test_unknown_arch_names_the_closest_timm_models():
    from thera_fastai.models import check_arch
    with pytest.raises(TheraError) as e: check_arch('convnext_ato')
    assert 'closest names: convnext_atto' in str(e.value) and e.value.param == 'arch'
    assert check_arch('simple') == 'simple' and check_arch('efficientnet_b0') == 'efficientnet_b0'


def test_model_profile_counts_parameters_and_training_flops():
    from thera_fastai.models import model_profile
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    p = model_profile(conv)
    assert p['params'] == 8 * 3 * 9
    assert p['train_gflop'] == pytest.approx(3 * 2 * 8 * 3 * 9 * 64 * 64 / 1e9)
    simple, air = model_profile(SimpleCNN()), model_profile(create_model('airbench'))
    assert simple['params'] == sum(q.numel() for q in SimpleCNN().parameters()) and 0.2 < simple['train_gflop'] < 0.4
    assert air['train_gflop'] > simple['train_gflop']


def test_airbench_net_gives_one_logit_at_64px():
    m = create_model('airbench')
    assert m(torch.randn(4, 3, 64, 64)).shape == (4, 1)


@pytest.mark.parametrize('arch', ['simple', 'airbench', 'resnet10t'])
def test_a_model_at_32px_averages_each_2x2_block_first_and_costs_a_quarter(arch):
    from thera_fastai.models import Downsample, first_conv, model_profile
    torch.manual_seed(0)
    full, low = create_model(arch), create_model(arch, resolution=32)
    assert isinstance(low[0], Downsample) and not any(isinstance(m, Downsample) for m in full.modules())
    low.eval()
    x = torch.randn(3, 3, 64, 64)
    pooled = (x[..., ::2, ::2] + x[..., 1::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, 1::2]) / 4
    rest = low[1:] if len(low) > 2 else low[1]
    with torch.no_grad(): assert torch.allclose(low(x), rest(pooled), atol=1e-5)
    assert model_profile(low)['train_gflop'] == pytest.approx(model_profile(full)['train_gflop'] / 4, rel=0.05)
    assert first_conv(low) is next(m for m in rest.modules() if isinstance(m, torch.nn.Conv2d))


def test_airbench_widths_set_its_three_blocks_and_come_from_the_config_and_the_command_line():
    from thera_fastai.cli import parse_widths
    from thera_fastai.config import FitConfig
    from thera_fastai.models import model_profile
    cfg = FitConfig(widths=parse_widths('32/128/128', 'airbench'))
    assert cfg.widths == (32, 128, 128) and FitConfig.from_dict(cfg.to_dict()).widths == (32, 128, 128)
    narrow, full = create_model('airbench', **cfg.model_kwargs()), create_model('airbench')
    outs = [m.out_channels for m in narrow.modules() if isinstance(m, torch.nn.Conv2d)]
    assert outs == [24, 32, 32, 128, 128, 128, 128] and narrow(torch.zeros(2, 3, 64, 64)).shape == (2, 1)
    assert model_profile(narrow)['train_gflop'] < model_profile(full)['train_gflop'] / 3
    simple = FitConfig(arch='simple', widths=parse_widths('8/16,16'))
    assert simple.widths == ((8,), (16, 16)) and simple.model_kwargs() == dict(widths=((8,), (16, 16)))
    for arch, bad in (('airbench', (32, 128)), ('airbench', ((32,), (64,), (64,))), ('airbench', (0, 8, 8)), ('simple', (8, 16))):
        with pytest.raises(TheraError, match='widths'): FitConfig(arch=arch, widths=bad)
    with pytest.raises(TheraError, match='widths'): FitConfig(arch='resnet18', widths=(8, 8, 8))
    with pytest.raises(TheraError, match='widths'): parse_widths('32/x/128')


@pytest.mark.parametrize('head, width', [('max', 256), ('concat', 512), ('grid', 256 * 16)])
def test_each_airbench_head_gives_one_logit_from_its_pooled_width(head, width):
    m = create_model('airbench', head=head)
    linear = next(x for x in m.modules() if isinstance(x, torch.nn.Linear))
    assert linear.in_features == width and m(torch.randn(2, 3, 64, 64)).shape == (2, 1)


def test_the_grid_head_keeps_where_a_feature_is_and_the_max_head_does_not():
    from thera_fastai.models import pool_head
    top, bottom = torch.zeros(1, 8, 4, 4), torch.zeros(1, 8, 4, 4)
    top[0, 3, 0, 1], bottom[0, 3, 3, 1] = 1.0, 1.0  # the same feature at the top and at the bottom of the map
    def pooled(head, x): return torch.nn.Flatten()(pool_head(head, 8)[0](x))
    assert torch.equal(pooled('max', top), pooled('max', bottom))
    assert not torch.equal(pooled('grid', top), pooled('grid', bottom)) and pooled('grid', top).sum() == 1
    assert torch.equal(pooled('concat', top)[:, :8], pooled('max', top)) and pooled('concat', top)[0, 11] == 1 / 16


def test_the_head_is_the_airbench_nets_own_and_is_checked_before_a_run_starts():
    from thera_fastai.config import FitConfig
    from thera_fastai.runs import run_id
    cfg = FitConfig(head='grid')
    assert cfg.model_kwargs()['head'] == 'grid' and FitConfig.from_dict(cfg.to_dict()).head == 'grid'
    assert 'head' not in FitConfig().model_kwargs() and run_id(FitConfig(head='max'), 'k') != run_id(FitConfig(), 'k')
    for bad, match in ((dict(head='avg'), 'head'), (dict(arch='simple', head='max'), 'head'), (dict(head='grid', resolution=32), 'resolution')):
        with pytest.raises(TheraError, match=match): FitConfig(**bad)
