"""Checkpoint loading: local directories, both weight formats, the hub path, clear failures."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_candles
from kronos_runtime import (CheckpointError, ForecastRequest, KronosForecaster, SamplingParams,
                            load_model, load_tokenizer)


def greedy_close(forecaster):
    frame, stamps = make_candles(30, seed=1)
    result = forecaster.forecast([ForecastRequest(frame, 4, timestamps=stamps,
                                                  sampling=SamplingParams(top_k=1))])[0]
    return result.mean["close"].to_numpy()


def test_pytorch_bin_loads_like_safetensors(tiny_checkpoint, tmp_path):
    model_dir, tokenizer_dir = tiny_checkpoint
    bin_dir = tmp_path / "model"
    bin_dir.mkdir()
    shutil.copy(model_dir / "config.json", bin_dir)
    torch.save(load_file(str(model_dir / "model.safetensors")), bin_dir / "pytorch_model.bin")
    np.testing.assert_array_equal(greedy_close(KronosForecaster.from_pretrained(bin_dir, tokenizer_dir)),
                                  greedy_close(KronosForecaster.from_pretrained(*tiny_checkpoint)))


def test_dtype_and_device_are_applied(tiny_checkpoint):
    model = load_model(tiny_checkpoint[0], device="cpu", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu" and not model.training
    assert load_tokenizer(tiny_checkpoint[1]).dtype == torch.float32


def test_hub_ids_go_through_huggingface_hub(tiny_checkpoint, monkeypatch, tmp_path):
    calls = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, allow_patterns=None):
        calls.append((repo_id, revision, cache_dir))
        return str(tiny_checkpoint[0])

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_model("NeoQuasar/Kronos-small", revision="abc123", cache_dir=tmp_path)
    assert calls == [("NeoQuasar/Kronos-small", "abc123", str(tmp_path))]
    assert model.config.d_model == 32


def test_unreachable_hub_is_a_clear_checkpoint_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="NeoQuasar/Kronos-mini"):
        load_model("NeoQuasar/Kronos-mini", cache_dir=tmp_path)


def test_missing_and_corrupt_checkpoints_fail_clearly(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint[0], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(broken)
    config = json.loads((broken / "config.json").read_text())
    config["d_model"] = 64
    (broken / "config.json").write_text(json.dumps(config))
    shutil.copy(tiny_checkpoint[0] / "model.safetensors", broken)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(broken)


ONE_COPY_PROBE = """
import gc, sys, psutil, torch
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from kronos_runtime import KronosForecaster
from kronos_runtime.dev_checkpoint import write_pair
pair = write_pair(Path(sys.argv[2]), "small", seed=0)
gc.collect()
before = psutil.Process().memory_info().rss
forecaster = KronosForecaster.from_pretrained(*pair)
gc.collect()
print(psutil.Process().memory_info().rss - before)
"""


def test_a_loaded_forecaster_holds_one_copy_of_the_weights(tmp_path):
    """Fusing and oneDNN packing replace the loaded weights; nothing keeps the originals."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    grown = int(subprocess.run([sys.executable, "-c", ONE_COPY_PROBE, str(root), str(tmp_path)],
                               capture_output=True, text=True, check=True, timeout=300).stdout)
    weights = sum(f.stat().st_size for f in tmp_path.rglob("*.safetensors"))
    assert weights > 20 * 2 ** 20
    assert grown < 1.25 * weights, f"RSS grew {grown / 2**20:.0f} MB for {weights / 2**20:.0f} MB of weights"
