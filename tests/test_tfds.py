"""TFDS datasets (`--dataset tfds/NAME`), written by the tests into a temp data_dir: read as folders are (same
decoder and transforms, bit for bit), by example index in ArrayRecord and TFRecord files alike (exact resume,
split slices, bad records skipped in place), each process its own rows; the trainer and validate on it, a
SIGKILLed run resumed bit-identically; bad input in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cli_output import error_line
from jax_ema import checkpoint, data, data_fingerprint, reporting
from jax_ema.train import main
from jax_ema.validate import main as validate_main
from test_parallel import device_env
from test_resume import RUN as RESUME_RUN, _assert_identical, _cli
from tfds_world import write_folder, write_tiny_tfds

NAME = 'tfds/tiny_images'
FORMATS = ('array_record', 'tfrecord')


@pytest.fixture(scope='module')
def data_dirs(tmp_path_factory):
    """format -> a data_dir holding tiny_images (train record 3 is no image) and tiny_arrays (decoded images)."""
    root = tmp_path_factory.mktemp('tfds')
    dirs = {}
    for file_format in FORMATS:
        dirs[file_format] = root / file_format
        write_tiny_tfds(dirs[file_format], file_format=file_format, bad=(3,))
        write_tiny_tfds(dirs[file_format], name='tiny_arrays', file_format=file_format, decoded=True)
    return dirs


def _load(data_dir, dataset=NAME, **kwargs):
    cfg = data.DataConfig(data_dir=str(data_dir), dataset=dataset, img_size=12, crop_pct=0.9, **kwargs)
    return data.load_datasets(cfg)


@pytest.mark.parametrize('file_format', FORMATS)
def test_a_tfds_split_is_read_as_its_folder_is(data_dirs, file_format, tmp_path):
    """The validation split, TFDS (encoded PNGs, or arrays already decoded) and a folder of the same PNGs:
    the same uint8 eval images, bit for bit; classes and their number from the dataset's ClassLabel."""
    folder = write_folder(tmp_path, 'validation', 6, seed=1)
    write_folder(tmp_path, 'train', 6, seed=1)
    _, by_folder = data.load_datasets(data.DataConfig(data_dir=str(folder), img_size=12, crop_pct=0.9))
    want = np.concatenate([b['image'] for b in by_folder.eval_batches(6)])
    order = [int(os.path.basename(p)[:-4]) for p in by_folder.paths]  # folder row -> example index
    for name in (NAME, 'tfds/tiny_arrays'):
        train, val = _load(data_dirs[file_format], name)
        assert val.source == 'tfds' and val.class_names == ('dark', 'light') and val.num_classes == 2
        assert (train.num_examples, val.num_examples) == (12, 6) and val.labels is None
        (batch,) = list(val.eval_batches(6))
        assert batch['image'].dtype == np.uint8 and batch['mask'].all()
        assert batch['label'].tolist() == [i % 2 for i in range(6)]
        np.testing.assert_array_equal(batch['image'][order], want)


@pytest.mark.parametrize('file_format', [pytest.param('array_record', marks=pytest.mark.slow), 'tfrecord'])
def test_resume_mid_epoch_split_slices_and_bad_records_skipped_in_place(data_dirs, file_format, caplog):
    train, val = _load(data_dirs[file_format], train_split='train[:10]', hflip=0.5)
    assert train.num_examples == 10
    epoch = list(train.train_batches(4, 1))  # 2 batches of 4 of the 10; record 3 is no image
    assert train.unreadable.nonzero()[0].tolist() == [3] and 'record 3 of tiny_images/1.0.0 train[:10]' in caplog.text
    order = data.epoch_order(42, 1, 10)[:8]
    used = np.where(order == 3, 4, order)  # its slot takes the next record
    assert np.concatenate([b['label'] for b in epoch]).tolist() == (used % 2).tolist()
    resumed = list(train.train_batches(4, 1, start_step=1))  # a resume at the second batch: the same batch
    _assert_identical(resumed, epoch[1:])
    again = _load(data_dirs[file_format], train_split='train[:10]', hflip=0.5)
    _assert_identical(list(again[0].train_batches(4, 1)), epoch)  # a pure function of (seed, epoch, index)
    fingerprints = [
        data_fingerprint.of_datasets(*datasets)
        for datasets in ((train, val), again, _load(data_dirs[file_format], train_split='train[1:11]'))
    ]
    assert fingerprints[0] == fingerprints[1] and fingerprints[0]['train']['count'] == 10
    assert data_fingerprint.changes(fingerprints[0], fingerprints[2], 'train') == ['the file names or sizes']
    assert data_fingerprint.changes(fingerprints[0], fingerprints[2], 'validation') == []


class _Killed(BaseException):
    """A process killed where it stands."""


def test_two_processes_caching_one_tfrecord_table_at_once_never_leave_a_torn_one(data_dirs, tmp_path, monkeypatch):
    """Two processes scan one TFRecord file at once: the second is killed just after opening its temporary file,
    between the first's write and rename. The first's table is still the one published, whole; and a reader that
    meets an empty, torn or implausible table scans the file again and rewrites it."""
    monkeypatch.setenv(data.folder.CACHE_ENV, str(tmp_path / 'first'))
    train, _ = _load(data_dirs['tfrecord'])
    path = train.records.instructions[0].filename
    want = data.tfds.record_offsets(path)
    assert want.size == 12 and want[0] == 0
    monkeypatch.setenv(data.folder.CACHE_ENV, str(tmp_path / 'race'))  # a cache with no table yet
    save, calls = np.save, []

    def interleaved(file, table, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:  # the second process, killed as soon as np.save opened (truncated) its file
            if isinstance(file, str):
                open(file, 'wb').close()
            raise _Killed
        save(file, table, *args, **kwargs)
        if len(calls) == 1:  # the first wrote its table; the second writes before the first renames it
            with pytest.raises(_Killed):
                data.tfds.record_offsets(path)

    monkeypatch.setattr(np, 'save', interleaved)
    np.testing.assert_array_equal(data.tfds.record_offsets(path), want)
    monkeypatch.setattr(np, 'save', save)
    (cached,) = (tmp_path / 'race' / 'listings').glob('*.npy')
    np.testing.assert_array_equal(np.load(cached), want)  # whole, not the killed writer's empty file
    whole = cached.read_bytes()
    for damaged in (b'', whole[:100], whole[:-8], np.array([0, 40, 20], np.int64)):
        if isinstance(damaged, bytes):
            cached.write_bytes(damaged)
        else:
            np.save(cached, damaged)
        np.testing.assert_array_equal(data.tfds.record_offsets(path), want)
        assert cached.read_bytes() == whole  # scanned again and rewritten


def test_each_process_reads_its_own_rows_together_every_example_once(tmp_path):
    """4 processes, global batch 8 over 34 examples: each reads 2 rows of each of the 4 batches, no example
    twice, all of them those of the epoch's order (the 2 left over dropped, as timm's drop_last)."""
    write_tiny_tfds(tmp_path, train=34, constant=True, file_format='tfrecord')
    train, _ = _load(tmp_path)
    reads = []
    for process in range(4):
        batches = list(train.train_batches(8, 0, process_index=process, process_count=4))
        assert len(batches) == 4 and all(len(b['label']) == 2 for b in batches)
        reads.append(np.concatenate([b['image'][:, 0, 0, 0] for b in batches]).astype(int))  # red = index
    everything = np.concatenate(reads)
    assert len(set(everything)) == 32
    assert sorted(everything) == sorted(data.epoch_order(42, 0, 34)[:32])


_READER = """
import json, sys
import jax
from jax_ema import data, parallel
parallel.initialize(sys.argv[1], 2, int(sys.argv[2]))
train, _ = data.load_datasets(data.DataConfig(data_dir=sys.argv[3], dataset='tfds/tiny_images', img_size=8))
batches = train.train_batches(8, 0, process_index=jax.process_index(), process_count=jax.process_count())
print(json.dumps([b['image'][:, 0, 0, 0].tolist() for b in batches]))
"""


@pytest.mark.slow  # two processes joined by jax.distributed
def test_two_processes_read_disjoint_shards_covering_the_epoch(tmp_path):
    from test_multihost import _free_port

    write_tiny_tfds(tmp_path, train=19, constant=True)  # ArrayRecord: global batch 8, 2 updates, 3 left over
    address = f'127.0.0.1:{_free_port()}'
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', _READER, address, str(rank), str(tmp_path)],
            env=device_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    reads = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [len(r) for r in reads] == [2, 2] and all(len(batch) == 4 for r in reads for batch in r)
    first, second = (set(np.concatenate(r).tolist()) for r in reads)
    assert not first & second and len(first) == len(second) == 8
    assert first | second == set(data.epoch_order(42, 0, 19)[:16].tolist())


@pytest.mark.slow  # two runs in-process, one killed in a subprocess
def test_train_validate_and_resume_after_sigkill_bit_identical(tmp_path, capsys):
    """test_resume's run (its XLA programs compiled already) on 20 TFDS examples, record 3 no image: 5
    updates per epoch, a recovery checkpoint every 2; killed writing checkpoint 4, resumed mid-epoch 0 from
    2: the same final state, bit for bit, as the run never killed. Then validate on the run's dataset."""
    write_tiny_tfds(tmp_path / 'tfds', train=20, bad=(3,))
    data_dir, run = str(tmp_path / 'tfds'), ['--dataset', NAME, *RESUME_RUN, '--output', str(tmp_path)]
    assert main(['--data-dir', data_dir, *run, '--experiment', 'whole']) == 0
    killed = _cli([data_dir, *run, '--experiment', 'cut'], 'save:write@4:KILL')
    assert killed.returncode == -9 and checkpoint.resolve(tmp_path / 'cut').name == '2', killed.stderr[-3000:]
    assert main([data_dir, '--dataset', NAME, *RESUME_RUN, '--resume', str(tmp_path / 'cut')]) == 0
    final = checkpoint.restore_tree(checkpoint.resolve(tmp_path / 'cut'))
    assert int(final['step']) == 10
    _assert_identical(final, checkpoint.restore_tree(checkpoint.resolve(tmp_path / 'whole')))
    meta = checkpoint.read_metadata(checkpoint.resolve(tmp_path / 'whole'))
    assert meta['num_classes'] == 2 and meta['data']['train']['count'] == 20
    assert meta['unreadable_images'] == 1

    rows = reporting.read_summary(tmp_path / 'whole')
    capsys.readouterr()
    assert validate_main(['--checkpoint', str(tmp_path / 'whole'), '--use-ema']) == 0
    results = json.loads(capsys.readouterr().out.split('--result')[1])
    assert results['dataset'] == NAME and results['num_images'] == 6 and results['split'] == 'validation'
    assert results['top1'] == pytest.approx(float(rows[-1]['ema_eval_top1']))


@pytest.mark.parametrize(
    'argv,words',
    [
        (['--dataset', 'tfds/no_such_dataset'], ["TFDS dataset 'no_such_dataset' not found in", 'tfds build']),
        (['--dataset', 'tfds/mnist'], ["TFDS dataset 'mnist' is not prepared in", '--dataset-download']),
        (['--dataset', NAME, '--val-split', 'test'], ["has no split 'test'", 'its splits: train, validation']),
        (['--dataset', NAME, '--input-key', 'img'], ["has no feature 'img'", 'pass --input-key']),
        (['--dataset', 'hfds/beans'], ["--dataset 'hfds/beans' is not supported", 'tfds/NAME']),
    ],
)
def test_bad_tfds_input_is_one_line_and_exit_2(data_dirs, tmp_path, capsys, argv, words):
    data_dir = str(data_dirs['tfrecord'])
    assert main(['--data-dir', data_dir, *argv, '--model', 'resnet18', '--output', str(tmp_path)]) == 2
    err = capsys.readouterr().err
    error_line(err)
    assert all(w in err for w in words), err
    if 'not prepared' in err:
        assert data_dir in err
    assert not list(tmp_path.iterdir())  # no run folder


def test_help_shows_the_tfds_flags():
    from jax_ema.config import build_parser

    text = build_parser().format_help()  # a stray % in a help text would raise here
    assert all(f in text for f in ('--dataset DATASET', '--input-key', '--target-key', '--dataset-download', '90%'))
