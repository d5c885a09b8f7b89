"""Every bad-input case of tests/test_bad_input.py, in the order of docs/bad-input.md:
(id, cli, argv builder, expected substring). The trainer's own are in bad_input_train_cases.py.
"""

from bad_input_train_cases import TRAIN_CASES, _run


def _file(name: str, text: str):
    """A case's input file, written under the world's root when its argv is built (before the case runs)."""

    def write(w) -> str:
        (w.root / name).write_text(text)
        return str(w.root / name)

    return write


OTHER_CLI_CASES = [
    (
        'export: missing checkpoint',
        'export',
        lambda w: ['--checkpoint', str(w.root / 'no_run'), '--out', str(w.out / 'm.safetensors')],
        'does not exist',
    ),
    (
        'export: --out without .safetensors',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--out', str(w.out / 'm.pth')],
        'must end in .safetensors',
    ),
    (
        'export: --use-ema of a run without EMA',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--use-ema', '--out', str(w.out / 'm.safetensors')],
        'without EMA',
    ),
    (
        'export: --out is a folder',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--out', str(w.folder_out)],
        'is a folder',
    ),
    (
        'export: --out in a missing folder',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--out', str(w.out / 'no' / 'm.safetensors')],
        'cannot write',
    ),
    (
        'export: metadata not a JSON object',
        'export',
        lambda w: ['--checkpoint', str(w.run_list_metadata), '--out', str(w.out / 'm.safetensors')],
        'metadata',
    ),
    ('export: no --out', 'export', lambda w: ['--checkpoint', str(w.run)], 'required: --out'),
    (
        'export: --ema-index of a run without EMA',
        'export',
        lambda w: ['--checkpoint', str(w.run), '--ema-index', '0', '--out', str(w.out / 'm.safetensors')],
        'without EMA',
    ),
    (
        'export: --ema-index negative',
        'export',
        lambda w: ['--checkpoint', str(w.run_2_emas), '--ema-index', '-1', '--out', str(w.out / 'm.safetensors')],
        'out of range',
    ),
    (
        'validate: --ema-index past the EMAs',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run_2_emas), '--ema-index', '2'],
        'indices 0..1',
    ),
    (
        'validate: --interpolation unsupported',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--interpolation', 'nearest'],
        "'nearest' is not supported",
    ),
    (
        'validate: --ema-index not a number',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run_2_emas), '--ema-index', 'best'],
        'invalid int value',
    ),
    (
        'posthoc: a run without snapshots',
        'posthoc',
        lambda w: ['--run', str(w.run), '--std', '0.07', '--out', str(w.out / 'ph')],
        'no EMA snapshots',
    ),
    (
        'posthoc: missing run folder',
        'posthoc',
        lambda w: ['--run', str(w.root / 'no_run'), '--std', '0.07', '--out', str(w.out / 'ph')],
        'does not exist',
    ),
    (
        'posthoc: --std outside (0, 0.2887]',
        'posthoc',
        lambda w: ['--run', str(w.run), '--std', '0', '--out', str(w.out / 'ph')],
        'sigma_rel 0 is outside',
    ),
    (
        'posthoc: --out not empty',
        'posthoc',
        lambda w: ['--run', str(w.run), '--std', '0.07', '--out', str(w.run)],
        'not an empty folder',
    ),
    ('posthoc: no --std', 'posthoc', lambda w: ['--run', str(w.run), '--out', str(w.out / 'ph')], 'required: --std'),
    (
        'validate: missing checkpoint',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.root / 'no_run')],
        'does not exist',
    ),
    (
        'validate: data of another class count',
        'validate',
        lambda w: ['--checkpoint', str(w.run)],
        'has 10 classes but checkpoint',
    ),
    (
        'validate: zero batch size',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '-b', '0'],
        'batch size must be positive',
    ),
    (
        'validate: unknown split of the digits',
        'validate',
        lambda w: ['--checkpoint', str(w.run), '--split', 'test'],
        "has no split 'test'",
    ),
    ('validate: no --checkpoint, no --model', 'validate', lambda w: [str(w.data)], 'give --checkpoint C, or --model'),
    (
        'validate: pretrained weights not in the offline cache',
        'validate',
        lambda w: [str(w.data), '--model', 'resnet18.tv_in1k'],
        'is not in the Hugging Face cache',
    ),
    (
        'validate: --use-ema with pretrained weights',
        'validate',
        lambda w: [str(w.data), '--model', 'resnet18', '--use-ema'],
        'pretrained weights have no EMA',
    ),
    (
        'validate: --model wildcard matching nothing',
        'validate',
        lambda w: [str(w.data), '--model', 'resnet9*'],
        'matches no model with pretrained weights',
    ),
    (
        'validate: --model all with --checkpoint',
        'validate',
        lambda w: [str(w.data), '--model', 'all', '--checkpoint', str(w.run)],
        'validates pretrained weights; give one model name',
    ),
    (
        'validate: --pretrained with --checkpoint',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--pretrained'],
        'leave out --pretrained',
    ),
    (
        'validate: bulk validation where every model fails',
        'validate',
        lambda w: [str(w.data), '--model', str(w.a_file)],  # a file of model names: 'not a dataset'
        'none of the 1 validated',
    ),
    (
        'validate: --input-size not square',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--input-size', '3', '32', '48'],
        'square RGB images',
    ),
    (
        'validate: --input-size of two numbers',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--input-size', '32', '32'],
        'expected 3 arguments',
    ),
    (
        'validate: --results-file in a missing folder',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--results-file', str(w.missing / 'r.csv')],
        'cannot write --results-file',
    ),
    (
        'validate: --results-file in a read-only folder',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--results-file', str(w.root / 'read_only_out' / 'r.csv')],
        'cannot write --results-file',
    ),
    (
        'validate: unknown --crop-mode',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--crop-mode', 'centre'],
        'is not one of center, squash, border',
    ),
    (
        'validate: negative --crop-border-pixels',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--crop-border-pixels', '-1'],
        '--crop-border-pixels must be an integer >= 0',
    ),
    (
        'validate: --valid-labels file missing',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--valid-labels', str(w.missing / 'valid.txt')],
        'cannot read --valid-labels',
    ),
    (
        'validate: --valid-labels not class indices',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--valid-labels', _file('names.txt', 'cat\ndog\n')(w)],
        'is not a class index',
    ),
    (
        'validate: --valid-labels index out of range',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--valid-labels', _file('valid_5.txt', '0\n5\n')(w)],
        'class index 5 is out of range for a model of 2 classes',
    ),
    (
        "validate: --valid-labels of another number of classes than DATA's",
        'validate',
        lambda w: [
            str(w.data),
            '--checkpoint',
            str(w.run_5_classes),
            '--valid-labels',
            _file('v3.txt', '0\n1\n4\n')(w),
        ],
        'but --valid-labels lists 3',
    ),
    (
        'validate: --real-labels file missing',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--real-labels', str(w.missing / 'real.json')],
        'cannot read --real-labels',
    ),
    (
        'validate: --real-labels not JSON',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--real-labels', _file('real_cut.json', '[[0], [1')(w)],
        'is not JSON',
    ),
    (
        'validate: --real-labels of another length than the split',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--real-labels', _file('real_3.json', '[[0], [1], []]')(w)],
        'has labels for 3 images but the split has 20',
    ),
    (
        "validate: --real-labels on images not named as ImageNet's",
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--real-labels', _file('real_20.json', str([[1]] * 20))(w)],
        'is not named as an ImageNet validation image',
    ),
    (
        'validate: --metrics-avg unknown',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run), '--metrics-avg', 'median'],
        "invalid choice: 'median'",
    ),
]

# runs that survive real life (issue 13, docs/reliability.md)
REAL_LIFE_CASES = [
    (
        '--resume: a run another trainer is writing',
        'train',
        _run('data', '--resume', lambda w: w.run_busy),
        'is in use by another trainer (pid',
    ),
    (
        '--resume: an older checkpoint, no --experiment',
        'train',
        _run('data', '--resume', lambda w: w.run_two_steps / 'checkpoints' / '5'),
        'add --experiment NAME',
    ),
    (
        '--resume: a read-only run folder',
        'train',
        _run('data', '--resume', lambda w: w.run_read_only),
        'it is read-only here',
    ),
    (
        '--resume: a truncated checkpoint',
        'train',
        _run('data', '--resume', lambda w: w.run_truncated),
        'incomplete or damaged',
    ),
    (
        'validate: a truncated checkpoint',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.run_truncated)],
        'incomplete or damaged',
    ),
    (
        'export: a truncated checkpoint',
        'export',
        lambda w: ['--checkpoint', str(w.run_truncated), '--out', str(w.out / 'm.safetensors')],
        'incomplete or damaged',
    ),
    (
        'export: an orbax checkpoint of another program',
        'export',
        lambda w: ['--checkpoint', str(w.foreign), '--out', str(w.out / 'm.safetensors')],
        'of another program',
    ),
    (
        'validate: an orbax checkpoint of another program',
        'validate',
        lambda w: [str(w.data), '--checkpoint', str(w.foreign)],
        'of another program',
    ),
    (
        'posthoc: a truncated snapshot',
        'posthoc',
        lambda w: ['--run', str(w.run_snapshot_cut), '--std', '0.07', '--out', str(w.out / 'ph')],
        'truncated',
    ),
    (
        'posthoc: --out in a read-only folder',
        'posthoc',
        lambda w: ['--run', str(w.run_snapshots), '--std', '0.07', '--out', str(w.root / 'read_only_out' / 'ph')],
        'Read-only file system',
    ),
    (
        'plot: a damaged summary.csv',
        'plot',
        lambda w: [str(w.run_summary_damaged), '--out', str(w.out / 'p.png')],
        'holds a non-number',
    ),
    (
        'plot: --out in a read-only folder',
        'plot',
        lambda w: [str(w.run_summary), '--out', str(w.root / 'read_only_out' / 'p.png')],
        'Read-only',
    ),
]

CASES = TRAIN_CASES + OTHER_CLI_CASES + REAL_LIFE_CASES
