"""Image folders: finding splits and classes as timm does, listing the images (cached), checking them.

Layouts: DATA/<train_split>/<class>/<image> beside DATA/<val_split>/<class>/<image> (source 'splits'),
or DATA/<class>/<image> split stratified by `val_split_fraction` (source 'folders').

Start-up reads no image: a folder's listing (class folders, image files in timm's natural order) is
cached under ~/.cache/jax_ema/listings (or $JAX_EMA_CACHE), keyed by the folder's entries and their
modification times, which change whenever a file is added, removed or renamed in a class folder.
File names that are not UTF-8 are kept (Python's surrogate escapes; their bytes go to TensorFlow).
"""

import contextlib
import hashlib
import logging
import math
import os
import re
import sys
import tempfile
from concurrent import futures

import numpy as np
import tensorflow as tf  # already imported, after triton, by jax_ema.data

from jax_ema.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')  # timm's IMG_EXTENSIONS, matched in any letter case
TRAIN_SPLIT_SYNONYMS = ('train', 'training')  # timm.data.dataset_factory, in its search order
EVAL_SPLIT_SYNONYMS = ('val', 'valid', 'validation', 'eval', 'evaluation')
# Folders a file system or an archiver makes, never classes: a disk's root (DATA on its own volume), a macOS zip
SYSTEM_FOLDERS = ('lost+found', '__MACOSX', '$RECYCLE.BIN', 'System Volume Information')
SPLIT_SEED = 0  # the train/validation split of 'folders' and 'digits' never depends on --seed
CACHE_ENV = 'JAX_EMA_CACHE'
_LISTING_VERSION = b'jax_ema listing 2'  # 2: SYSTEM_FOLDERS skipped

log = logging.getLogger(__name__)


def natural_key(text: str) -> list:
    """timm's sort key (timm.utils.misc.natural_key): lower case, digit runs compared as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', text.lower())]


def printable(path: str) -> str:
    """`path` for a message: bytes that are not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode('utf-8', 'backslashreplace')


def stratified_split(labels: np.ndarray, fraction: float, class_names, where: str):
    """(train, val) index arrays in increasing order; each class gives round(fraction * its size)."""
    rng = np.random.default_rng(SPLIT_SEED)
    val = []
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        if not len(members):  # a --class-map class without a folder
            continue
        n_val = math.floor(fraction * len(members) + 0.5)
        if not 1 <= n_val < len(members):
            raise UserError(
                f'class {printable(name)!r} in {where} has {len(members)} images, too few to put '
                f'a fraction {fraction} of them into validation; add images or make '
                'train/validation split folders'
            )
        val.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val), val


def load_folders(cfg) -> tuple[str, list[str], tuple, tuple]:
    """(source, class names, (train paths, labels), (val paths, labels)) of the folders at cfg.data_dir."""
    root = os.path.abspath(os.path.expanduser(cfg.data_dir))
    if not os.path.exists(root):
        raise UserError(
            f'data folder {printable(root)} does not exist; pass an existing folder as DATA '
            '(or none for the built-in digits)'
        )
    if not os.path.isdir(root):
        raise UserError(
            f'DATA {printable(root)} is not a folder; pass a folder holding <class>/<image> or '
            'train/<class>/<image> and validation/<class>/<image>'
        )
    train_dir = _search_split(root, cfg.train_split, TRAIN_SPLIT_SYNONYMS)
    val_dir = _search_split(root, cfg.val_split, EVAL_SPLIT_SYNONYMS)
    if train_dir is not None:
        if val_dir is None:
            tried = ', '.join(_split_candidates(cfg.val_split, EVAL_SPLIT_SYNONYMS))
            raise UserError(
                f'{printable(train_dir)} has no validation folder beside it (looked for {tried}); '
                'add one, name it with --val-split, or put the class folders directly in DATA'
            )
        train_names, *train = list_folder(train_dir)
        val_names, *val = list_folder(val_dir)
        if cfg.class_map:  # labels from the map, in each split alone (as timm)
            class_to_idx = read_class_map(cfg.class_map, root)
            train_names, *train = apply_class_map(class_to_idx, train_names, *train, train_dir)
            val_names, *val = apply_class_map(class_to_idx, val_names, *val, val_dir)
        elif sorted(train_names) != sorted(val_names):
            only_train = [printable(n) for n in sorted(set(train_names) - set(val_names))]
            only_val = [printable(n) for n in sorted(set(val_names) - set(train_names))]
            raise UserError(
                f'class folders differ between {printable(train_dir)} and {printable(val_dir)} '
                f'(only in train: {only_train}, only in validation: {only_val}); give both the '
                'same class folders'
            )
        return 'splits', train_names, tuple(train), tuple(val)
    if cfg.train_split not in TRAIN_SPLIT_SYNONYMS or val_dir is not None:
        found = f' but {printable(val_dir)} exists' if val_dir is not None else ''
        raise UserError(
            f'no train split folder {printable(os.path.join(root, cfg.train_split))}{found}; add '
            'it, name it with --train-split, or put the class folders directly in DATA'
        )
    names, paths, labels = list_folder(root)
    if cfg.class_map:
        names, paths, labels = apply_class_map(read_class_map(cfg.class_map, root), names, paths, labels, root)
    train_rows, val_rows = stratified_split(labels, cfg.val_split_fraction, names, printable(root))
    return (
        'folders',
        names,
        ([paths[i] for i in train_rows], labels[train_rows]),
        ([paths[i] for i in val_rows], labels[val_rows]),
    )


def read_class_map(filename: str, root: str) -> dict:
    """timm's load_class_map: {class name: index} from a .txt (a name a line, stripped; index = line number);
    `filename` as given, else relative to DATA. timm's .pkl maps are refused: unpickling can run code."""
    path = filename if os.path.exists(filename) else os.path.join(root, filename)
    ext = os.path.splitext(filename)[1].lower()
    if ext == '.pkl':
        raise UserError(
            f'--class-map {filename!r}: a pickled class map is not read here (unpickling can run code); write it '
            'as a .txt, one class name a line in index order'
        )
    if ext != '.txt':
        raise UserError(f'--class-map {filename!r} is not a .txt; give a text file, a class name a line')
    try:
        with open(path, encoding='utf-8') as f:
            class_to_idx = {line.strip(): index for index, line in enumerate(f)}
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f'cannot read --class-map {filename!r} ({err}); give a readable .txt file') from None
    ok = isinstance(class_to_idx, dict) and class_to_idx
    if not ok or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in class_to_idx.values()):
        raise UserError(f'--class-map {filename!r} is not a non-empty {{class name: index >= 0}} mapping; fix the file')
    return class_to_idx


def apply_class_map(class_to_idx: dict, names, paths, labels, where: str):
    """(class names by index, paths, labels) with each folder's label taken from the map; images of folders
    the map lacks are left out (timm's find_images_and_targets). There are max(index) + 1 classes."""
    num_classes = max(class_to_idx.values()) + 1
    mapped = np.array([class_to_idx.get(name, -1) for name in names], np.int64)
    keep = mapped[labels] >= 0
    if not keep.any():
        raise UserError(f'no class folder of {printable(where)} is in --class-map; check the file against the folders')
    out_names = [f'<class {i}>' for i in range(num_classes)]
    for name, index in reversed(list(class_to_idx.items())):  # the first name of an index wins
        out_names[index] = name
    return out_names, [p for p, k in zip(paths, keep) if k], mapped[labels][keep].astype(np.int32)


def _split_candidates(split: str, synonyms) -> list[str]:
    return [split] + [s for s in synonyms if s != split] if split in synonyms else [split]


def _search_split(root: str, split: str, synonyms) -> str | None:
    """timm's rule: DATA/<split>; if missing and <split> is a known synonym, the first synonym present."""
    for name in _split_candidates(split, synonyms):
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def _scandir(folder: str) -> list:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as err:
        raise UserError(
            f'cannot read {printable(folder)}: {err.strerror or err}; check that it exists and is readable'
        ) from None


def list_folder(root: str) -> tuple[list[str], list[str], np.ndarray]:
    """(class names, image paths, labels) of root/<class>/<image>, from the cache when it is warm."""
    entries = _scandir(root)
    key = hashlib.sha256(
        b'\0'.join(
            [_LISTING_VERSION, os.fsencode(root)]
            + [os.fsencode(e.name) + b'/' + str(_mtime(e)).encode() for e in entries]
        )
    ).hexdigest()
    cached = _read_listing(key, root)
    if cached is None:
        classes, skipped = _scan(root, entries)
        names = _class_names(classes)
        paths, labels = _examples(classes, names, root)
        _write_listing(key, root, names, paths, labels, skipped)
    else:
        names, paths, labels, skipped = cached
    if skipped:
        log.warning(
            'skipped %d entries under %s that are not %s images (first: %s)',
            len(skipped),
            printable(root),
            '/'.join(IMAGE_EXTENSIONS),
            printable(skipped[0]),
        )
    return names, paths, labels


def _mtime(entry) -> int:
    try:
        return entry.stat().st_mtime_ns
    except OSError:
        return -1


def _scan(root: str, entries) -> tuple[dict[str, list[str]], list[str]]:
    """(class folder name -> its image files, entries skipped). Hidden entries (.DS_Store,
    .ipynb_checkpoints, ...) and SYSTEM_FOLDERS are skipped too; nested folders are not searched."""
    classes, skipped = {}, []
    for entry in entries:
        if entry.name.startswith('.') or entry.name in SYSTEM_FOLDERS or not entry.is_dir():
            skipped.append(entry.path)
            continue
        images = []
        for file in _scandir(entry.path):
            is_image = os.path.splitext(file.name)[1].lower() in IMAGE_EXTENSIONS and file.is_file()
            (images if is_image and not file.name.startswith('.') else skipped).append(file.path)
        classes[entry.name] = images
    if not any(classes.values()):
        where = printable(root)
        raise UserError(
            f'no {"/".join(IMAGE_EXTENSIONS)} images found in class folders under {where}; '
            f'put images into {where}/<class>/ (or {where}/train/<class>/ and '
            f'{where}/validation/<class>/)'
        )
    for name, images in classes.items():
        if not images:
            nested = [e.name for e in _scandir(os.path.join(root, name)) if e.is_dir() and not e.name.startswith('.')]
            what = 'add images or remove the folder'
            if nested:  # e.g. Tiny-ImageNet's train/<class>/images/ (timm would take 'images' as the class)
                what = f'sub-folders such as {printable(nested[0])!r} are not searched: move its images up into it'
            where = printable(os.path.join(root, name))
            raise UserError(f'class folder {where} holds no {"/".join(IMAGE_EXTENSIONS)} images; {what}')
    return classes, skipped


def _class_names(classes: dict) -> list[str]:
    """Folder names in timm's natural order (ties of letter case broken by the plain name)."""
    return sorted(classes, key=lambda name: (natural_key(name), name))


def _examples(classes: dict, names: list[str], root: str) -> tuple[list[str], np.ndarray]:
    """(paths, labels) sorted naturally by path, as timm's find_images_and_targets."""
    pairs = [(path, label) for label, name in enumerate(names) for path in classes[name]]
    pairs.sort(key=lambda pair: (natural_key(os.path.relpath(pair[0], root)), pair[0]))
    return [p for p, _ in pairs], np.array([label for _, label in pairs], np.int32)


# --- the listing cache ---------------------------------------------------------------------------------


def cache_dir() -> str:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'jax_ema'
    )
    return os.path.join(base, 'listings')


def _blob(strings) -> np.ndarray:
    return np.frombuffer(b'\0'.join(os.fsencode(s) for s in strings), np.uint8)


def _strings(blob: np.ndarray) -> list[str]:
    return [os.fsdecode(b) for b in blob.tobytes().split(b'\0')]


def _write_listing(key: str, root: str, names, paths, labels, skipped) -> None:
    """Best effort: a folder we cannot write to only means listing again next time."""
    prefix = os.path.join(root, '')
    relative = [p[len(prefix) :] for p in paths]
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir(), suffix='.tmp', delete=False) as f:
            np.savez(f, names=_blob(names), paths=_blob(relative), labels=labels, skipped=_blob(skipped))
        os.replace(f.name, os.path.join(cache_dir(), key + '.npz'))
    except OSError as err:
        log.debug('listing cache not written (%s)', err)


def _read_listing(key: str, root: str):
    path = os.path.join(cache_dir(), key + '.npz')
    try:
        with np.load(path, allow_pickle=False) as cached:
            names, relative, labels = _strings(cached['names']), _strings(cached['paths']), cached['labels']
            skipped = _strings(cached['skipped']) if cached['skipped'].size else []
    except (OSError, ValueError, KeyError):
        return None
    if len(relative) != len(labels):
        return None
    prefix = os.path.join(root, '')
    return names, [prefix + p for p in relative], labels.astype(np.int32), skipped


# --- --verify-images -------------------------------------------------------------------------------------


def _decode(path: str):
    """The whole image, eagerly (no tf.cond, whose failing branch logs to stderr from C++)."""
    data = tf.io.read_file(os.fsencode(path))
    if tf.io.is_jpeg(data):
        return tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE')
    return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)


def error_reason(err) -> str:
    """What went wrong, from a TensorFlow error: its last line not about graph nodes, without them."""
    message = getattr(err, 'message', None) or str(err)
    lines = [re.sub(r'\{\{[^}]*\}\}|\[Op:.*$', '', line).strip() for line in message.splitlines()]
    lines = [line for line in lines if line and not line.startswith(('[[', 'Detected at node', 'Graph execution'))]
    return (lines[-1] if lines else type(err).__name__)[:300]


def _problem(path: str) -> str | None:
    """None if the decoder training uses reads `path` whole, else what is wrong."""
    try:
        _decode(path)
    except tf.errors.OpError as err:
        return error_reason(err)
    return None


@contextlib.contextmanager
def _quiet_c_stderr():
    """File descriptor 2 to /dev/null: libjpeg and TensorFlow's C++ write there about each bad file,
    which our one error line names anyway. Only while nothing else runs (start-up)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def verify_images(paths: list[str], num_workers: int | None) -> None:
    """--verify-images: decodes every image once, as training does, so that a bad file stops the run now
    rather than being skipped (with a warning) when its turn comes."""
    with _quiet_c_stderr(), futures.ThreadPoolExecutor(num_workers or os.cpu_count() or 1) as pool:
        problems = pool.map(_problem, paths)
        bad = next(((path, problem) for path, problem in zip(paths, problems) if problem is not None), None)
    if bad is not None:
        raise UserError(f'cannot read image {printable(bad[0])} ({bad[1]}); remove or fix it')
