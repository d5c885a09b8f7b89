"""Images found in the field: files PIL reads for timm under a .png/.jpg name that are not PNG or JPEG."""

import numpy as np
from PIL import Image

import data_world
from data_world import class_folders, concat
from jax_ema import data

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
