"""thera_fastai: the Therapanacea face-occlusion exercise, from zip to `label_val.txt`, on fastai."""
__version__ = '0.1.0'
