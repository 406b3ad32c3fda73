"""thera-explore's sample grid."""
import matplotlib.image as mpimg
import numpy as np

from thera_fastai.analysis.explore import sample_grid


def test_sample_grid_wraps_many_images_into_rows(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (60, 64, 64, 3), dtype=np.uint8)
    labels = np.arange(60) % 2
    shapes = {}
    for n in (8, 20):
        sample_grid(images, labels, tmp_path/f'{n}.png', n=n)
        shapes[n] = mpimg.imread(tmp_path/f'{n}.png').shape
    assert shapes[20][1] == shapes[8][1]  # at most 8 columns either way
    assert shapes[20][0] > 2.5 * shapes[8][0]  # 3 rows per class instead of 1
