"""Several GPUs on one host: each BentoML worker on its own GPU.

BentoML gives every worker of a service the same CUDA_VISIBLE_DEVICES (all the GPUs assigned to
it), so ``device: cuda`` would put every worker on the first one. A worker knows its index
(``bentoml.server_context.worker_index``, 1-based), so worker i takes visible GPU (i - 1) mod N.
"""
from __future__ import annotations


def worker_device(device: str, worker_index: int | None, gpu_count: int) -> str:
    """The device of worker ``worker_index`` given the configured ``device`` and visible GPUs.

    Only a bare ``cuda`` is spread; ``cpu`` and an explicit ``cuda:K`` are kept as configured.
    """
    if device != "cuda" or worker_index is None or gpu_count <= 1:
        return device
    return f"cuda:{(worker_index - 1) % gpu_count}"


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
