"""Opening the exercise from a zip or a folder, and refusing bad input with one clear line."""
import zipfile

import numpy as np
import pytest

from conftest import jpeg, synthetic_images, write_dataset, zip_folder
from thera_fastai.data.cache import cached_images
from thera_fastai.errors import TheraError
from thera_fastai.data.source import open_dataset, open_images, read_labels


def test_folder_and_zip_agree(tiny_folder, tiny_zip):
    a, b = open_dataset(tiny_folder, need_val=True), open_dataset(tiny_zip, need_val=True)
    assert a.train.names == b.train.names and len(a.train) == 96 and len(b.val) == 24
    assert (a.labels == b.labels).all() and a.labels.dtype == np.int8
    assert (cached_images(a.train) == cached_images(b.train)).all()


def test_parent_folder_of_the_exercise_is_accepted(tiny_folder):
    assert len(open_dataset(tiny_folder.parent).train) == 96


def test_image_n_pairs_with_label_line_n(tmp_path):
    labels = write_dataset(tmp_path/'d')
    ds = open_dataset(tmp_path/'d')
    imgs = cached_images(ds.train)
    dark_top = imgs[:, :18].mean((1, 2, 3)) < imgs[:, 30:].mean((1, 2, 3)) / 2
    assert (dark_top == (labels == 0)).all()


def test_labels_accept_crlf_and_trailing_blank_lines():
    assert read_labels("1\r\n0\r\n1\r\n\r\n\n", 'f').tolist() == [1, 0, 1]


@pytest.mark.parametrize('text, needle', [("1\n2\n", "line 2 is '2'"), ("1\n\n0\n", "line 2 is a blank line"),
                                          ("1\nyes\n", "line 2 is 'yes'"), ("", "label file is empty")])
def test_bad_labels_are_refused(text, needle):
    with pytest.raises(TheraError, match=needle): read_labels(text, 'label_train.txt')


def _err(path, **kw):
    with pytest.raises(TheraError) as e: open_dataset(path, **kw)
    return str(e.value)


def test_missing_path(tmp_path): assert _err(tmp_path/'nope') == f"{tmp_path/'nope'}: does not exist"


def test_zip_without_layout(tiny_folder, tmp_path):
    z = zip_folder(tiny_folder, tmp_path/'bad.zip', skip={'label_train.txt'})
    assert 'no label_train.txt' in _err(z)
    z2 = tmp_path/'nolayout.zip'
    with zipfile.ZipFile(z2, 'w') as zf: zf.writestr('x/label_train.txt', '1\n')
    assert 'no train_img/' in _err(z2)


def test_truncated_zip(tiny_zip, tmp_path):
    bad = tmp_path/'cut.zip'
    bad.write_bytes(tiny_zip.read_bytes()[: tiny_zip.stat().st_size // 2])
    assert 'not a readable zip' in _err(bad)


def test_label_count_mismatch(tiny_folder):
    lab = tiny_folder/'label_train.txt'
    lab.write_text(lab.read_text() + '1\n')
    assert '97 labels but only 96 images' in _err(tiny_folder)
    lab.write_text(''.join(lab.read_text().splitlines(keepends=True)[:90]))
    assert '96 images but only 90 labels: 000091.jpg has no label' in _err(tiny_folder)


def test_missing_image_in_sequence(tiny_folder):
    (tiny_folder/'train_img'/'000007.jpg').unlink()
    assert 'image number 7 is missing' in _err(tiny_folder)


def test_extra_image_without_label(tiny_folder):
    (tiny_folder/'train_img'/'000097.jpg').write_bytes((tiny_folder/'train_img'/'000001.jpg').read_bytes())
    assert '000097.jpg has no label' in _err(tiny_folder)


def test_badly_named_image(tiny_folder):
    (tiny_folder/'train_img'/'photo.jpg').write_bytes(b'')
    assert 'photo.jpg: image name is not a number' in _err(tiny_folder)


def test_corrupt_jpeg_is_named(tiny_folder):
    (tiny_folder/'train_img'/'000005.jpg').write_bytes(b'not a jpeg at all')
    ds = open_dataset(tiny_folder)
    with pytest.raises(TheraError, match=r'000005\.jpg: corrupt or not a JPEG'): cached_images(ds.train)


def test_wrong_size_is_refused(tiny_folder):
    (tiny_folder/'train_img'/'000003.jpg').write_bytes(jpeg(np.zeros((32, 48, 3), np.uint8)))
    with pytest.raises(TheraError, match=r'000003\.jpg: image is 48x32, expected 64x64'):
        cached_images(open_dataset(tiny_folder).train)


def test_grayscale_is_converted_with_a_warning(tiny_folder):
    import simplejpeg
    gray = simplejpeg.encode_jpeg(np.full((64, 64, 1), 77, np.uint8), colorspace='GRAY')
    (tiny_folder/'train_img'/'000004.jpg').write_bytes(gray)
    with pytest.warns(UserWarning, match='000004.jpg: Gray JPEG converted to RGB'):
        imgs = cached_images(open_dataset(tiny_folder).train)
    assert imgs.shape[1:] == (64, 64, 3) and abs(int(imgs[3].mean()) - 77) <= 2


def test_empty_val_folder(tiny_folder):
    for p in (tiny_folder/'val_img').iterdir(): p.unlink()
    assert 'val_img: folder holds no JPEG images' in _err(tiny_folder, need_val=True)
    with pytest.raises(TheraError, match='folder holds no JPEG images'): open_images(tiny_folder)


def test_open_images_takes_dataset_zip_or_any_folder(tiny_folder, tiny_zip, tmp_path):
    assert len(open_images(tiny_folder)) == len(open_images(tiny_zip)) == 24
    loose = tmp_path/'loose'; loose.mkdir()
    for i, img in enumerate(synthetic_images([1, 0, 1])): (loose/f"img{10 - i}.jpg").write_bytes(jpeg(img))
    assert open_images(loose).names == ['img8.jpg', 'img9.jpg', 'img10.jpg']


@pytest.mark.parametrize('names', [[f'{i:06d}.jpg' for i in range(1, 120)],               # the exercise's zero-padded names
                                   [f'{i}.jpg' for i in range(1, 120)],                      # unpadded: 2 < 10 < 100
                                   [f'{i:03d}.jpg' for i in range(1, 120)] + ['1000.jpg', '7.jpeg', 'b2.jpg', 'b10.JPG']])
def test_images_come_in_natural_file_name_order(names):
    from thera_fastai.data.source import _image_names, natural_key as _natural_key
    shuffled = list(np.random.default_rng(0).permutation(names)) + ['.hidden.jpg', 'notes.txt']
    ordered = _image_names(shuffled)
    assert ordered == sorted(names, key=_natural_key) and ordered.index('002.jpg' if '002.jpg' in names else names[1]) == 1


def test_a_zip_with_the_layout_in_two_folders_is_refused_naming_both(tiny_folder, tmp_path):
    zip_path = zip_folder(tiny_folder, tmp_path/'two.zip', root='copy_b')
    with zipfile.ZipFile(zip_path, 'a') as zf:
        for p in sorted(tiny_folder.rglob('*')):
            if p.is_file() and p.name != 'val_truth.txt': zf.write(p, f"ml_exercise_therapanacea/{p.relative_to(tiny_folder).as_posix()}")
    with pytest.raises(TheraError, match=r'two.zip: holds the exercise layout in 2 folders \(copy_b/, ml_exercise_therapanacea/\)'):
        open_dataset(zip_path)
    with pytest.raises(TheraError, match=r'holds val_img/ in 2 folders'): open_images(zip_path)


def test_a_row_list_that_is_not_text_is_one_error(tmp_path):
    from thera_fastai.data.rows import read_row_list
    (tmp_path/'rows.txt').write_bytes(b'\xff\xfe\x00\x81 binary')
    with pytest.raises(TheraError, match=r'rows.txt: the row list is not UTF-8 text'): read_row_list(tmp_path/'rows.txt', ['000001.jpg'])
