"""gpu_check's figures as markdown: the table gpu_check.py prints, and the results section of docs/gpu.md
rendered from a GPU session's output folder (benchmarks/gpu_session.py). Standard library only, so it
renders anywhere, without jax or torch.

    python benchmarks/gpu_check_report.py OUT_DIR                    # print the docs section
    python benchmarks/gpu_check_report.py OUT_DIR --doc docs/gpu.md  # write it between the markers there

OUT_DIR holds gpu_check.json (gpu_check.py's JSON), and where the session got that far parity.xml (the
whole parity suite's junit XML) and session.json (the session's steps, versions and nvidia-smi).
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

BEGIN, END = '<!-- gpu-results:begin -->', '<!-- gpu-results:end -->'
DTYPES = ('float32', 'bfloat16')
PLACEMENTS = ('none', 'device', 'host', 'sharded')


class Missing(Exception):
    """A file or marker the rendering needs is not there."""


TARGETS = {'float32': 1.05, 'bfloat16': 1.08}  # issue 15: host-EMA step / device-EMA step, every update


def mb(b) -> str:
    return '-' if b is None else f'{b / 2**20:,.0f} MB'


def table(report: dict) -> str:
    """One markdown table of every part in `report` (what gpu_check.py prints)."""
    lines = ['| part | what | figure |', '|---|---|---|']
    parts = report['parts']
    if 'parity' in parts:
        for r in parts['parity']['rows']:
            lines.append(
                f'| parity | {r["what"].replace("|", "/")} | {r["error"]:.2g} (bound {r["bound"]:g})'
                f'{"" if r["ok"] else " **FAIL**"} |'
            )
    if 'step' in parts:
        s = parts['step']
        for name, ips in s['images_per_s'].items():
            m = s['memory'][name]
            lines.append(
                f'| step | jax_ema {name} | {ips:,.0f} img/s ({s["ratio_to_no_ema"][name]:.3f} x no EMA, '
                f'{s["ratio_to_device_ema"][name]:.3f} x device EMA); {s["cpu_s_per_update"][name] * 1e3:.1f} '
                f'host CPU-ms/update; state on device {mb(m["device_bytes"])}, on host {mb(m["host_bytes"])}; '
                f'peak {mb(m["peak_device_bytes"])} (plan; {mb(m["peak_with_copy_in_flight"])} with the host '
                f'copy in flight), high-water {mb(m["high_water_bytes"])} |'
            )
        h = s['host_average']
        lines.append(
            f'| step | host EMA average alone ({h["floats"]:,} floats, new weights on the host) | '
            f'{h["wall_s"] * 1e3:.1f} ms, {h["cpu_s"] * 1e3:.1f} CPU-ms per update |'
        )
    if 'timm' in parts:
        t = parts['timm']
        for name, ips in t['images_per_s'].items():
            lines.append(
                f'| timm | {name} | {ips:,.0f} img/s ({t["ratio_to_no_ema"][name]:.3f}); peak '
                f'{mb(t["peak_device_bytes"][name])} |'
            )
    if 'loop' in parts:
        for name, r in parts['loop']['runs'].items():
            extra = ''
            if 'eval_images_per_s' in r:
                ema_eval = r['ema_eval_images_per_s']
                extra = (
                    f'; eval {r["eval_images_per_s"]:,.0f} img/s'
                    + ('' if ema_eval is None else f', EMA eval {ema_eval:,.0f} img/s')
                    + f'; checkpoint {r["checkpoint_s"]:.2f} s ({mb(r["checkpoint_bytes"])})'
                )
            lines.append(
                f'| loop | train_epoch {name} | {r["loop_vs_bare"]:.3f} x bare step '
                f'({r["bare_step_images_per_s"]:,.0f} img/s){extra} |'
            )
    return '\n'.join(lines)


# --------------------------------------------------------------------------- the parity suite's junit XML


def parity_suite(path: Path) -> dict | None:
    """Counts of a pytest junit XML (None where there is none): tests, passed, failed, errors, skipped,
    seconds, the failed tests' ids and the skip reasons with their counts."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return dict(unreadable=str(e))
    suites = [root] if root.tag == 'testsuite' else root.findall('testsuite')
    out = dict(tests=0, failed=0, errors=0, skipped=0, seconds=0.0, failures=[], skip_reasons={})
    for suite in suites:
        out['seconds'] += float(suite.get('time', 0))
        for case in suite.iter('testcase'):
            out['tests'] += 1
            name = f'{case.get("classname", "")}::{case.get("name", "")}'
            if case.find('failure') is not None:
                out['failed'] += 1
                out['failures'].append(name)
            elif case.find('error') is not None:
                out['errors'] += 1
                out['failures'].append(name)
            elif (skip := case.find('skipped')) is not None:
                out['skipped'] += 1
                reason = (skip.get('message') or '').strip()[:120]
                out['skip_reasons'][reason] = out['skip_reasons'].get(reason, 0) + 1
    out['passed'] = out['tests'] - out['failed'] - out['errors'] - out['skipped']
    return out


# --------------------------------------------------------------------------- the docs section


def _head(*columns: str) -> list[str]:
    """A markdown table's header and separator lines."""
    return ['| ' + ' | '.join(columns) + ' |', '|' + ' --- |' * len(columns)]


def _ips(d: dict, key: str, ratio: dict | None = None) -> str:
    if key not in d:
        return '–'
    return f'{d[key]:,.0f}' + ('' if ratio is None else f' ({ratio[key]:.3f})')


def _machine_lines(report: dict, session: dict) -> list[str]:
    m = report.get('machine', {})
    v = m.get('versions', {})
    if not m and session.get('versions'):  # gpu_check never got as far as its JSON: the session's reading
        found = session['versions']
        packages = found.get('packages', {})
        v = {
            k: packages.get(k.replace('orbax', 'orbax-checkpoint')) for k in ('jax', 'jaxlib', 'flax', 'optax', 'orbax')
        }
        v.update(torch=packages.get('torch'), timm=packages.get('timm'), numpy=packages.get('numpy'))
        v = {k: x for k, x in v.items() if x}
        m = dict(
            backend=found.get('jax_backend'),
            python=found.get('python'),
            cpu_count=found.get('cpu_count'),
            commit=session.get('commit'),
            jax_device_count=len(found.get('jax_devices', [])) or '?',
        )
    gpu = m.get('gpu') or session.get('gpu') or m.get('jax_device_kind', '?')
    commit = (m.get('commit') or '?')[:12] + (' (tree dirty)' if m.get('dirty') else '')
    versions = ', '.join(f'{k} {v[k]}' for k in ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'torch', 'timm') if k in v)
    tf = m.get('modules_loaded', {})
    lines = [
        f'Machine: {gpu} (JAX backend {m.get("backend", "?")}, {m.get("jax_device_count", "?")} device(s); '
        f'torch on {m.get("torch_device", "?")}), {m.get("cpu_count", "?")} CPU cores, Python {m.get("python", "?")}.',
        f'Versions: {versions}, CUDA {v.get("cuda", "?")}, numpy {v.get("numpy", "?")}; TensorFlow loaded: '
        f'{tf.get("tensorflow", "?")}, tensorboardX loaded: {tf.get("tensorboardX", "?")}. Commit {commit}.',
    ]
    if session.get('driver'):
        lines.append(f'NVIDIA driver {session["driver"]}.')
    return [' '.join(lines)]


def _step_rows(parts: dict) -> list[str]:
    if 'step' not in parts and 'timm' not in parts:
        return []
    rows = _head("images/s (step time / no EMA's)", 'no EMA', 'EMA on device', 'host EMA (every update)', 'sharded EMA')
    s = parts.get('step')
    if s:
        for dtype in DTYPES:
            cells = [_ips(s['images_per_s'], f'{dtype}_ema_{p}', s['ratio_to_no_ema']) for p in PLACEMENTS]
            rows.append(f'| jax_ema {dtype} | ' + ' | '.join(cells) + ' |')
    t = parts.get('timm')
    if t:
        for dtype in DTYPES:
            ips, r = t['images_per_s'], t['ratio_to_no_ema']
            cells = [_ips(ips, f'timm_eager_{dtype}_ema_{e}', r) for e in ('none', 'device', 'cpu')]
            rows.append(f'| timm eager channels_last {dtype} | {cells[0]} | {cells[1]} | {cells[2]} (CPU) | – |')
        if 'timm_compile_bfloat16_ema_device' in t['images_per_s']:
            rows.append(
                f'| timm torch.compile bfloat16 | – | {_ips(t["images_per_s"], "timm_compile_bfloat16_ema_device")} '
                '| – | – |'
            )
    return rows


def _placement_rows(parts: dict) -> list[str]:
    s = parts.get('step')
    if not s:
        return []
    rows = _head(
        'placement',
        'host EMA / device EMA step (target)',
        'host CPU-ms per update',
        'peak device (plan)',
        'with host copy in flight',
        'high-water',
    )
    for dtype in DTYPES:
        for p in PLACEMENTS:
            name = f'{dtype}_ema_{p}'
            if name not in s['memory']:
                continue
            m, ratio = s['memory'][name], s['ratio_to_device_ema'][name]
            target = ''
            if p == 'host':
                target = f' (≤ {TARGETS[dtype]}: {"met" if ratio <= TARGETS[dtype] else "**not met**"})'
            rows.append(
                f'| {name} | {ratio:.3f}{target} | {s["cpu_s_per_update"][name] * 1e3:.1f} | '
                f'{mb(m["peak_device_bytes"])} | {mb(m["peak_with_copy_in_flight"])} | {mb(m["high_water_bytes"])} |'
            )
    h = s.get('host_average')
    if h:
        rows.append(
            f'\nHost EMA average alone ({h["floats"]:,} floats): {h["wall_s"] * 1e3:.1f} ms wall, '
            f'{h["cpu_s"] * 1e3:.1f} CPU-ms per update.'
        )
    return rows


def _loop_rows(parts: dict) -> list[str]:
    lp = parts.get('loop')
    if not lp:
        return []
    rows = _head(
        f'epoch loop ({lp["updates"]} updates, log every {lp["log_interval"]})',
        'loop / bare step (target ≥ 0.97)',
        'bare step img/s',
        'eval img/s (raw; EMA)',
        'checkpoint save',
    )
    for name, r in lp['runs'].items():
        ok = 'met' if r['loop_vs_bare'] >= 0.97 else '**not met**'
        ev = '–'
        if 'eval_images_per_s' in r:
            ema_eval = r['ema_eval_images_per_s']
            ev = f'{r["eval_images_per_s"]:,.0f}; ' + ('–' if ema_eval is None else f'{ema_eval:,.0f}')
        ckpt = f'{r["checkpoint_s"]:.2f} s ({mb(r["checkpoint_bytes"])})' if 'checkpoint_s' in r else '–'
        rows.append(f'| {name} | {r["loop_vs_bare"]:.3f} ({ok}) | {r["bare_step_images_per_s"]:,.0f} | {ev} | {ckpt} |')
    return rows


def _parity_lines(parts: dict, suite: dict | None) -> list[str]:
    lines = []
    p = parts.get('parity')
    if p:
        worst = max(p['rows'], key=lambda r: r['error'] / r['bound']) if p['rows'] else None
        lines.append(
            f'- gpu_check parity subset at pinned precision: {len(p["rows"]) - p["failed"]} of {len(p["rows"])} '
            f'rows within their bounds'
            + (f' (closest: {worst["what"]}, {worst["error"]:.2g} of {worst["bound"]:g})' if worst else '')
            + f'; torch on {p.get("torch_device", "?")}; float64 missing: {p.get("float64_missing") or "no"}.'
        )
    if suite is None:
        lines.append('- whole `pytest parity_tests`: not run (no parity.xml).')
    elif 'unreadable' in suite:
        lines.append(f'- whole `pytest parity_tests`: junit XML unreadable ({suite["unreadable"]}).')
    else:
        lines.append(
            f'- whole `pytest parity_tests`: {suite["passed"]} passed, {suite["failed"]} failed, '
            f'{suite["errors"]} errors, {suite["skipped"]} skipped in {suite["seconds"] / 60:.1f} min.'
        )
        lines += [f'  - failed: `{name}`' for name in suite['failures'][:20]]
        lines += [f'  - skipped ×{n}: {reason}' for reason, n in sorted(suite['skip_reasons'].items())]
    return lines


def section(report: dict, suite: dict | None = None, session: dict | None = None) -> str:
    """The results section of docs/gpu.md, from gpu_check's JSON, the parity suite's counts and the session."""
    session = session or {}
    parts = report.get('parts', {})
    missing = [p for p in ('parity', 'step', 'timm', 'loop') if p not in parts]
    seconds = {p: parts[p]['seconds'] for p in parts}
    out = _machine_lines(report, session)
    if report.get('quick'):
        out.append('\n**`--quick` run (tiny model, 32 px): these figures check the plumbing, not speed.**')
    timing = ', '.join(f'{p} {s:.0f} s' for p, s in seconds.items())
    args = report.get('args', {})
    if parts:
        out.append(
            f'\n`gpu_check.py`: {sum(seconds.values()):.0f} s (target ≤ 240; {timing})'
            + (f'; parts missing: {", ".join(missing)}' if missing else '')
            + f'. Train step {args.get("model", "?")}, batch {args.get("batch_size", "?")}, '
            f'{args.get("img_size", "?")} px, EMA decay {args.get("decay", "?")}.\n'
        )
    else:
        out.append('\n`gpu_check.py`: no results (its log says why).\n')
    out += _step_rows(parts)
    place = _placement_rows(parts)
    if place:
        out += [''] + place
    loop = _loop_rows(parts)
    if loop:
        out += [''] + loop
    out += ['', 'Parity:'] + _parity_lines(parts, suite)
    if any(s['name'] == 'parity' and s.get('timed_out') for s in session.get('steps', [])):
        out.append('  - **cut short at its time limit: the tests it had not reached did not run.**')
    steps = session.get('steps')
    if steps:
        out.append(
            '\nSession (`benchmarks/gpu_session.py`): '
            + ', '.join(
                f'{s["name"]} {s["seconds"]:.0f} s' + (' (timed out)' if s.get('timed_out') else '') for s in steps
            )
            + '.'
        )
    return '\n'.join(out) + '\n'


def write_into(doc: Path, text: str) -> None:
    """Replaces what lies between the BEGIN and END markers of `doc` with `text`."""
    body = doc.read_text()
    if BEGIN not in body or END not in body:
        raise Missing(f'{doc} has no {BEGIN} ... {END} markers; add them where the results go')
    head, rest = body.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(f'{head}{BEGIN}\n{text}{END}{tail}')


def load(folder: Path) -> tuple[dict, dict | None, dict]:
    """(gpu_check's report, the parity suite's counts or None, the session's summary or {}) from `folder`."""
    report_path, session_path = folder / 'gpu_check.json', folder / 'session.json'
    if not report_path.exists() and not session_path.exists():
        raise Missing(f'{folder} holds neither gpu_check.json nor session.json; pass the folder gpu_session.py wrote')
    session = json.loads(session_path.read_text()) if session_path.exists() else {}
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return report, parity_suite(folder / 'parity.xml'), session


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__)
    p.add_argument('folder', type=Path, help="a GPU session's output folder")
    p.add_argument('--doc', type=Path, help=f'write the section into this file, between {BEGIN} and {END}')
    args = p.parse_args(argv)
    try:
        text = section(*load(args.folder))
        if args.doc:
            write_into(args.doc, text)
    except Missing as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(f'wrote the results section into {args.doc}' if args.doc else text, end='\n' if args.doc else '')
    return 0


if __name__ == '__main__':
    sys.exit(main())
