"""timm's train step for benchmarks/gpu_check.py: eager channels_last (float32, bfloat16 autocast) and
torch.compile, without EMA, with ModelEmaV3 on the model's device and on the CPU (--model-ema-force-cpu).

One step is what timm's train.py does per update (no gradient accumulation, no loss scaler: bfloat16
autocast needs none): forward under autocast, label-smoothing loss, backward, optimizer step, zero_grad,
then `model_ema.update(model, step=num_updates)`. The EMA averages the eager module, whose parameters a
compiled model shares (timm builds its EMA before compiling). Speed is measured as train.py runs: with
TF32 matmuls and cuDNN's autotuner on (`train_py_flags`), not at the parity tests' pinned precision.
"""

from __future__ import annotations

import contextlib
import time

import timm
import timm.optim
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.models.resnet import BasicBlock, ResNet
from timm.utils import ModelEmaV3

EMAS = {'none': None, 'device': {}, 'cpu': {'device': 'cpu'}}


@contextlib.contextmanager
def train_py_flags():
    """What timm's train.py sets on a GPU: `cuda.matmul.allow_tf32 = True`, `cudnn.benchmark = True`."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = True, True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = before


def variants(compile_backend: str | None) -> dict:
    """{name: (mode, autocast dtype or None, ema)}: eager float32 / bfloat16 x EMA none / device / cpu, and
    torch.compile'd bfloat16 with the on-device EMA (the fast recipe) unless `compile_backend` is None."""
    out = {}
    for dtype in ('float32', 'bfloat16'):
        for ema in EMAS:
            out[f'timm_eager_{dtype}_ema_{ema}'] = ('eager', dtype, ema)
    if compile_backend:
        out['timm_compile_bfloat16_ema_device'] = ('compile', 'bfloat16', 'device')
    return out


def create(model_name: str, num_classes: int) -> torch.nn.Module:
    """timm's model; 'resnet-tiny' is timm's ResNet with one BasicBlock per stage (gpu_check --quick; ours
    stops after the first stage: --quick's figures are not a comparison)."""
    torch.manual_seed(0)
    if model_name == 'resnet-tiny':
        return ResNet(block=BasicBlock, layers=(1, 1, 1, 1), num_classes=num_classes)
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes)


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def build(model_name, num_classes, images, labels, decay, variant, compile_backend, device):
    """A closure running one timm train step of `variant` (images NHWC numpy, labels numpy)."""
    mode, dtype, ema_kind = variant
    model = create(model_name, num_classes).to(device=device, memory_format=torch.channels_last).train()
    optimizer = timm.optim.create_optimizer_v2(model, opt='sgd', lr=0.01, weight_decay=1e-4, momentum=0.9)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=0.1)
    model_ema = None if EMAS[ema_kind] is None else ModelEmaV3(model, decay=decay, **EMAS[ema_kind])
    forward = torch.compile(model, backend=compile_backend) if mode == 'compile' else model
    x = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels).to(device).long()
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if dtype == 'bfloat16'
        else contextlib.nullcontext()
    )
    count = [0]

    def step():
        with autocast:
            loss = loss_fn(forward(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        count[0] += 1
        if model_ema is not None:
            model_ema.update(model, step=count[0])

    return step


def runner(step, steps: int, warmup: int, device: torch.device):
    """A closure timing `steps` calls of `step` (seconds per step), after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)

    def timed():
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        return (time.perf_counter() - t0) / steps

    return timed


def peak_bytes(device: torch.device):
    """torch's peak allocated bytes on the GPU since the last reset (None on the CPU), then reset."""
    if device.type != 'cuda':
        return None
    peak = torch.cuda.max_memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    return int(peak)
