"""Engine regressions found by the benchmark."""

from __future__ import annotations

import torch

from inference.engine import Engine, EngineConfig, GenerationRequest
from inference.models import tiny_llama


def test_row_moves_after_the_kv_cache_grew() -> None:
    """The cache grows inside a decode step (inference mode); a row finishing afterwards moves the last
    row into its place outside it. That copy used to fail ("Inplace update to inference tensor outside
    InferenceMode") once any request had passed the cache's first 256 positions."""
    torch.set_num_threads(1)
    engine = Engine(tiny_llama(0), EngineConfig(max_slots=2, max_rank=8, max_batch=2))
    short, long = engine.generate_batch_sync(
        [
            GenerationRequest("hello there", None, max_tokens=280),
            GenerationRequest("hello there", None, max_tokens=300),
        ]
    )
    assert engine.runner.cache.positions <= 512
    alone = engine.generate_batch_sync([GenerationRequest("hello there", None, max_tokens=300)])[0]
    assert (len(short.token_ids), len(long.token_ids)) == (280, 300)
    assert long.token_ids == alone.token_ids  # the moved row continued exactly
