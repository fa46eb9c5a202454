"""Honest and dishonest results for the verifier tests and the verify bench: real engines, real adapters.

A dishonest node here runs *something else* (another adapter, no adapter, another base model, a cut rank,
a changed scale, a cut or padded prompt, sampling) and builds its proof honestly from what it ran, then
claims the job's configuration; or it edits tokens after the fact (keeping its proof, or re-proving the
edited tokens with a prefill of its own).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from inference.adapter import AdapterWeights, LoraPair
from inference.engine import Engine, EngineConfig, GenerationRequest, GenerationResult, HiddenStates
from inference.models import LoadedModel
from inference.prompt import encode_prompt
from inference.verify import build_proof, load_peft_weights, prove, recompute
from tests.factories import make_peft_adapter

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPECS = {  # name: (rank, alpha, targets)
    "r4-attn": (4, 8, ("q_proj", "k_proj", "v_proj", "o_proj")),
    "r8-mlp": (8, 16, ("gate_proj", "up_proj", "down_proj")),
    "r16-all": (16, 16, ALL),
}
WORDS = tuple(
    [
        "the",
        "a",
        "LoRA",
        "model",
        "node",
        "chain",
        "proof",
        "token",
        "adapter",
        "verify",
        "quick",
        "brown",
        "fox",
        "jumps",
        "lazy",
        "dog",
    ]
)
KINDS = (
    "another-adapter",
    "no-adapter",
    "another-base",
    "cut-rank",
    "scale",
    "edited-kept-proof",
    "edited-reproved",
    "cut-prompt",
    "padded-prompt",
    "sampled",
)


@dataclass(frozen=True)
class Claim:
    """What a verifier gets: the job (base, adapter, prompt) and the node's answer (tokens, proof)."""

    kind: str  # "honest" or one of KINDS
    adapter: str | None  # the job's adapter
    prompt_ids: list[int]
    output_ids: list[int]
    proof: bytes
    greedy: bool = True


def make_adapters(base: LoadedModel, root: Path, scale: float = 0.5) -> dict[str, AdapterWeights]:
    return {
        name: load_peft_weights(
            make_peft_adapter(base, root / name, rank=r, alpha=a, targets=t, seed=i + 1, scale=scale)
        )
        for i, (name, (r, a, t)) in enumerate(SPECS.items())
    }


def cut_rank(w: AdapterWeights) -> AdapterWeights:
    """The adapter's first half of rank components at the same scale: a cheaper approximation of it."""
    r = max(1, w.rank // 2)
    layers = {p: LoraPair(pair.a[:r].clone(), pair.b[:, :r].clone()) for p, pair in w.layers.items()}
    return AdapterWeights(r, w.alpha * r / w.rank, w.use_rslora, w.target_modules, layers)


def rescaled(w: AdapterWeights, factor: float) -> AdapterWeights:
    return replace(w, alpha=w.alpha * factor)


def engine_with(base: LoadedModel, adapters: dict[str, AdapterWeights], **config: object) -> Engine:
    engine = Engine(base, EngineConfig(**{"max_slots": 8, "max_rank": 16, "max_batch": 8, **config}))  # type: ignore[arg-type]
    for key, w in adapters.items():
        engine.add_adapter(key, w)
    return engine


def random_prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))


def honest_claims(
    engine: Engine, adapter_names: list[str], rng: random.Random, count: int, max_tokens: int = 40
) -> list[Claim]:
    """`count` results from mixed batches of 1..max_batch requests (random adapters, prompts, lengths,
    some with stop strings): each request meets different batch mates."""
    claims: list[Claim] = []
    while len(claims) < count:
        size = min(count - len(claims), rng.randint(1, engine.config.max_batch))
        reqs = [
            GenerationRequest(
                random_prompt(rng),
                rng.choice([None, *adapter_names]),
                max_tokens=rng.randint(1, max_tokens),
                stop=("o",) if rng.random() < 0.15 else (),
                record_hidden=True,
            )
            for _ in range(size)
        ]
        for req, res in zip(reqs, engine.generate_batch_sync(reqs), strict=True):
            ids = encode_prompt(engine.tokenizer, req.prompt)
            claims.append(Claim("honest", req.adapter, ids, res.token_ids, prove(res).to_bytes()))
    return claims


def _run(engine: Engine, prompt: str, adapter: str | None, max_tokens: int, **kw: object) -> GenerationResult:
    req = GenerationRequest(prompt, adapter, max_tokens=max_tokens, record_hidden=True, **kw)  # type: ignore[arg-type]
    return engine.generate_batch_sync([req])[0]


def reproved(
    base: LoadedModel, weights: AdapterWeights | None, prompt_ids: list[int], output: list[int]
) -> bytes:
    """A cheater's proof for tokens it chose: one honest prefill over them (no EOS step)."""
    p = len(prompt_ids)
    states = recompute(base, weights, prompt_ids + output[:-1])
    return build_proof(HiddenStates(prompt_ids, states.hidden[:p], states.hidden[p:])).to_bytes()


def dishonest_claim(
    kind: str,
    cheat: Engine,
    other_base: Engine,
    verifier_base: LoadedModel,
    adapters: dict[str, AdapterWeights],
    rng: random.Random,
    max_tokens: int = 24,
) -> Claim:
    """One dishonest result of `kind`. `cheat` holds the real adapters plus "<name>/cut" and
    "<name>/x<factor>" variants; `other_base` the real adapters on another base model."""
    names = list(adapters)
    job_adapter = rng.choice(names)
    prompt = random_prompt(rng)
    ids = encode_prompt(cheat.tokenizer, prompt)
    if kind == "another-adapter":
        ran = rng.choice([n for n in names if n != job_adapter])
        res = _run(cheat, prompt, ran, max_tokens)
    elif kind == "no-adapter":
        res = _run(cheat, prompt, None, max_tokens)
    elif kind == "another-base":
        res = _run(other_base, prompt, job_adapter, max_tokens)
    elif kind == "cut-rank":
        res = _run(cheat, prompt, f"{job_adapter}/cut", max_tokens)
    elif kind == "scale":
        res = _run(cheat, prompt, f"{job_adapter}/x{rng.choice(SCALES)}", max_tokens)
    elif kind in ("cut-prompt", "padded-prompt"):
        words = prompt.split()
        if kind == "cut-prompt":
            words = words[rng.randint(1, len(words) - 1) :] if len(words) > 1 else [words[0][1:] or "x"]
        else:
            words = [*words, *(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))]
        res = _run(cheat, " ".join(words), job_adapter, max_tokens)
        proof = prove(res)
        if rng.random() < 0.5:  # also lie about the prompt's length in the header
            proof = replace(proof, prompt_len=len(ids))
        return Claim(kind, job_adapter, ids, res.token_ids, proof.to_bytes())
    elif kind == "sampled":
        greedy = _run(cheat, prompt, job_adapter, max_tokens).token_ids
        for _ in range(100):
            res = _run(cheat, prompt, job_adapter, max_tokens, temperature=1.0, seed=rng.randrange(1 << 30))
            if res.token_ids != greedy:
                break
        else:
            raise AssertionError(f"100 samplings never left the greedy output for {prompt!r}")
    elif kind in ("edited-kept-proof", "edited-reproved"):
        res = _run(cheat, prompt, job_adapter, max(2, max_tokens), stop=())
        while len(res.token_ids) < 2:  # an immediate EOS leaves nothing to edit: another prompt
            prompt = random_prompt(rng)
            ids = encode_prompt(cheat.tokenizer, prompt)
            res = _run(cheat, prompt, job_adapter, max(2, max_tokens), stop=())
        out = list(res.token_ids)
        j = rng.randrange(len(out))
        out[j] = rng.choice([t for t in range(256) if t != out[j]])
        if kind == "edited-kept-proof":
            return Claim(kind, job_adapter, ids, out, prove(res).to_bytes())
        return Claim(kind, job_adapter, ids, out, reproved(verifier_base, adapters[job_adapter], ids, out))
    else:
        raise ValueError(f"unknown dishonest kind {kind!r}")
    return Claim(kind, job_adapter, ids, res.token_ids, prove(res).to_bytes())


SCALES = (0.5, 2.0)


def cheat_adapters(adapters: dict[str, AdapterWeights]) -> dict[str, AdapterWeights]:
    out = dict(adapters)
    for name, w in adapters.items():
        out[f"{name}/cut"] = cut_rank(w)
        for f in SCALES:
            out[f"{name}/x{f}"] = rescaled(w, f)
    return out
