"""A run's fold models as ONNX graphs (uint8 images in, P(clean face) out) with the thresholds and vote rule in JSON,
and a predictor that needs neither torch nor fastai (`onnx_predict.py`, copied beside them)."""
import shutil
from pathlib import Path

import torch
from torch import nn

from .ensemble import VOTE_RULES, check_vote_rule, load_fold_models
from ..config import COMMAND_DEFAULTS as _C
from ..files import atomic_folder, atomic_write, write_json

__all__ = ['OnnxFold', 'export_run']


class OnnxFold(nn.Module):
    "A fold's model with what surrounds it in fastai: uint8 NHWC in, /255, the fold's normalization, sigmoid out."
    def __init__(self, model, stats):
        super().__init__()
        self.model = model
        self.register_buffer('mean', torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer('std', torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).float() / 255
        return torch.sigmoid(self.model((x - self.mean) / self.std)).view(-1)


def export_run(run,  # A thera-fit run folder
               out,  # Folder to write fold<k>.onnx, ensemble.json and predict.py into
               partial:bool=False,  # Export the finished folds when some are missing
               vote:str=_C['vote'],  # How the folds decide: soft (the mean probability at the mean threshold) or hard (the majority)
              ):
    """Exports every fold of `run` to ONNX in fp32 (no TTA); returns the manifest written as ensemble.json. The folder is
    written beside `out` and renamed onto it whole: an interrupted or failed export leaves no part of one."""
    check_vote_rule(vote)
    models, run_info = load_fold_models(run, device='cpu', partial=partial, precision='fp32')
    with atomic_folder(out, 'export') as tmp: return _write_export(models, run_info, tmp, vote)


def _write_export(models, run_info, out, rule):
    folds = []
    for m in models:
        net = OnnxFold(m.learn.model.float().eval().to(memory_format=torch.contiguous_format), m.learn.fold_info['stats']).eval()
        example = torch.zeros(2, *run_info['config']['image_size'], dtype=torch.uint8)
        name = f"fold{m.fold}.onnx"
        atomic_write(out/name, lambda tmp: torch.onnx.export(net, (example,), str(tmp), input_names=['images'], output_names=['prob'],
                                                             dynamic_axes={'images': {0: 'n'}, 'prob': {0: 'n'}}, dynamo=False))
        folds.append(dict(fold=m.fold, file=name, threshold=m.threshold))
    manifest = dict(run_id=run_info['run_id'], arch=run_info['config']['arch'], image_size=run_info['config']['image_size'],
                    input='uint8 (N, H, W, 3) RGB', output='P(class 1: clean face)', tta=0, folds=folds,
                    vote_rule=rule, vote=VOTE_RULES[rule])
    write_json(out/'ensemble.json', manifest)
    shutil.copyfile(Path(__file__).with_name('onnx_predict.py'), out/'predict.py')
    return manifest
