"""The node's side of verifiable results: a TOPLOC proof built from the hidden states the engine recorded
while generating, bundled with the output's token ids (inference/verify/evidence.py), stored as a raw block
under <data_dir>/evidence and served at the node's `/ipfs/{cid}` (trustless gateway). Its sha256 is the
proofHash the node signs with the result, so anyone holding the chain can find and check it."""

from __future__ import annotations

import logging

from inference.engine import GenerationResult
from inference.ipfs.blockstore import BlockStore
from inference.ipfs.cid import RAW, make_cid

log = logging.getLogger("openlora.node")


class EvidenceKeeper:
    def __init__(self, store: BlockStore, mode: str) -> None:
        self.store = store
        self.enabled = False
        self.published = 0
        if mode == "off":
            return
        try:
            from inference.verify.proof import load_toploc

            load_toploc()
            self.enabled = True
        except Exception as e:  # ToplocMissing or an import error of the extension
            if mode == "on":
                raise RuntimeError(
                    f'[verify].prove = "on" but TOPLOC is not usable here ({e}): run `make setup` '
                    '(it builds toploc against the installed torch) or set prove = "auto"'
                ) from e
            log.warning("results will carry no proof: TOPLOC is not usable here (%s); run `make setup`", e)

    def publish(self, result: GenerationResult) -> bytes | None:
        """Build, store and return the proofHash (sha256 of the evidence) for a generation recorded with
        record_hidden; None when proofs are off."""
        if not self.enabled or result.hidden is None:
            return None
        from inference.verify.evidence import ResultEvidence, evidence_hash
        from inference.verify.proof import prove

        bundle = ResultEvidence(tuple(result.token_ids), prove(result).to_bytes()).to_bytes()
        self.store.put(make_cid(bundle, codec=RAW, version=1), bundle)
        self.published += 1
        return evidence_hash(bundle)
