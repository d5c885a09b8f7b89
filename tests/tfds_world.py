"""Tiny TFDS datasets written by the tests into a temp data_dir (no download), and the same images as a folder."""

import io

import numpy as np
from PIL import Image


def tiny_images(count, size=(20, 16), constant=False, seed=0):
    """(images, labels): label = index % 2 (class 'dark' or 'light', by brightness). `constant`: each image one
    colour that names its index (red = index, green = 255 * label), which survives any crop, flip or resize."""
    rng = np.random.default_rng(seed)
    images, labels = [], np.arange(count) % 2
    for i, label in enumerate(labels):
        if constant:
            images.append(np.broadcast_to(np.array([i, 255 * label, 7], np.uint8), (*size, 3)).copy())
        else:
            images.append(rng.integers(0, 128, (*size, 3), dtype=np.uint8) + np.uint8(127 * label))
    return images, labels


def write_tiny_tfds(
    data_dir,
    name='tiny_images',
    train=12,
    validation=6,
    file_format='array_record',
    bad=(),
    decoded=False,
    constant=False,
    file_names=None,
):
    """Prepares TFDS dataset `name` (version 1.0.0, classes 'dark' and 'light') in `data_dir` from tiny_images:
    `train` and `validation` examples in index order. Train examples whose index is in `bad` hold bytes that
    are no image. `decoded`: the image feature is a plain uint8 array, not an encoded Image. `file_names`: a
    function (split, index) -> name, ImageNet's `file_name` Text feature of each example."""
    import tensorflow_datasets as tfds  # after jax_ema.data (triton, then tensorflow)

    size = (20, 16)
    image = (
        tfds.features.Tensor(shape=(*size, 3), dtype=np.uint8)
        if decoded
        else tfds.features.Image(shape=(None, None, 3), encoding_format='png')
    )
    spec = {'image': image, 'label': tfds.features.ClassLabel(names=['dark', 'light'])}
    features = tfds.features.FeaturesDict(dict(spec, file_name=tfds.features.Text()) if file_names else spec)

    def examples(count, corrupt, seed, split):
        images, labels = tiny_images(count, size, constant, seed)
        for i, (pixels, label) in enumerate(zip(images, labels)):
            example = {'image': io.BytesIO(b'no image here') if i in corrupt else pixels, 'label': int(label)}
            yield i, dict(example, file_name=file_names(split, i)) if file_names else example

    return tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version='1.0.0',
        features=features,
        split_datasets={
            'train': list(examples(train, bad, 0, 'train')),
            'validation': list(examples(validation, (), 1, 'validation')),
        },
        data_dir=str(data_dir),
        file_format=file_format,
        disable_shuffling=True,
    )


def write_folder(root, split, count, seed):
    """The images of tiny_images(count, seed=seed) as root/split/<class>/<index>.png."""
    images, labels = tiny_images(count, seed=seed)
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / split / ('dark', 'light')[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f'{i}.png')
    return root
