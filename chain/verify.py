"""Checking a posted result from public data only (the chain, IPFS): what `openlora job verify`,
`OpenLoRA.verify_result` and the validator daemon do.

1. the job's terms, input and the result's output and proofHash from the chain (outputs live in calldata);
2. the evidence (token ids + TOPLOC proof) by CID, derived from the proofHash, from any gateway / the node;
3. the adapter, fetched and verified as a node does (every block against its CID, the file against the
   registry's sha256) and validated before any tensor is used;
4. one prefill over prompt + output under the adapter, compared with the proof (inference/verify/)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chain.client import ProtocolClient
from chain.client_types import JobResult
from chain.signing import ZERO32
from inference.ipfs.fetcher import FetchError
from inference.ipfs.sources import BlockSource
from inference.models import LoadedModel
from inference.store import AdapterStore
from inference.validate import AdapterRejected
from inference.validate.adapter_files import validate_adapter_dir
from inference.validate.base_spec import BaseModelSpec
from inference.verify.evidence import JobCheck, check_job_result, evidence_cid, evidence_hash


@dataclass(frozen=True)
class ResultVerdict:
    job_id: int
    check: JobCheck
    result: JobResult
    evidence_cid: str | None

    @property
    def passed(self) -> bool:
        return self.check.passed


async def fetch_evidence(proof_hash: bytes, sources: Sequence[BlockSource]) -> bytes | None:
    """The evidence block whose sha256 is proof_hash, from the first source that has it (checked)."""
    cid = evidence_cid(proof_hash)
    for source in sources:
        try:
            data = await source.get_block(cid)
        except Exception:
            continue
        if evidence_hash(data) == proof_hash:
            return data
    return None


async def verify_job(
    client: ProtocolClient,
    job_id: int,
    *,
    base: LoadedModel,
    sources: Sequence[BlockSource],
    cache_dir: Path,
) -> ResultVerdict:
    """Verify job `job_id`'s posted result. `base` is the job's base model, loaded apart from any engine."""
    result = await asyncio.to_thread(client.result, job_id)
    if result is None:
        raise ValueError(f"job {job_id} has no result on chain yet")
    terms = await asyncio.to_thread(client.terms, job_id)
    data, input_cid = await asyncio.to_thread(client.job_input, job_id)
    if input_cid:
        raise ValueError(f"job {job_id}'s input is by CID ({input_cid}): not supported by this verifier yet")
    if result.proof_hash == ZERO32:
        check = JobCheck(False, "the result carries no proof (proofHash is zero)", None, 0.0)
        return ResultVerdict(job_id, check, result, None)
    evidence = await fetch_evidence(result.proof_hash, sources)
    adapter = await asyncio.to_thread(client.adapter, terms.adapter_id)
    store = AdapterStore(cache_dir, budget_bytes=4 << 30, sources=list(sources), max_adapter_bytes=1 << 30)
    try:
        folder = await store.get(adapter.cid, terms.adapter_hash)
        weights = await asyncio.to_thread(
            validate_adapter_dir, folder, BaseModelSpec.from_model(base.model, name=base.name)
        )
    except (FetchError, AdapterRejected) as e:
        raise ValueError(
            f"job {job_id}: its adapter {adapter.cid} cannot be fetched or validated: {e}"
        ) from e
    finally:
        await store.close()
    check = await asyncio.to_thread(check_job_result, base, weights, data, result.output, evidence)
    return ResultVerdict(job_id, check, result, evidence_cid(result.proof_hash))
