"""Images found in the field: files PIL reads for timm under a .png/.jpg name that are not PNG or JPEG; a
truncated JPEG across a resume."""

import io
import types

import numpy as np
import pytest
from PIL import Image

import data_world
from data_world import class_folders, concat, make_classes, save_image
from jax_ema import data, data_fingerprint, records
from jax_ema.errors import UserError

listing_cache = data_world.listing_cache  # fixture


def test_bmp_webp_and_animated_gif_under_an_image_name_read_as_pil_reads_them(tmp_path):
    """timm's reader opens any file PIL knows, whatever its extension says; TensorFlow's PNG decoder refused a
    BMP and gave a WebP a frame axis (the file was skipped as unreadable). Now each decodes as PIL's convert('RGB')
    (a GIF: its first frame), in --verify-images and in the batches."""
    class_folders(tmp_path, ['a', 'b'], per_class=2)
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(4)]
    odd = tmp_path / 'validation' / 'a'
    Image.fromarray(pixels[0]).save(odd / 'bmp.jpg', 'BMP')
    Image.fromarray(pixels[1]).save(odd / 'webp.png', 'WEBP', lossless=True)
    frames = [Image.fromarray(p).quantize(64) for p in pixels[2:]]
    frames[0].save(odd / 'anim.png', 'GIF', save_all=True, append_images=frames[1:])
    cfg = data.DataConfig(data_dir=str(tmp_path), img_size=40, crop_pct=1.0, verify_images=True)
    _, val = data.load_datasets(cfg)
    assert {'bmp.jpg', 'webp.png', 'anim.png'} <= {p.rsplit('/', 1)[1] for p in val.paths}
    batch = concat(list(val.eval_batches(4)))
    assert batch['mask'][: val.num_examples].all() and val.skipped_images('eval') == 0
    for path, image in zip(val.paths, batch['image']):
        if path.endswith(('bmp.jpg', 'webp.png', 'anim.png')):
            np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert('RGB')), err_msg=path)


def _truncated_jpeg_folder(root):
    """train/a holds a JPEG cut at 80 %: a crop window in its top part decodes, one reaching the cut fails."""
    class_folders(root, ['a', 'b'], per_class=4)
    encoded = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 160, 3), np.uint8)).save(encoded, 'JPEG')
    (root / 'train' / 'a' / 'cut.jpg').write_bytes(encoded.getvalue()[: len(encoded.getvalue()) * 4 // 5])
    return data.DataConfig(data_dir=str(root), img_size=32, scale=(0.08, 1.0))


@pytest.mark.slow
def test_a_resume_skips_the_truncated_jpegs_found_before_it_so_its_batches_are_the_uninterrupted_ones(tmp_path):
    """Once a truncated JPEG's window fails, the file is skipped from then on. A fresh process (a resume) used to
    forget that, and used the file again in the epochs where its window missed the cut: other batches than the
    uninterrupted run's. The checkpoint keeps where each file was found (records.metadata); a resume skips those
    found before its batch, and finds the later ones again at the same batch (the same window)."""
    cfg = _truncated_jpeg_folder(tmp_path)
    whole, val = data.load_datasets(cfg)
    epochs = [concat(list(whole.train_batches(3, epoch))) for epoch in range(5)]
    found = [[i, e, s] for i, (e, s) in whole.found.items()]
    assert found == [[4, 0, 1]]  # found at epoch 0, step 1; in epoch 4 its window misses the cut
    meta = dict(data=data_fingerprint.of_datasets(whole, val), global_batch_size=3, updates_per_epoch=5)
    meta['unreadable_found'] = found
    for epoch, start in [(4, 0), (0, 2), (0, 1)]:
        resumed = data.load_datasets(cfg)[0]
        run = types.SimpleNamespace(train_ds=resumed, batch_size=3, updates_per_epoch=5)
        records.resume_position(run, types.SimpleNamespace(step=5 * epoch + start), meta, meta['data'], 'CKPT')
        got = concat(list(resumed.train_batches(3, epoch, start_step=start)))
        np.testing.assert_array_equal(got['image'], epochs[epoch]['image'][3 * start :], err_msg=f'{epoch} {start}')
    forgot = data.load_datasets(cfg)[0]  # what a resume did before
    assert not np.array_equal(concat(list(forgot.train_batches(3, 4)))['image'], epochs[4]['image'])


def test_a_class_folder_with_its_images_in_a_sub_folder_says_so(tmp_path):
    """A class folder with its images in a sub-folder (as Tiny-ImageNet's train/<class>/images/*.JPEG; timm takes
    the leaf folder 'images' as the class): sub-folders are not searched, and the line now says so."""
    class_folders(tmp_path, ['a', 'b'], per_class=1)
    (tmp_path / 'train' / 'c' / 'images').mkdir(parents=True)
    (tmp_path / 'train' / 'c' / 'images' / '0.JPEG').write_bytes((tmp_path / 'train' / 'a' / '0.png').read_bytes())
    with pytest.raises(UserError, match=r"train/c holds no .*images; sub-folders such as 'images' are not searched"):
        data.load_datasets(data.DataConfig(data_dir=str(tmp_path)))


def test_validate_warns_when_the_held_out_split_is_drawn_anew_from_changed_class_folders(tmp_path):
    """Class folders split by --val-split-fraction: after an image is added, validate's split is drawn anew and
    may hold training images (a silent leak before). Unchanged folders, or train/validation folders: no line."""
    make_classes(str(tmp_path / 'ds'), ['a', 'b'], per_class=5)
    cfg = data.DataConfig(data_dir=str(tmp_path / 'ds'), img_size=32, val_split_fraction=0.4)
    saved = data_fingerprint.of_datasets(*data.load_datasets(cfg))  # what the run's checkpoints record
    args = {'val_split': 'validation', 'train_split': 'train'}
    assert data_fingerprint.resplit_warning(saved, data.load_datasets(cfg)[1], 'validation', args) is None
    save_image(str(tmp_path / 'ds' / 'a' / '9.png'), seed=9)
    line = data_fingerprint.resplit_warning(saved, data.load_datasets(cfg)[1], 'validation', args)
    assert line.startswith('DATA changed since the run (validation split: ') and 'images the run trained on' in line
    class_folders(tmp_path / 'splits', ['a', 'b'])
    split_cfg = data.DataConfig(data_dir=str(tmp_path / 'splits'), img_size=32)
    assert data_fingerprint.resplit_warning(saved, data.load_datasets(split_cfg)[1], 'validation', args) is None


def test_folders_a_disk_or_an_archiver_makes_are_not_classes(tmp_path):
    """DATA on its own volume holds lost+found (empty, or unreadable to a user), a zip made on a Mac __MACOSX/
    (AppleDouble ._ files): each stopped the run as an empty or unreadable class folder. Now skipped, as hidden
    entries are, and counted in the skipped-entries line."""
    class_folders(tmp_path, ['a', 'b'], splits=('',))
    (tmp_path / 'lost+found').mkdir()
    (tmp_path / '__MACOSX' / 'a').mkdir(parents=True)
    (tmp_path / '__MACOSX' / 'a' / '._0.png').write_bytes(b'\0\5\26\7' + bytes(80))
    (tmp_path / '__MACOSX' / '0.png').write_bytes(b'\0\5\26\7' + bytes(80))
    train, val = data.load_datasets(data.DataConfig(data_dir=str(tmp_path), img_size=32, val_split_fraction=0.34))
    assert train.class_names == ('a', 'b') and train.num_examples + val.num_examples == 6
