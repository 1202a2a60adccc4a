"""The model math of the engine: chunks of per-series work and one decode step for all rows.

Per-series work (tokenizer encode, window prefill, exact-mode window recomputation, tokenizer
decode) runs one series at a time, in chunks whose boundaries depend only on that series'
request: its numbers never depend on what else is running. The decode step advances every
decoding row of every series by one position in one batched call.
"""
from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch

from ..layers import RowGroups
from ..model import KronosModel, KVBuffers, SharedPrefix, causal_chunk_mask
from ..sampling import filter_logits
from ..tokenizer import KronosTokenizer
from .batch import DecodeBatch
from .cost import TOKENIZER_COST
from .decode_pass import aligned_keys, decode_pass
from .sequence import Recompute, Sequence
from .static_step import StaticDecode

SlidingMode = Literal["exact", "approximate"]
StepMode = Literal["eager", "static", "graphs"]  # static: fixed shapes run eagerly (tests)
ROPE_RESERVE = 1024  # rotary positions kept on the device from the start (grown on demand)


class Executor:
    """Runs prefill/recompute/tokenizer chunks of one series, and decode steps of the batch."""

    def __init__(self, model: KronosModel, tokenizer: KronosTokenizer, max_context: int,
                 sliding: SlidingMode, chunk_tokens: int, steps_mode: StepMode = "eager") -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_context, self.sliding = max_context, sliding
        self.chunk_tokens = chunk_tokens
        self.device = model.device
        # approximate mode hides cached keys older than the window; exact mode recomputes instead
        self.window_limit = max_context if sliding == "approximate" else None
        self.static = (None if steps_mode == "eager"
                       else StaticDecode(model, self.window_limit, graphs=steps_mode == "graphs"))
        model.rope.reserve(max(ROPE_RESERVE, 2 * max_context), self.device, model.dtype)

    # -- sampling -----------------------------------------------------------------------------
    def probabilities(self, logits: torch.Tensor, series: list[Sequence]) -> torch.Tensor:
        """Sampling probabilities of rows [rows, vocab] holding every path of each of ``series``
        in turn: each row's temperature, top-k or top-p filter and softmax, in one batched call.

        Every operation works row by row, so a row's probabilities do not depend on which other
        rows share the call."""
        paths = torch.tensor([seq.paths for seq in series], device=logits.device)

        def per_row(values: list[float], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=logits.device).repeat_interleave(paths)
        params = [seq.request.sampling for seq in series]
        temperature = per_row([p.temperature for p in params], torch.float32)
        top_k = per_row([p.top_k for p in params], torch.long)
        top_p = per_row([p.top_p for p in params], torch.float32)
        filtered = filter_logits(logits.float() / temperature[:, None], top_k, top_p)
        return torch.softmax(filtered, dim=-1)

    def draw(self, probabilities: torch.Tensor, seq: Sequence) -> torch.Tensor:
        """One token per path of ``seq`` from its rows' probabilities [paths, vocab], with its
        generator: a series draws once per call over its own paths in order, so its samples do
        not depend on which other series share the step."""
        return torch.multinomial(probabilities, 1, generator=seq.generator)[:, 0]

    def sample(self, logits: torch.Tensor, seq: Sequence) -> torch.Tensor:
        """One token per path of ``seq`` from its logits [paths, vocab]."""
        if seq.greedy:
            return logits.argmax(dim=-1)
        return self.draw(self.probabilities(logits, [seq]), seq)

    def _sample_first(self, seq: Sequence, last_state: torch.Tensor, context: SharedPrefix,
                      own_context: tuple[torch.Tensor, torch.Tensor], step: int) -> None:
        """Sample step ``step`` of every path from the last window position's states [paths, d]."""
        groups = RowGroups([0] * seq.paths, self.device)
        s1 = self.sample(self.model.s1_logits(last_state), seq)
        s2 = self.sample(self.model.s2_logits(last_state, s1, context, None, own_context, None,
                                              groups), seq)
        seq.gen_s1[:, step], seq.gen_s2[:, step] = s1, s2
        seq.steps_done = step + 1

    # -- per-series work ----------------------------------------------------------------------
    def encode(self, seq: Sequence) -> None:
        """Token ids of the whole input (the window is taken from its last positions)."""
        # every position this series feeds (window, then generated steps) has its rotary row
        self.model.rope.reserve(self.window(seq) + seq.horizon, self.device, self.model.dtype)
        values = torch.from_numpy(seq.prepared.values)[None].to(self.device)
        s1, s2 = self.tokenizer.encode(values)
        seq.history_s1, seq.history_s2 = s1[0], s2[0]

    def window(self, seq: Sequence) -> int:
        return min(seq.length, self.max_context)

    def prefill_chunk(self, seq: Sequence, batch: DecodeBatch) -> None:
        """Feed the next chunk of the window into the series' prefix slot; after the last chunk,
        sample step 0."""
        window = self.window(seq)
        start = seq.prefilled
        end = min(window, start + self.chunk_tokens)
        first = seq.length - window
        own = batch.prefixes.cache(slice(seq.slot, seq.slot + 1), length=start)
        states, _ = self.model.extend(
            seq.history_s1[None, first + start:first + end], seq.history_s2[None, first + start:first + end],
            seq.history_stamps[None, first + start:first + end],
            torch.arange(start, end, device=self.device)[None], None, None, own,
            causal_chunk_mask(start, end - start, self.device), RowGroups([0], self.device))
        seq.prefilled = end
        if end == window:
            last = states[:, -1].expand(seq.paths, -1)
            context = batch.prefixes.prefix(slice(seq.slot, seq.slot + 1), window)
            empty = context.context[0].new_zeros(seq.paths, *context.context[0].shape[1:2], 0,
                                                 context.context[0].shape[3])
            self._sample_first(seq, last, context, (empty, empty), 0)

    def start_recompute(self, seq: Sequence) -> None:
        """Set up the window recomputation that samples step ``seq.steps_done``."""
        step = seq.steps_done
        generated = min(step, self.max_context)
        seq.recompute = Recompute(step=step, history=self.max_context - generated, generated=generated)

    def recompute_chunk(self, seq: Sequence) -> None:
        """The next chunk of the slid window: history part first (once for all paths), then
        every path's generated part; after the last chunk, sample the step."""
        work = seq.recompute
        if work.buffers is None:
            work.buffers = (KVBuffers(self.model, 1, max(1, work.history)),
                            KVBuffers(self.model, seq.paths, work.generated))
        history_kv, generated_kv = work.buffers
        if work.history_done < work.history:
            start = work.history_done
            end = min(work.history, start + self.chunk_tokens)
            first = seq.length - work.history
            self.model.extend(
                seq.history_s1[None, first + start:first + end], seq.history_s2[None, first + start:first + end],
                seq.history_stamps[None, first + start:first + end],
                torch.arange(start, end, device=self.device)[None], None, None,
                history_kv.cache(slice(0, 1), length=start),
                causal_chunk_mask(start, end - start, self.device), RowGroups([0], self.device))
            work.history_done = end
            return
        per_path = max(1, self.chunk_tokens // seq.paths)
        start = work.generated_done
        end = min(work.generated, start + per_path)
        offset = work.step - work.generated  # first generated token in the window
        prefix = history_kv.prefix(slice(0, 1), work.history) if work.history else None
        positions = work.history + torch.arange(start, end, device=self.device)
        states, own_context = self.model.extend(
            seq.gen_s1[:, offset + start:offset + end], seq.gen_s2[:, offset + start:offset + end],
            seq.future_stamps[None, offset + start:offset + end].expand(seq.paths, -1, -1),
            positions[None].expand(seq.paths, -1), prefix, None,
            generated_kv.cache(slice(None), length=start),
            causal_chunk_mask(start, end - start, self.device), RowGroups([0] * seq.paths, self.device))
        work.generated_done = end
        if end == work.generated:
            context = prefix or SharedPrefix([], (own_context[0][:1, :, :0], own_context[1][:1, :, :0]))
            self._sample_first(seq, states[:, -1], context, own_context, work.step)
            seq.recompute = None

    def detokenize_window(self, seq: Sequence) -> int:
        """Tokens the tokenizer decodes per path (the last ``max_context`` of input + forecast)."""
        return min(seq.length + seq.horizon, self.max_context)

    def detokenize_paths(self, seq: Sequence) -> int:
        """How many paths one detokenize chunk decodes (fixed per request)."""
        return max(1, int(self.chunk_tokens / (self.detokenize_window(seq) * TOKENIZER_COST)))

    def detokenize_chunk(self, seq: Sequence) -> None:
        """Decode the next few paths' last ``max_context`` tokens back to normalised candles."""
        if seq.paths_out is None:
            seq.paths_out = np.zeros((seq.paths, seq.horizon, 6), dtype=np.float32)
        start = seq.detokenized
        end = min(seq.paths, start + self.detokenize_paths(seq))
        count, horizon = end - start, seq.horizon
        s1 = torch.cat([seq.history_s1[None].expand(count, -1), seq.gen_s1[start:end, :horizon]], 1)
        s2 = torch.cat([seq.history_s2[None].expand(count, -1), seq.gen_s2[start:end, :horizon]], 1)
        decoded = self.tokenizer.decode(s1[:, -self.max_context:], s2[:, -self.max_context:])
        seq.paths_out[start:end] = decoded[:, -horizon:].float().cpu().numpy()
        seq.detokenized = end

    # -- the batched decode step --------------------------------------------------------------
    def decode_step(self, batch: DecodeBatch) -> list[tuple[Sequence, Exception]]:
        """Advance every row of the batch by one generated token.

        Returns the series whose own sampling failed (their tokens this step are not kept)."""
        windows = [self.window(seq) for seq, _ in batch.rows]
        stamps = torch.stack([seq.future_stamps[batch.own_len[r]]
                              for r, (seq, _) in enumerate(batch.rows)])[:, None]
        if self.static is not None:
            s1_logits, s2_logits_of = self.static.forward(batch, windows, stamps)
        else:
            s1_logits, s2_logits_of = self._eager_forward(batch, windows, stamps)
        _, rows_of = batch.layout()
        series = batch.decoding()
        failures: list[tuple[Sequence, Exception]] = []
        s1 = self._sample_rows(s1_logits, series, rows_of, failures)
        s2 = self._sample_rows(s2_logits_of(s1), series, rows_of, failures)
        rows = batch.n_rows
        batch.last_s1[:rows], batch.last_s2[:rows] = s1, s2
        failed = {id(seq) for seq, _ in failures}
        for seq in series:
            if id(seq) in failed:
                continue
            index = rows_of[seq.id]
            seq.gen_s1[:, seq.steps_done] = s1[index]
            seq.gen_s2[:, seq.steps_done] = s2[index]
            seq.steps_done += 1
        batch.own_len = [n + 1 for n in batch.own_len]
        return failures

    def _eager_forward(self, batch: DecodeBatch, windows: list[int], stamps: torch.Tensor
                       ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """The step at the batch's own shapes: s1 logits, and the function giving s2 logits."""
        rows = batch.n_rows
        groups, _ = batch.layout()
        # attention reads what the longest window and the furthest row have written, not the
        # buffers' capacity (a step's cost follows the live rows, not the biggest ever admitted)
        step = decode_pass(self.model, batch.prefixes, batch.own, groups.n_series,
                           batch.last_s1[:rows], batch.last_s2[:rows], stamps,
                           torch.tensor(windows, device=self.device),
                           torch.tensor(batch.own_len, device=self.device), self.window_limit,
                           groups, aligned_keys(max(windows), batch.prefixes.capacity),
                           aligned_keys(max(batch.own_len) + 1, batch.own.capacity))
        return step.s1_logits(), step.s2_logits

    def _sample_rows(self, logits: torch.Tensor, series: list[Sequence],
                     rows_of: dict[int, torch.Tensor],
                     failures: list[tuple[Sequence, Exception]]) -> torch.Tensor:
        """Tokens for every row: greedy rows by one argmax; sampled rows' probabilities in one
        batched call, then one draw per series with its generator."""
        out = logits.argmax(dim=-1)
        failed = {id(seq) for seq, _ in failures}
        sampled = [seq for seq in series if not seq.greedy and id(seq) not in failed]
        if not sampled:
            return out
        index = [rows_of[seq.id] for seq in sampled]
        probabilities = self.probabilities(logits[torch.cat(index)], sampled)
        start = 0
        for seq, rows in zip(sampled, index):
            try:
                out[rows] = self.draw(probabilities[start:start + seq.paths], seq)
            except Exception as exc:  # e.g. non-finite probabilities: this series only
                failures.append((seq, exc))
            start += seq.paths
        return out

    def needs_recompute(self, seq: Sequence) -> bool:
        """Exact mode: the window of the next step slid past the cached prefix."""
        return self.sliding == "exact" and seq.length + seq.steps_done > self.max_context

