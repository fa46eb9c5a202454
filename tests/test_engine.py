"""The swap engine against PEFT (the oracle), plus its scheduling, pinning and back-pressure rules.
Everything runs on the seeded tiny Llama in float32."""

from __future__ import annotations

import asyncio
import copy
import json
import random
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from inference.adapter import AdapterWeights, adapter_weights_from_state_dict
from inference.engine import Engine, EngineBusy, EngineConfig, GenerationRequest
from inference.models import LoadedModel, tiny_llama
from inference.prompt import encode_prompt
from inference.reference import peft_generate
from tests.factories import make_peft_adapter

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# (rank, alpha, targets): mixed ranks and target sets, incl. rslora-free alphas != rank
SPECS = {
    "r2-qv": (2, 4, ("q_proj", "v_proj")),
    "r4-attn": (4, 16, ("q_proj", "k_proj", "v_proj", "o_proj")),
    "r8-mlp": (8, 8, ("gate_proj", "up_proj", "down_proj")),
    "r16-all": (16, 32, ALL),
}
PROMPTS = ["hello there", "what is a LoRA?", "abc", "the quick brown fox jumps"]
ATOL = 1e-4


def load_weights(adapter_dir: Path) -> AdapterWeights:
    """A trusted PEFT folder -> AdapterWeights (the engine's input type)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    return adapter_weights_from_state_dict(config, load_file(str(adapter_dir / "adapter_model.safetensors")))


def peft_logits(base: LoadedModel, adapter_dir: Path | None, ids: list[int]) -> torch.Tensor:
    """PEFT's logits [len(ids), vocab] for one prompt (the bare base model when adapter_dir is None)."""
    model = base.model
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(adapter_dir), use_safetensors=True)
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def oracle_base() -> LoadedModel:
    return tiny_llama(0)


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory: pytest.TempPathFactory, oracle_base: LoadedModel) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        key: make_peft_adapter(oracle_base, root / key, rank=r, alpha=a, targets=t, seed=i + 1)
        for i, (key, (r, a, t)) in enumerate(SPECS.items())
    }


def make_engine(dirs: dict[str, Path], **overrides: object) -> Engine:
    engine = Engine(tiny_llama(0), EngineConfig(**{"max_slots": 4, "max_rank": 16, **overrides}))  # type: ignore[arg-type]
    for key, d in dirs.items():
        engine.add_adapter(key, load_weights(d))
    return engine


def test_each_adapter_greedy_equals_peft(oracle_base: LoadedModel, adapter_dirs: dict[str, Path]) -> None:
    engine = make_engine(adapter_dirs)
    for key, d in adapter_dirs.items():
        ref = peft_generate(oracle_base, d, PROMPTS[1], 24)
        [out] = engine.generate_batch_sync([GenerationRequest(PROMPTS[1], key, max_tokens=24)])
        assert out.token_ids == ref.token_ids, key
        assert out.text == ref.text
    base_ref = peft_generate(oracle_base, None, PROMPTS[1], 24)
    [out] = engine.generate_batch_sync([GenerationRequest(PROMPTS[1], None, max_tokens=24)])
    assert out.token_ids == base_ref.token_ids


def test_mixed_batch_logits_match_peft(oracle_base: LoadedModel, adapter_dirs: dict[str, Path]) -> None:
    """One forward pass, five rows, five different adapters (one row without), prompts of different
    lengths (left padding): every row's logits at every position equal PEFT's."""
    engine = make_engine(adapter_dirs)
    keys: list[str | None] = [*adapter_dirs, None]
    prompts = [encode_prompt(oracle_base.tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(len(keys))]
    got = engine.prompt_logits(prompts, keys)
    for key, ids, logits in zip(keys, prompts, got, strict=True):
        ref = peft_logits(oracle_base, adapter_dirs[key] if key else None, ids)
        torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0, msg=f"adapter {key}")
    # and the adapters matter: a row's logits differ from the bare model's
    assert not torch.allclose(got[0], got[-1][: len(got[0])], atol=1e-2) or len(prompts[0]) != len(
        prompts[-1]
    )


def test_mixed_batch_greedy_equals_peft(oracle_base: LoadedModel, adapter_dirs: dict[str, Path]) -> None:
    engine = make_engine(adapter_dirs, max_batch=8)
    keys: list[str | None] = [*adapter_dirs, None, "r4-attn", "r16-all"]
    requests = [
        GenerationRequest(PROMPTS[i % len(PROMPTS)], k, max_tokens=12 + 3 * i) for i, k in enumerate(keys)
    ]
    results = engine.generate_batch_sync(requests)
    decode_batches = [s for s in engine.recent_steps() if s.kind == "decode"]
    assert len(set(decode_batches[0].adapters)) == 5, "rows of different adapters were not batched together"
    for req, res in zip(requests, results, strict=True):
        ref = peft_generate(
            oracle_base, adapter_dirs[req.adapter] if req.adapter else None, req.prompt, req.max_tokens
        )
        assert res.token_ids == ref.token_ids, req.adapter


def test_thousand_swaps_through_small_pool(tmp_path: Path, oracle_base: LoadedModel) -> None:
    """40 adapters of mixed ranks and target sets through 4 slots, > 1,000 swap-ins; every first token and,
    at the end, every adapter's logits still equal PEFT's: no slot kept stale rows from an earlier, wider
    occupant. In float64 so that any stale value shows far above rounding (1e-9 tolerance)."""
    rng = random.Random(7)
    ranks, target_sets = (
        (2, 4, 8, 16),
        (("q_proj", "v_proj"), ("o_proj", "down_proj"), ALL, ("k_proj", "up_proj")),
    )
    dirs = {
        f"a{i}": make_peft_adapter(
            oracle_base,
            tmp_path / f"a{i}",
            rank=rng.choice(ranks),
            alpha=8,
            targets=rng.choice(target_sets),
            seed=100 + i,
        )
        for i in range(40)
    }
    ids = encode_prompt(oracle_base.tokenizer, "swap")
    oracle64 = copy.deepcopy(oracle_base.model).double()
    peft = PeftModel.from_pretrained(oracle64, str(dirs["a0"]), adapter_name="a0")
    ref: dict[str, torch.Tensor] = {}
    for key, d in dirs.items():
        if key != "a0":
            peft.load_adapter(str(d), adapter_name=key)
        peft.set_adapter(key)
        with torch.no_grad():
            ref[key] = peft(input_ids=torch.tensor([ids])).logits[0]
    engine = make_engine(dirs, max_slots=4, max_batch=4, max_queue=2000, dtype=torch.float64)
    requests = [GenerationRequest("swap", f"a{rng.randrange(40)}", max_tokens=1) for _ in range(1300)]
    results = engine.generate_batch_sync(requests)
    assert engine.stats().swaps_in >= 1000
    for req, res in zip(requests, results, strict=True):
        expected = int(ref[req.adapter][-1].argmax())  # type: ignore[index]
        assert res.token_ids in ([expected], []), req.adapter  # [] when the token is EOS
    for chunk in range(0, 40, 4):
        keys: list[str | None] = [f"a{i}" for i in range(chunk, chunk + 4)]
        for key, logits in zip(keys, engine.prompt_logits([ids] * 4, keys), strict=True):
            torch.testing.assert_close(logits.double(), ref[key], atol=1e-9, rtol=0)  # type: ignore[index]


def test_weighted_merge_equals_peft_cat(oracle_base: LoadedModel, adapter_dirs: dict[str, Path]) -> None:
    """`adapters=((k, w), ...)` equals PEFT's add_weighted_adapter(combination_type="cat"): greedy in
    float32, and logits in float64 (the merge reorders float32 rounding: weight on B here, on A in PEFT)."""
    parts = (("r4-attn", 0.7), ("r16-all", 0.3))

    def peft_merged(dtype: torch.dtype) -> PeftModel:
        model = copy.deepcopy(oracle_base.model).to(dtype)
        peft = PeftModel.from_pretrained(model, str(adapter_dirs["r4-attn"]), adapter_name="r4-attn")
        peft.load_adapter(str(adapter_dirs["r16-all"]), adapter_name="r16-all")
        peft.add_weighted_adapter([k for k, _ in parts], [w for _, w in parts], "xy", combination_type="cat")
        peft.set_adapter("xy")
        return peft

    ids = encode_prompt(oracle_base.tokenizer, PROMPTS[3])
    eos = oracle_base.tokenizer.eos_token_id
    with torch.no_grad():
        greedy = (
            peft_merged(torch.float32)
            .generate(input_ids=torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=eos)[
                0, len(ids) :
            ]
            .tolist()
        )
        ref64 = peft_merged(torch.float64)(input_ids=torch.tensor([ids])).logits[0]
    [out] = make_engine(adapter_dirs, max_rank=32).generate_batch_sync(
        [GenerationRequest(PROMPTS[3], None, max_tokens=16, adapters=parts)]
    )
    assert out.token_ids == [t for t in greedy if t != eos]
    engine64 = make_engine(adapter_dirs, max_rank=32, dtype=torch.float64)
    engine64.generate_batch_sync([GenerationRequest(PROMPTS[3], None, max_tokens=1, adapters=parts)])
    key = next(s.adapters[0] for s in engine64.recent_steps())
    assert key is not None and key.startswith("merge:")
    [logits] = engine64.prompt_logits([ids], [key])
    torch.testing.assert_close(logits, ref64, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="max_rank"):
        make_engine(adapter_dirs, max_rank=16).generate_batch_sync(
            [GenerationRequest("x", None, adapters=(("r16-all", 0.5), ("r2-qv", 0.5)))]
        )


def test_pinned_slot_is_never_evicted(oracle_base: LoadedModel, adapter_dirs: dict[str, Path]) -> None:
    """A long request pins its pages while 30 short ones cycle three other adapters through the pages
    left (24 rank rows: the pinned rank 16 leaves 8, room for r2 + r4 or r8 alone): its adapter stays
    resident and its output still equals PEFT's."""
    probe = make_engine({}, max_slots=1)
    row_bytes = probe.pool_bytes // probe.slots.num_pages
    engine = make_engine(adapter_dirs, max_batch=2, max_queue=64, pool_budget_bytes=24 * row_bytes)
    assert engine.slots.num_pages == 24
    long = GenerationRequest(PROMPTS[0], "r16-all", max_tokens=60)
    others = ["r2-qv", "r4-attn", "r8-mlp"]
    short = [GenerationRequest(PROMPTS[2], others[i % 3], max_tokens=1) for i in range(30)]
    results = engine.generate_batch_sync([long, *short])
    decode_steps = [s for s in engine.recent_steps() if s.kind == "decode"]
    long_slot_adapters = {s.adapters[0] for s in decode_steps if s.request_ids[0] == 0}
    assert long_slot_adapters == {"r16-all"}
    assert engine.stats().swaps_in >= 30 and engine.stats().evictions >= 28
    assert (
        results[0].token_ids == peft_generate(oracle_base, adapter_dirs["r16-all"], PROMPTS[0], 60).token_ids
    )


def test_slot_pool_rules() -> None:
    from inference.engine.slots import NoFreeSlot, SlotPool

    pool = SlotPool(2)
    a, hit_a = pool.acquire("a")
    b, _ = pool.acquire("b")
    assert not hit_a and a != b
    with pytest.raises(NoFreeSlot):
        pool.acquire("c")  # both pinned: nothing may be evicted
    assert pool.acquire("a") == (a, True)  # a second pin on a resident adapter is a hit
    pool.release(a)
    with pytest.raises(NoFreeSlot):
        pool.acquire("c")  # "a" is still pinned once
    pool.release(a)
    pool.release(b)
    c, hit_c = pool.acquire("c")  # LRU idle slot: "a" was released before "b"
    assert c == a and not hit_c and pool.lookup("a") is None and pool.lookup("b") == b
    assert pool.evictions == 1
    with pytest.raises(RuntimeError, match="released more often"):
        pool.release(b)


async def test_full_queue_answers_busy(adapter_dirs: dict[str, Path]) -> None:
    engine = make_engine(adapter_dirs, max_batch=1, max_queue=1)
    await engine.start()
    try:
        running = asyncio.create_task(engine.generate(GenerationRequest("a", "r2-qv", max_tokens=400)))
        await _until(lambda: engine.stats().running == 1)
        waiting = asyncio.create_task(engine.generate(GenerationRequest("b", "r4-attn", max_tokens=2)))
        await _until(lambda: engine.stats().queue_depth == 1)
        with pytest.raises(EngineBusy, match="queue is full"):
            await engine.generate(GenerationRequest("c", None, max_tokens=2))
        assert (await waiting).finish_reason in ("length", "stop")
        assert len((await running).token_ids) > 0
    finally:
        await engine.stop()


async def test_request_joins_running_batch(oracle_base: LoadedModel, adapter_dirs: dict[str, Path]) -> None:
    """Continuous batching: B, submitted while A is decoding, is prefilled between two of A's decode steps
    and then decoded in the same forward passes as A; A's output is unaffected."""
    engine = make_engine(adapter_dirs, max_batch=4)
    await engine.start()
    try:
        a = asyncio.create_task(engine.generate(GenerationRequest(PROMPTS[0], "r8-mlp", max_tokens=150)))
        await _until(lambda: sum(s.kind == "decode" for s in engine.recent_steps()) >= 5)
        b = await engine.generate(GenerationRequest(PROMPTS[1], "r2-qv", max_tokens=8))
        a_out = await a
    finally:
        await engine.stop()
    steps = engine.recent_steps()
    a_id, b_id = (
        steps[0].request_ids[0],
        next(i for s in steps for i in s.request_ids if i != steps[0].request_ids[0]),
    )
    b_prefill = next(s.step for s in steps if s.kind == "prefill" and b_id in s.request_ids)
    a_decodes = [s.step for s in steps if s.kind == "decode" and a_id in s.request_ids]
    assert a_decodes[0] < b_prefill < a_decodes[-1]
    shared = [s for s in steps if s.kind == "decode" and set(s.request_ids) == {a_id, b_id}]
    assert len(shared) >= 7 and set(shared[0].adapters) == {"r8-mlp", "r2-qv"}
    assert b.token_ids == peft_generate(oracle_base, adapter_dirs["r2-qv"], PROMPTS[1], 8).token_ids
    assert a_out.token_ids == peft_generate(oracle_base, adapter_dirs["r8-mlp"], PROMPTS[0], 150).token_ids


async def test_async_concurrent_requests_and_loader(
    oracle_base: LoadedModel, adapter_dirs: dict[str, Path]
) -> None:
    """Adapters come through the loader (once each, concurrent requests share the load), the host tier
    evicts least recently used under its budget, and concurrent results equal PEFT's."""
    loads: list[str] = []

    async def loader(key: str):
        loads.append(key)
        await asyncio.sleep(0.01)
        return load_weights(adapter_dirs[key])

    one = load_weights(adapter_dirs["r16-all"])
    budget = one.nbytes + 20_000  # room for r16-all and r2-qv, not all four
    engine = Engine(
        tiny_llama(0), EngineConfig(max_slots=4, max_rank=16, host_budget_bytes=budget), loader=loader
    )
    await engine.start()
    try:
        keys = ["r2-qv", "r2-qv", "r4-attn", "r8-mlp", "r2-qv"]
        outs = await asyncio.gather(
            *(engine.generate(GenerationRequest(PROMPTS[0], k, max_tokens=10)) for k in keys)
        )
        assert sorted(loads) == ["r2-qv", "r4-attn", "r8-mlp"]
        engine.prefetch("r16-all")
        await _until(lambda: "r16-all" in engine.host)
        stats = engine.stats()
        assert stats.host_bytes <= budget and stats.host_evictions >= 1
    finally:
        await engine.stop()
    for k, out in zip(keys, outs, strict=True):
        assert out.token_ids == peft_generate(oracle_base, adapter_dirs[k], PROMPTS[0], 10).token_ids


def test_sampling_and_stop_strings(adapter_dirs: dict[str, Path]) -> None:
    engine = make_engine(adapter_dirs)
    sampled = GenerationRequest(PROMPTS[0], "r4-attn", max_tokens=20, temperature=0.9, top_p=0.9, seed=11)
    first = engine.generate_batch_sync([sampled])[0]
    # Same seed, now batched with other rows: identical draws. Another seed: different draws.
    again = engine.generate_batch_sync([GenerationRequest(PROMPTS[1], "r2-qv"), sampled])[1]
    other = engine.generate_batch_sync(
        [GenerationRequest(PROMPTS[0], "r4-attn", max_tokens=20, temperature=0.9, top_p=0.9, seed=12)]
    )[0]
    assert first.token_ids == again.token_ids and first.token_ids != other.token_ids
    greedy = engine.generate_batch_sync([GenerationRequest(PROMPTS[0], "r8-mlp", max_tokens=30)])[0]
    assert greedy.finish_reason == "length" and len(greedy.text) > 8
    stop = greedy.text[5:8]
    cut = engine.generate_batch_sync([GenerationRequest(PROMPTS[0], "r8-mlp", max_tokens=30, stop=(stop,))])[
        0
    ]
    assert cut.finish_reason == "stop" and cut.text == greedy.text[: greedy.text.find(stop)]
    assert greedy.token_ids[: len(cut.token_ids)] == cut.token_ids


def test_bad_input_is_rejected_with_a_clear_error(adapter_dirs: dict[str, Path]) -> None:
    engine = make_engine({}, max_rank=8)
    with pytest.raises(ValueError, match="max_rank"):
        engine.add_adapter("big", load_weights(adapter_dirs["r16-all"]))
    engine = make_engine({}, target_modules=("q_proj", "v_proj"))
    with pytest.raises(ValueError, match="does not wrap"):
        engine.add_adapter("mlp", load_weights(adapter_dirs["r8-mlp"]))
    with pytest.raises(KeyError, match="no loader"):
        engine.generate_batch_sync([GenerationRequest("x", "missing")])
    with pytest.raises(ValueError, match="exceeds"):
        engine.generate_batch_sync([GenerationRequest("x", None, max_tokens=600)])
    with pytest.raises(ValueError, match="max_slots"):
        EngineConfig(max_slots=0)
    with pytest.raises(EngineBusy):
        make_engine({}, max_queue=2).generate_batch_sync([GenerationRequest("x", None)] * 3)


def test_pool_is_preallocated_and_swaps_copy(adapter_dirs: dict[str, Path]) -> None:
    engine = make_engine(adapter_dirs, max_slots=2)
    buffers = {p: (m.lora_a.data_ptr(), m.lora_b.data_ptr()) for p, m in engine.layers.items()}
    pool_bytes = engine.stats().pool_bytes
    engine.generate_batch_sync(
        [GenerationRequest("x", k, max_tokens=2) for k in [*adapter_dirs, *adapter_dirs]]
    )
    assert engine.stats().swaps_in >= 4
    assert buffers == {p: (m.lora_a.data_ptr(), m.lora_b.data_ptr()) for p, m in engine.layers.items()}
    assert pool_bytes == engine.stats().pool_bytes == sum(m.pool_bytes for m in engine.layers.values())


async def _until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


def test_scheduler_round_robin_and_bounded_bypass() -> None:
    """A burst of 5 requests on hot adapter "h" does not delay cold "c": admission alternates adapters.
    When the head's adapter cannot get a slot, only requests whose adapter is already resident pass it,
    and at most `bypass_limit` of them."""
    from inference.engine.sampling import RowSampler
    from inference.engine.scheduler import Job, Scheduler

    def job(i: int, key: str | None) -> Job:
        return Job(i, GenerationRequest("x", key), key, None, [1], RowSampler(0.0, 1.0, None), lambda _: None)

    sched = Scheduler(max_queue=10, bypass_limit=2)
    for i in range(5):
        sched.submit(job(i, "h"))
    sched.submit(job(5, "c"))
    assert [j.id for j in sched.admit(3, lambda j: True, lambda k: True)] == [0, 5, 1]
    with pytest.raises(EngineBusy):
        for i in range(6, 20):
            sched.submit(job(i, "n"))
    # queue now: h h h n n ... ; "h" cannot get a slot, "n" is resident: 2 bypass, then admission stops
    sched = Scheduler(max_queue=10, bypass_limit=2)
    for i, key in enumerate(["cold", "hot", "hot", "hot", None]):
        sched.submit(job(i, key))
    taken = sched.admit(8, lambda j: j.key != "cold", lambda k: k != "cold")
    assert [j.id for j in taken] == [1, 2]
    assert sched.admit(8, lambda j: j.key != "cold", lambda k: k != "cold") == []  # budget spent: head waits
    assert [j.id for j in sched.admit(8, lambda j: True, lambda k: True)] == [0, 4, 3]


def test_re_adding_a_key_replaces_it_in_slot_and_merges(
    oracle_base: LoadedModel, adapter_dirs: dict[str, Path]
) -> None:
    engine = make_engine({})
    engine.add_adapter("x", load_weights(adapter_dirs["r2-qv"]))
    engine.add_adapter("y", load_weights(adapter_dirs["r8-mlp"]))
    req = GenerationRequest(PROMPTS[0], "x", max_tokens=12)
    merge = GenerationRequest(PROMPTS[0], None, max_tokens=12, adapters=(("x", 1.0), ("y", 1.0)))
    before, merged_before = engine.generate_batch_sync([req, merge])
    engine.add_adapter(
        "x", load_weights(adapter_dirs["r4-attn"])
    )  # same key, new weights, old copy in a slot
    after, merged_after = engine.generate_batch_sync([req, merge])
    assert after.token_ids == peft_generate(oracle_base, adapter_dirs["r4-attn"], PROMPTS[0], 12).token_ids
    assert after.token_ids != before.token_ids and merged_after.token_ids != merged_before.token_ids
