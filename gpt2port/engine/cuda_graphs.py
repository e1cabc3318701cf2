"""One-token decoding steps replayed from a CUDA graph: one launch per token instead of one per
kernel (~400 for GPT-2 124M), which is what bounds batch-1 decoding on a GPU."""

from __future__ import annotations

import torch


class CapturedStep:
    """A ``decoding.Decoder``'s one-token step over its ``StaticKVCache``: captured as a CUDA
    graph when the cache is on a CUDA device, else run as it is (the same computation, which is
    how the CPU checks it). The decoder advances the cache after each call, outside the graph."""

    def __init__(self, decoder):
        self.decoder = decoder
        batch, device = decoder.cache.keys.shape[1], decoder.cache.keys.device
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=device)  # (B, 1)
        self.graph = None
        if device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up before capture, as CUDA graphs need
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = self._step()  # (B, V): the graph's output buffer

    def _step(self) -> torch.Tensor:
        return self.decoder.logits(self.token, None, self.decoder.step.product,
                                   last_only=True)[:, -1]

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """The logits (B, V) after ``token`` (B, 1) at the cache's position; its keys are
        cached."""
        self.token.copy_(token)
        if self.graph is None:
            return self._step()
        self.graph.replay()
        return self.logits
