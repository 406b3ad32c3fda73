"""thera_fastai: the Therapanacea face-occlusion exercise, from zip to `label_val.txt`, on fastai.

    import thera_fastai as tf
    summary = tf.fit('ml_exercise_therapanacea.zip', 'runs/simple', folds=5)
    labels = tf.predict('runs/simple', 'ml_exercise_therapanacea.zip')
    learn = tf.load_fold_learner('runs/simple/fold0', data='ml_exercise_therapanacea.zip')  # lr_find, tta, interpretation

Names are imported on first use, so `import thera_fastai` stays fast."""
import warnings

# fastai's layers call torch.jit.script at import, which torch 2.14 deprecates: a notice about fastai, not the user's code.
warnings.filterwarnings('ignore', message=r'`torch\.jit\.script` is deprecated', category=FutureWarning)

__version__ = '0.26.0'

_EXPORTS = {'fit': 'api', 'predict': 'api', 'report': 'api', 'explore': 'api', 'compare': 'api', 'audit': 'api',
            'load_fold_learner': 'train.learner', 'thera_learner': 'train.learner', 'create_model': 'models', 'model_profile': 'models',
            'FitConfig': 'config', 'Runtime': 'config', 'RECIPES': 'config', 'TheraError': 'errors', 'error_rates': 'metrics',
            'hter': 'metrics', 'open_dataset': 'data.source', 'cached_images': 'data.cache', 'fold_rows': 'data.rows', 'read_oof': 'runs',
            'fold_splits': 'data.folds', 'sample_rows': 'data.folds', 'fold_dataloaders': 'data.loaders',
            'dataset_table': 'analysis.explore', 'sample_grid': 'analysis.explore', 'label_conflicts': 'analysis.explore',
            'top_losses': 'analysis.plots', 'plot_top_losses': 'analysis.plots',
            'grad_cam': 'analysis.saliency', 'plot_saliency': 'analysis.saliency', 'oof_saliency': 'analysis.saliency'}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS: raise AttributeError(f"module 'thera_fastai' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__(): return sorted(list(globals()) + __all__)
