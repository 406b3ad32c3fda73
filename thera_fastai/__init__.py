"""thera_fastai: the Therapanacea face-occlusion exercise, from zip to `label_val.txt`, on fastai.

    import thera_fastai as tf
    summary = tf.fit('ml_exercise_therapanacea.zip', 'runs/simple', folds=5)
    labels = tf.predict('runs/simple', 'ml_exercise_therapanacea.zip')
    learn = tf.load_fold_learner('runs/simple/fold0', data='ml_exercise_therapanacea.zip')  # lr_find, tta, interpretation

Names are imported on first use, so `import thera_fastai` stays fast."""
__version__ = '0.2.0'

_EXPORTS = {'fit': 'api', 'predict': 'api', 'report': 'api', 'explore': 'api', 'load_fold_learner': 'learner',
            'FitConfig': 'config', 'Runtime': 'config', 'RECIPES': 'config', 'TheraError': 'errors', 'error_rates': 'metrics',
            'hter': 'metrics', 'open_dataset': 'source', 'cached_images': 'cache', 'fold_rows': 'runs'}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS: raise AttributeError(f"module 'thera_fastai' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__(): return sorted(list(globals()) + __all__)
