"""The eager decode step reads only the keys live rows have written (rounded up to a multiple of
``KEY_ALIGN``), with the numbers of a step over the buffers' whole capacity (the same tokens;
engine-level token identity under any company is checked in test_engine.py)."""
from __future__ import annotations

import torch

from conftest import TEST_DEVICE
from kronos_runtime import KronosForecaster
from kronos_runtime.engine import EngineLimits
from kronos_runtime.engine import executor as executor_module
from kronos_runtime.engine.decode_pass import KEY_ALIGN, aligned_keys, decode_pass
from kronos_runtime.layers import RowGroups
from kronos_runtime.loading import load_model
from kronos_runtime.model import KVBuffers
from test_engine import long_request, short_request


def test_aligned_keys_round_up_to_the_alignment_within_the_capacity():
    assert KEY_ALIGN == 8
    assert [aligned_keys(n, 512) for n in (1, 8, 9, 377, 512)] == [8, 8, 16, 384, 512]
    assert aligned_keys(300, 256) == 256


def test_a_step_over_the_written_keys_gives_the_numbers_of_a_step_over_the_capacity(tiny_checkpoint):
    model = load_model(tiny_checkpoint[0], TEST_DEVICE)
    model.rope.reserve(512, model.device, model.dtype)
    torch.manual_seed(0)
    prefixes, own = KVBuffers(model, 3, 256), KVBuffers(model, 6, 64)
    for keys, values in prefixes.all() + own.all():
        keys.normal_(), values.normal_()
    device = model.device
    row_series = [0, 0, 1, 1, 1, 2]
    window = torch.tensor([37, 37, 150, 150, 150, 9], device=device)
    written = torch.tensor([5, 5, 20, 20, 20, 2], device=device)
    tokens = torch.randint(0, 1024, (2, 6), device=device)
    stamps = torch.randint(0, 5, (6, 1, 5), device=device).float()

    def logits(prefix_keys, own_keys):
        with torch.inference_mode():
            step = decode_pass(model, prefixes, own, 3, tokens[0], tokens[1], stamps, window,
                               written, None, RowGroups(row_series, device), prefix_keys, own_keys)
            s1 = step.s1_logits()
            return s1, step.s2_logits(s1.argmax(-1))

    full = logits(None, None)
    trimmed = logits(aligned_keys(150, 256), aligned_keys(21, 64))
    assert (aligned_keys(150, 256), aligned_keys(21, 64)) == (152, 24)
    for a, b in zip(full, trimmed):  # float rounding only (masked keys weigh exactly zero)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    # reading fewer keys than a row has written changes its numbers: the bounds are what count
    short = logits(aligned_keys(100, 256), aligned_keys(21, 64))
    assert not torch.allclose(full[0], short[0], atol=1e-3)


def test_the_engine_step_reads_only_what_its_live_rows_need(tiny_checkpoint, monkeypatch):
    forecaster = KronosForecaster.from_pretrained(*tiny_checkpoint, device=TEST_DEVICE,
                                                  max_context=48)
    seen = []

    def recording(model, prefixes, own, n_series, s1, s2, stamps, window, written, *rest):
        prefix_keys, own_keys = rest[2], rest[3]
        seen.append((prefix_keys, own_keys, prefixes.capacity, own.capacity,
                     int(window.max()), int(written.max()) + 1))
        return decode_pass(model, prefixes, own, n_series, s1, s2, stamps, window, written, *rest)
    monkeypatch.setattr(executor_module, "decode_pass", recording)
    engine = forecaster.engine(EngineLimits(chunk_tokens=16, step_tokens=32))
    requests = [long_request(40, 30, 2), short_request(1)]
    futures = [engine.submit(r, forecaster.prepare(r)) for r in requests]
    engine.run_until_idle()
    assert all(f.result() is not None for f in futures) and seen
    for prefix_keys, own_keys, prefix_capacity, own_capacity, window, own_needed in seen:
        assert prefix_keys % KEY_ALIGN == 0 and window <= prefix_keys <= prefix_capacity
        assert own_keys % KEY_ALIGN == 0 and own_needed <= own_keys <= own_capacity
    # early steps of the 30-step request read 8 own keys of its 32
    assert any(own_keys < own_capacity for _, own_keys, _, own_capacity, _, _ in seen)
