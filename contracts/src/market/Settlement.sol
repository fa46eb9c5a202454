// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {JobHead, JobSlot, JobStatus} from "../lib/JobTypes.sol";
import {MarketBase} from "./MarketBase.sol";

/// @title Settlement
/// @notice Claiming a job and accepting its result, shared by the JobMarket's batch calls (jobs named by their
///         compact keys) and MarketOps' single-job calls (jobs named by their full terms). Both hand in the
///         terms hash they computed and the job's head word (see JobHead, TermsHash); nothing here decodes terms.
abstract contract Settlement is MarketBase {
    using JobSlot for uint256;

    /// @notice EIP-712 types: a batch of results, each naming its job, terms, output and proof.
    bytes32 public constant RESULT_TYPEHASH =
        keccak256("Result(uint256 jobId,bytes32 termsHash,bytes32 outputHash,bytes32 proofHash)");
    bytes32 public constant BATCH_TYPEHASH = keccak256(
        "ResultBatch(Result[] results)Result(uint256 jobId,bytes32 termsHash,bytes32 outputHash,bytes32 proofHash)"
    );

    /// @dev Most distinct adapters a batch's payout collects in memory; more are credited as they come.
    uint256 private constant PAYOUT_ADAPTERS = 16;

    /// @dev What one batch of results pays out, accumulated in memory and written once per payee.
    struct Payout {
        uint256 nodeAmount;
        uint256 protocolAmount;
        uint256 stake;
        uint256 nAdapters;
        uint256[PAYOUT_ADAPTERS] adapterIds;
        uint256[PAYOUT_ADAPTERS] adapterAmounts;
    }

    /// @dev Claims the job if it is open, in time and `termsHash` matches what the market stored; returns the
    ///      stake to lock (0 when skipped: a rival got there first, the deadline passed, or the terms are wrong).
    ///      Only the head's jobId is read before the match; after it, every field of the head is the market's own.
    function _claim(bytes32 termsHash, uint256 head, uint32 nodeId) internal returns (uint256 stake) {
        uint256 jobId = JobHead.jobId(head);
        uint256 slot = _jobs[jobId];
        if (!slot.matches(termsHash) || slot.status() != JobStatus.Open) return 0;
        if (block.timestamp >= JobHead.deadline(head)) return 0;
        unchecked {
            // submittedAt <= now: it is the block time of the submission, and time does not go back.
            _jobs[jobId] =
                JobSlot.pack(termsHash, JobStatus.Claimed, nodeId, slot, block.timestamp - JobHead.submittedAt(head));
        }
        stake = claimStakeFor(JobHead.price(head));
        emit JobClaimed(jobId, msg.sender);
    }

    /// @dev Accepts a result if the caller (node `nodeId`) holds its job and the deadline has not passed; adds its
    ///      payments to `p`. Returns whether it was accepted (a rejected item is skipped, not reverted).
    function _settle(
        bytes32 termsHash,
        uint256 head,
        uint256[] memory adapters,
        uint32 nodeId,
        bytes32 outputHash,
        bytes32 proofHash,
        Payout memory p
    ) internal returns (bool) {
        uint256 jobId = JobHead.jobId(head);
        uint256 slot = _jobs[jobId];
        if (!slot.matches(termsHash) || slot.status() != JobStatus.Claimed || slot.nodeId() != nodeId) return false;
        if (block.timestamp >= JobHead.deadline(head)) return false;
        unchecked {
            _jobs[jobId] =
                JobSlot.pack(termsHash, JobStatus.Resulted, nodeId, slot, block.timestamp - JobHead.submittedAt(head));
        }
        uint256 price = JobHead.price(head);
        uint256 protocolAmount = price * JobHead.protocolFeeBps(head) / BPS;
        uint256 fees;
        for (uint256 i; i < adapters.length; ++i) {
            uint256 fee = JobHead.adapterFee(adapters[i]);
            fees += fee;
            if (fee != 0) _addAdapter(p, JobHead.adapterId(adapters[i]), fee);
        }
        // The market accepted these terms with price > fees + protocolAmount.
        uint256 nodeAmount = price - fees - protocolAmount;
        p.nodeAmount += nodeAmount;
        p.protocolAmount += protocolAmount;
        p.stake += claimStakeFor(price);
        emit ResultSubmitted(jobId, msg.sender, outputHash, proofHash, nodeAmount);
        return true;
    }

    /// @dev The EIP-712 struct hash of one Result, hashed in scratch memory (nothing allocated).
    function _leaf(uint256 jobId, bytes32 termsHash, bytes32 outputHash, bytes32 proofHash)
        internal
        pure
        returns (bytes32 leaf)
    {
        bytes32 typeHash = RESULT_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typeHash)
            mstore(add(m, 0x20), jobId)
            mstore(add(m, 0x40), termsHash)
            mstore(add(m, 0x60), outputHash)
            mstore(add(m, 0x80), proofHash)
            leaf := keccak256(m, 0xa0)
        }
    }

    /// @dev keccak256 of an inline output (at most MAX_INLINE_BYTES), hashed in scratch memory.
    function _inlineHash(bytes calldata out) internal pure returns (bytes32 h) {
        uint256 len = out.length;
        if (len > MAX_INLINE_BYTES) revert PayloadTooLarge(len, MAX_INLINE_BYTES);
        assembly ("memory-safe") {
            let m := mload(0x40)
            calldatacopy(m, out.offset, len)
            h := keccak256(m, len)
        }
    }

    function _addAdapter(Payout memory p, uint256 id, uint256 fee) private {
        uint256 n = p.nAdapters;
        for (uint256 k; k < n; ++k) {
            if (p.adapterIds[k] == id) {
                p.adapterAmounts[k] += fee;
                return;
            }
        }
        if (n == PAYOUT_ADAPTERS) {
            _holdForAdapter(id, fee);
            return;
        }
        p.adapterIds[n] = id;
        p.adapterAmounts[n] = fee;
        p.nAdapters = n + 1;
    }

    /// @dev Writes a batch's payments: once for the node, once per adapter, once for the treasury; unlocks stake.
    function _pay(Payout memory p) internal {
        _holdForNode(msg.sender, p.nodeAmount);
        for (uint256 k; k < p.nAdapters; ++k) {
            _holdForAdapter(p.adapterIds[k], p.adapterAmounts[k]);
        }
        if (p.protocolAmount != 0) _creditTreasury(p.protocolAmount);
        _registry().unlockStake(msg.sender, p.stake);
    }

    function _checkSignature(bytes32[] memory leaves, bytes calldata signature, address signer) internal view {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(_batchDigest(leaves), signature);
        if (err != ECDSA.RecoverError.NoError) revert MalformedSignature();
        if (recovered != signer) revert WrongSigner(recovered, signer);
    }

    function _batchDigest(bytes32[] memory leaves) internal view returns (bytes32) {
        bytes32 listHash;
        assembly ("memory-safe") {
            listHash := keccak256(add(leaves, 0x20), mul(mload(leaves), 0x20))
        }
        return _hashTypedDataV4(keccak256(abi.encode(BATCH_TYPEHASH, listHash)));
    }
}
