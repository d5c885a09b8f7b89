"""What the CLIs write, read as a user's script reads it: stdout holds `--result` and its JSON, stderr the log
(timm's lines; `logging`, as timm's train.py and validate.py) and, on bad input, one last `error: ...` line."""

from __future__ import annotations

import contextlib
import json
import logging
import re

from jax_ema.cli import TimmFormatter


def error_line(err: str, logged: list[str] | None = None) -> str:
    """The one `error: ...` line of a failed CLI: the last line on stderr, the only one of its kind, no traceback.
    With `logged` (from `log_lines`), every line before it must be one of those log lines, nothing else."""
    lines = err.strip().splitlines()
    assert 'Traceback' not in err and lines and lines[-1].startswith('error: '), err
    assert sum(line.startswith('error: ') for line in lines) == 1, err
    if logged is not None:
        assert lines[:-1] == [line for message in logged for line in message.splitlines()], err
    return lines[-1]


@contextlib.contextmanager
def log_lines():
    """The lines jax_ema's loggers write meanwhile (as the CLIs format them), in order."""
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(TimmFormatter().format(record))

    handler, logger = Collect(logging.INFO), logging.getLogger('jax_ema')
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


# A parser of timm's train.py output, written from its format strings (train_one_epoch's and validate's
# _logger.info, main's `*** Best metric` and `print(f'--result\n{json.dumps(...)}')`), as a user's script would.
_NUM = r'[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)'
TRAIN = re.compile(
    rf'Train: (?P<epoch>\d+) \[\s*(?P<update>\d+)/(?P<updates>\d+) \(\s*(?P<percent>\d+)%\)\]  '
    rf'Loss: (?P<loss>{_NUM}) \((?P<loss_avg>{_NUM})\)  '
    rf'Time: (?P<time>{_NUM})s,\s+(?P<rate>{_NUM})/s  \((?P<time_avg>{_NUM})s,\s+(?P<rate_avg>{_NUM})/s\)  '
    rf'LR: (?P<lr>{_NUM})  Data: (?P<data>{_NUM}) \((?P<data_avg>{_NUM})\)'
)
TEST = re.compile(
    rf'(?P<name>Test(?: \((?P<suffix>[^)]+)\))?): \[\s*(?P<batch>\d+)/(?P<last>\d+)\]  '
    rf'Time: (?P<time>{_NUM}) \((?P<time_avg>{_NUM})\)  '
    rf'Loss:\s+(?P<loss>{_NUM}) \(\s*(?P<loss_avg>{_NUM})\)  '
    rf'Acc@1:\s+(?P<top1>{_NUM}) \(\s*(?P<top1_avg>{_NUM})\)  '
    rf'Acc@5:\s+(?P<top5>{_NUM}) \(\s*(?P<top5_avg>{_NUM})\)'
)
BEST = re.compile(rf'\*\*\* Best metric: (?P<metric>{_NUM}) \(epoch (?P<epoch>\d+)\)')


def parse_timm_train(stderr: str, stdout: str) -> dict:
    """{'train': [Train: fields], 'test': {name: [Test fields]}, 'best': (metric, epoch) or None, 'result': list}
    of timm train.py output. A line that starts as timm's but does not parse is an error, as in a strict script."""
    parsed = {'train': [], 'test': {}, 'best': None}
    for line in stderr.splitlines():
        if line.startswith('Train:'):
            match = TRAIN.fullmatch(line)
            assert match, f'not a timm Train: line: {line!r}'
            parsed['train'].append({k: float(v) for k, v in match.groupdict().items()})
        elif line.startswith('Test'):
            match = TEST.fullmatch(line)
            assert match, f'not a timm Test: line: {line!r}'
            fields = {k: float(v) for k, v in match.groupdict().items() if k not in ('name', 'suffix')}
            parsed['test'].setdefault(match['name'], []).append(fields)
        elif line.startswith('***'):
            match = BEST.fullmatch(line)
            assert match, f'not a timm Best metric line: {line!r}'
            parsed['best'] = (float(match['metric']), int(match['epoch']))
    parsed['result'] = json.loads(stdout.split('--result\n', 1)[1])
    return parsed
