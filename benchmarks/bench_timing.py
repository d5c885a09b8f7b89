"""Timing closures and interleaved rounds (bench_ema.py, bench_ema_update.py, gpu_check.py): each closure
times a few calls and returns seconds per call; variants alternate in rounds, so drift in the load of a shared
machine hits all of them alike."""

import statistics
import time

import jax
import torch


def interleave(fns: dict, rounds: int) -> dict:
    """{name: [seconds per call of fns[name]() in each round]}, the variants alternating within each round."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(fn())
    return times


def medians(times: dict) -> dict:
    return {name: statistics.median(t) for name, t in times.items()}


def timed_jax(fn, carry, reps):
    """A closure timing `reps` calls of carry = fn(carry) ending in one block_until_ready (per call)."""
    box = [jax.block_until_ready(fn(carry))]  # compile and warm up

    def run():
        t0 = time.perf_counter()
        for _ in range(reps):
            box[0] = fn(box[0])
        jax.block_until_ready(box[0])
        return (time.perf_counter() - t0) / reps

    return run


def timed_torch(fn, reps, device):
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    fn(0)
    sync()
    count = [1]

    def run():
        t0 = time.perf_counter()
        for _ in range(reps):
            count[0] += 1
            fn(count[0])
        sync()
        return (time.perf_counter() - t0) / reps

    return run


def step_runner(run, state, steps, warmup):
    """A closure timing `steps` train steps ending in one block_until_ready (per step)."""
    box = [state]
    for _ in range(warmup):
        box[0] = run(box[0])
    jax.block_until_ready(box[0])

    def timed():
        t0 = time.perf_counter()
        for _ in range(steps):
            box[0] = run(box[0])
        jax.block_until_ready(box[0].params)
        return (time.perf_counter() - t0) / steps

    return timed
