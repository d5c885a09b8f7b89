"""Config is the union of the flag groups in jax_ema/flags/: each field one flag, in its group's --help section."""

import dataclasses

import pytest

from jax_ema import flags
from jax_ema.config import Config, build_parser, parse_args
from jax_ema.errors import UserError


def test_every_flag_field_is_in_its_group_section_of_help():
    parser = build_parser()
    sections = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    for field in dataclasses.fields(Config):
        if 'group' in field.metadata:
            assert field.name in sections[flags.GROUPS[field.metadata['group']]], field.name


def test_flag_names_are_unique():
    names = [o for a in build_parser()._actions for o in a.option_strings]
    assert len(names) == len(set(names))


def test_the_defaults_make_a_valid_config():
    config = Config()
    assert config.data is None and config.epochs == 10  # the digits' defaults filled in
    assert parse_args([]) == config


@pytest.mark.parametrize(
    'argv, words',
    [
        (['-b', '0'], '--batch-size must be positive'),
        (['--min-lr', 'nan'], '--min-lr must be >= 0'),
        (['--drop-path', '1.0'], '--drop-path must be in [0, 1)'),
        (['--model-ema', '--model-ema-force-cpu', '--model-ema-shard'], 'exclude each other'),
        (['--process-id', '-1'], '--process-id must be >= 0'),
    ],
)
def test_each_group_checks_its_values(argv, words):
    with pytest.raises(UserError, match=words.replace('[', r'\[').replace(')', r'\)')):
        parse_args(argv)
