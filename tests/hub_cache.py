"""A Hugging Face hub cache built by the tests (no network): the layout `hf_hub_download` reads offline,

    CACHE/models--timm--<name>.<tag>/refs/main                      (the snapshot's commit hash)
    CACHE/models--timm--<name>.<tag>/snapshots/<hash>/model.safetensors

and a context manager that points huggingface_hub at such a cache with the hub offline, for in-process
calls (huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE once, when it is imported) and for
subprocesses (the same two environment variables).
"""

import contextlib
import os
from pathlib import Path

from jax_ema import timm_io

REVISION = '0123456789abcdef0123456789abcdef01234567'  # a commit hash, as the hub's


def write_hub_cache(cache: Path, repo_id: str, state_dict: dict, filename: str = 'model.safetensors') -> Path:
    """Put `state_dict` into `cache` as `filename` of hub repo `repo_id`; returns the file."""
    repo = Path(cache) / f'models--{repo_id.replace("/", "--")}'
    snapshot = repo / 'snapshots' / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / 'refs').mkdir(exist_ok=True)
    (repo / 'refs' / 'main').write_text(REVISION)
    return timm_io.save_timm_safetensors(state_dict, snapshot / filename)


@contextlib.contextmanager
def offline_hub(cache: Path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache, in os.environ and in huggingface_hub.constants, then restored."""
    from huggingface_hub import constants

    saved_env = {k: os.environ.get(k) for k in ('HF_HUB_OFFLINE', 'HF_HUB_CACHE')}
    saved = (constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE)
    os.environ.update(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache))
    constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = True, str(cache)
    try:
        yield Path(cache)
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_CACHE = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
