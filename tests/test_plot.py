"""`python -m jax_ema.plot`: several runs' summary.csv overlaid, labelled by their EMA settings."""

import dataclasses

import pytest
from matplotlib.figure import Figure

from jax_ema import ema, plot, reporting
from jax_ema.config import Config


def _make_run(root, name, config: Config | None, results_ema='from_config', epochs=3, seed=0):
    """A run folder as train_and_evaluate writes it: args.yaml (unless config is None), summary.csv,
    results.json; metrics made up (top-1 rising, EMA above raw)."""
    run_dir = root / name
    run_dir.mkdir()
    if config is not None:
        reporting.write_args(run_dir, config)
    with_ema = results_ema is not None and (config is None or config.model_ema)
    rows = []
    for epoch in range(epochs):
        raw = {'loss': 2.0 - 0.3 * epoch - 0.01 * seed, 'top1': 30.0 + 20 * epoch + seed, 'top5': 70.0 + 5 * epoch}
        ema_metrics = {k: v + 1.0 for k, v in raw.items()} if with_ema else None
        rows.append(reporting.summary_row(epoch, 2.1 - 0.3 * epoch, 0.1, raw, ema_metrics))
    reporting.write_summary(run_dir, rows)
    if results_ema == 'from_config':
        results_ema = (
            dict(
                dataclasses.asdict(
                    ema.EmaConfig(
                        decay=config.model_ema_decay,
                        use_warmup=config.model_ema_warmup,
                        update_every=config.model_ema_update_every,
                    )
                ),
                force_cpu=config.model_ema_force_cpu,
            )
            if config.model_ema
            else None
        )
    reporting.write_results(run_dir, {'best_metric': 0.0, 'best_epoch': epochs - 1, 'final': {}, 'ema': results_ema})
    return run_dir


@pytest.fixture
def runs(tmp_path):
    warm = _make_run(
        tmp_path, 'warm', Config(model='resnet18', model_ema=True, model_ema_decay=0.999, model_ema_warmup=True), seed=0
    )
    every = _make_run(
        tmp_path,
        'every',
        Config(
            model='resnet18', model_ema=True, model_ema_decay=0.99, model_ema_update_every=4, model_ema_force_cpu=True
        ),
        seed=1,
    )
    off = _make_run(tmp_path, 'off', Config(model='resnet18'), seed=2)
    return warm, every, off


@pytest.fixture
def drawn(monkeypatch):
    """The figures plot_runs saves, kept for inspection."""
    figures, save = [], Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, 'savefig', keep)
    return figures


def test_labels_come_from_the_run_settings(runs):
    warm, every, off = runs
    assert plot.run_label(warm) == 'decay 0.999 warmup'
    assert plot.run_label(every) == 'decay 0.99 every 4 host'
    assert plot.run_label(off) == 'EMA off'


def test_label_from_results_json_when_args_yaml_is_missing(tmp_path):
    run = _make_run(
        tmp_path, 'old', None, results_ema=dict(dataclasses.asdict(ema.EmaConfig(decay=0.95)), force_cpu=False)
    )
    assert not (run / 'args.yaml').exists()
    assert plot.run_label(run) == 'decay 0.95'


def test_same_settings_are_told_apart_by_folder(tmp_path):
    config = Config(model='resnet18', model_ema=True, model_ema_decay=0.9)
    a, b = _make_run(tmp_path, 'a', config), _make_run(tmp_path, 'b', config)
    assert plot.run_labels([a, b]) == ['decay 0.9 (a)', 'decay 0.9 (b)']


def test_plot_runs_draws_raw_dashed_and_ema_solid_per_run(runs, tmp_path, drawn):
    out = plot.plot_runs(runs, tmp_path / 'runs.png')
    assert out == tmp_path / 'runs.png'
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and out.stat().st_size > 5000
    (fig,) = drawn
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert (
        [t.get_text() for t in ax.get_legend().get_texts()]
        == list(lines)
        == [
            'decay 0.999 warmup: raw',
            'decay 0.999 warmup: EMA',
            'decay 0.99 every 4 host: raw',
            'decay 0.99 every 4 host: EMA',
            'EMA off: raw',
        ]
    )
    for run, label in zip(runs, ('decay 0.999 warmup', 'decay 0.99 every 4 host', 'EMA off')):
        rows = reporting.read_summary(run)
        raw = lines[f'{label}: raw']
        assert raw.get_linestyle() == '--'
        assert list(raw.get_ydata()) == [float(r['raw_eval_top1']) for r in rows]
        if label != 'EMA off':
            solid = lines[f'{label}: EMA']
            assert solid.get_linestyle() == '-' and solid.get_color() == raw.get_color()
            assert list(solid.get_ydata()) == [float(r['ema_eval_top1']) for r in rows]
    colours = {lines[f'{label}: raw'].get_color() for label in ('decay 0.999 warmup', 'decay 0.99 every 4 host')}
    assert len(colours) == 2


def test_cli_plots_the_chosen_metric(runs, tmp_path, drawn, capsys):
    out = tmp_path / 'loss.png'
    assert plot.main([str(r) for r in runs] + ['--out', str(out), '--metric', 'loss']) == 0
    assert out.stat().st_size > 5000 and capsys.readouterr().out.strip() == str(out)
    ax = drawn[0].axes[0]
    assert ax.get_ylabel() == 'validation loss'
    raw = next(line for line in ax.get_lines() if line.get_label() == 'decay 0.999 warmup: raw')
    assert list(raw.get_ydata()) == [float(r['raw_eval_loss']) for r in reporting.read_summary(runs[0])]


def _bad_inputs(tmp_path, warm):
    empty, header_only = tmp_path / 'empty', tmp_path / 'header_only'
    empty.mkdir()
    header_only.mkdir()
    (header_only / 'summary.csv').write_text(','.join(reporting.SUMMARY_COLUMNS) + '\n')
    return {
        'summary.csv without epochs': ([str(header_only), '--out', str(tmp_path / 'a.png')], 'no epochs yet'),
        'missing run': ([str(tmp_path / 'nope'), '--out', str(tmp_path / 'a.png')], 'does not exist'),
        'no summary.csv': ([str(empty), '--out', str(tmp_path / 'a.png')], 'has no summary.csv'),
        'out in a missing folder': ([str(warm), '--out', str(tmp_path / 'no' / 'a.png')], 'does not exist'),
        'out without image suffix': ([str(warm), '--out', str(tmp_path / 'a.txt')], 'image suffix'),
        'unknown metric': ([str(warm), '--out', str(tmp_path / 'a.png'), '--metric', 'top3'], 'invalid choice'),
        'no --out': ([str(warm)], '--out'),
    }


@pytest.mark.parametrize(
    'case',
    [
        'missing run',
        'no summary.csv',
        'summary.csv without epochs',
        'out in a missing folder',
        'out without image suffix',
        'unknown metric',
        'no --out',
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, tmp_path, capsys, case):
    argv, words = _bad_inputs(tmp_path, runs[0])[case]
    assert plot.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and words in err, err
    assert not list(tmp_path.glob('*.png')) and not (tmp_path / 'a.txt').exists()
