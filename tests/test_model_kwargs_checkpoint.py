"""What a checkpoint records of the model (model_kwargs): --model-kwargs extras and --grad-checkpointing too, so
that validate, export and --resume rebuild the model the run trained."""

import json

import numpy as np
import pytest

from cli_output import error_line
from jax_ema import checkpoint
from jax_ema.config import parse_args
from jax_ema.models import arch_kwargs, create_model, describe_kwargs, model_kwargs, same_model


def test_recorded_kwargs_survive_json_and_leave_out_the_training_only_ones():
    config = parse_args(['--model-kwargs', 'layers=(1,1,1,1)', '--grad-checkpointing', '--drop-path', '0.1'])
    kwargs = model_kwargs(config)
    assert kwargs == dict(drop_path_rate=0.1, grad_checkpointing=True, layers=(1, 1, 1, 1))
    recorded = json.loads(json.dumps(arch_kwargs(kwargs)))  # as the checkpoint's metadata holds it
    assert recorded == dict(grad_checkpointing=True, layers=[1, 1, 1, 1])
    assert arch_kwargs(recorded) == dict(grad_checkpointing=True, layers=(1, 1, 1, 1))  # hashable again
    assert create_model('resnet18', 2, **arch_kwargs(recorded)).layers == (1, 1, 1, 1)
    assert same_model(recorded, {'layers': (1, 1, 1, 1)})  # with or without --grad-checkpointing: the same model
    assert not same_model(recorded, {'grad_checkpointing': True})
    assert describe_kwargs(recorded) == '--grad-checkpointing --model-kwargs layers=(1, 1, 1, 1)'
    assert describe_kwargs(dict(global_pool='max')) == '--gp max' and describe_kwargs({}) == 'no model options'


@pytest.mark.slow
def test_a_run_with_model_kwargs_and_grad_checkpointing_validates_exports_and_resumes(tmp_path, capsys):
    import timm
    import torch
    from safetensors.torch import load_file

    from jax_ema.export import export, timm_call
    from jax_ema.train import main
    from jax_ema.validate import validate

    argv = [
        *('--model', 'resnet18', '--model-kwargs', 'layers=(1,1,1,1)', '--grad-checkpointing', '--img-size', '32'),
        *('-b', '8', '--epochs', '1', '--train-batches-per-epoch', '2', '--warmup-epochs', '0', '--lr', '0.01'),
        *('--model-ema', '--model-ema-decay', '0.5', '--output', str(tmp_path), '--experiment', 'run'),
    ]
    assert main(argv) == 0
    run = tmp_path / 'run'
    meta = checkpoint.read_metadata(checkpoint.resolve(run))
    assert meta['model_kwargs'] == dict(layers=[1, 1, 1, 1], grad_checkpointing=True)
    results = json.loads((run / 'results.json').read_text())
    assert validate(run)['top1'] == results['final']['raw']['top1']  # the same model rebuilt from the record
    done = export(run, tmp_path / 'ema.safetensors', use_ema=True)
    call = timm_call(done)
    assert 'layers=(1, 1, 1, 1)' in call and 'grad_checkpointing' not in call
    model = timm.create_model('resnet18', num_classes=meta['num_classes'], layers=(1, 1, 1, 1))
    model.load_state_dict(load_file(tmp_path / 'ema.safetensors'), strict=True)  # every key, every shape
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, meta['num_classes'])
    capsys.readouterr()
    # the same model resumes without --grad-checkpointing; another model (no --model-kwargs) is refused
    plain = [a for a in argv if a != '--grad-checkpointing']
    assert main([*plain, '--epochs', '2', '--resume', str(run)]) == 0
    assert checkpoint.read_metadata(checkpoint.resolve(run))['model_kwargs'] == dict(layers=[1, 1, 1, 1])
    capsys.readouterr()
    other = [a for a in plain if a not in ('--model-kwargs', 'layers=(1,1,1,1)')]
    assert main([*other, '--epochs', '3', '--resume', str(run)]) == 2
    line = error_line(capsys.readouterr().err)
    assert '--model-kwargs layers=(1, 1, 1, 1)' in line and 'asks for no model options' in line
    assert np.isfinite(results['final']['raw']['top1'])
