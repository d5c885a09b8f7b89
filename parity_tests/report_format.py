"""How the parity report is written: its markdown table and the progress lines on stderr."""

import sys


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value) -> str:
    return value if isinstance(value, str) else '0' if value == 0 else f'{value:.2g}'


def table(rows) -> str:
    lines = ['| what is compared | bound | largest error measured |', '|---|---|---|']
    for what, bound, err, where in rows:
        flag = '' if bound == '-' or err <= bound else ' **FAIL**'
        cells = (what, fmt(bound), f'{fmt(err)}{f" ({where})" if where else ""}{flag}')
        lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
    return '\n'.join(lines)
