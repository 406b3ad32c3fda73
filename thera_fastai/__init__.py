"""thera_fastai: the Therapanacea face-occlusion exercise, from zip to `label_val.txt`, on fastai.

    import thera_fastai as tf
    summary = tf.fit('ml_exercise_therapanacea.zip', 'runs/simple', folds=5)
    labels = tf.predict('runs/simple', 'ml_exercise_therapanacea.zip')
    learn = tf.load_fold_learner('runs/simple/fold0', data='ml_exercise_therapanacea.zip')  # lr_find, tta, interpretation

Names are imported on first use, so `import thera_fastai` stays fast."""
import sys, types, warnings

# fastai's layers call torch.jit.script at import, which torch 2.14 deprecates: a notice about fastai, not the user's code.
warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)

__version__ = '0.10.0'

_EXPORTS = {'fit': 'api', 'predict': 'api', 'report': 'api', 'explore': 'api', 'compare': 'api', 'audit': 'api',
            'load_fold_learner': 'learner', 'grad_cam': 'saliency', 'plot_saliency': 'saliency', 'create_model': 'models',
            'model_profile': 'models',
            'FitConfig': 'config', 'Runtime': 'config', 'RECIPES': 'config', 'TheraError': 'errors', 'error_rates': 'metrics',
            'hter': 'metrics', 'open_dataset': 'source', 'cached_images': 'cache', 'fold_rows': 'runs', 'read_oof': 'runs',
            'dataset_table': 'explore', 'sample_grid': 'explore', 'label_conflicts': 'explore',
            'fold_splits': 'folds', 'sample_rows': 'folds', 'fold_dataloaders': 'data', 'thera_learner': 'learner',
            'top_losses': 'plots', 'plot_top_losses': 'plots', 'oof_saliency': 'saliency'}
__all__ = list(_EXPORTS)


class _Package(types.ModuleType):
    "Keeps an exported function (`report`, `explore`) when Python binds the submodule of the same name onto the package."
    def __setattr__(self, name, value):
        if name in _EXPORTS and isinstance(value, types.ModuleType): return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name not in _EXPORTS: raise AttributeError(f"module 'thera_fastai' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__(): return sorted(list(globals()) + __all__)
