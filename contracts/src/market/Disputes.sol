// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {JobSlot, JobStatus} from "../lib/JobTypes.sol";
import {MarketBase} from "./MarketBase.sol";

/// @title Disputes
/// @notice The part of the dispute flow that lives in the JobMarket itself: the arbiter's ruling and the dispute
///         record. `dispute` and `settleDispute` run in MarketOps (delegatecalled, see JobMarket).
///         Results are final after the challenge window. Within it a registered validator may dispute a result
///         with a bond and an evidence CID; the arbiter rules; anyone then settles. Fraud: the claimant's claim
///         stake is slashed, the submitter refunded in full, the challenger gets its bond back plus a share of the
///         slash. No fraud (or no ruling within disputeTimeout): the bond goes to the node and the job is final.
abstract contract Disputes is MarketBase {
    using JobSlot for uint256;

    /// @notice The arbiter's ruling on a disputed job (only the arbiter the dispute was opened with, once, while the
    ///         dispute is still open).
    function rule(uint256 jobId, bool fraud) external {
        Dispute storage d = _disputes[jobId];
        if (d.arbiter == address(0) || msg.sender != d.arbiter) revert NotArbiter(msg.sender);
        if (d.verdict != 0) revert AlreadyRuled(jobId);
        // A dispute closed by timeout (settled as no fraud) takes no late ruling: it would change nothing and
        // emit a DisputeRuled that contradicts the settlement.
        JobStatus s = _jobs[jobId].status();
        if (s != JobStatus.Disputed) revert WrongStatus(jobId, s);
        d.verdict = fraud ? 1 : 2;
        emit DisputeRuled(jobId, fraud);
    }

    /// @notice A dispute's record: challenger, bond, arbiter, when it was opened and the verdict
    ///         (0 pending, 1 fraud, 2 no fraud).
    function getDispute(uint256 jobId) external view returns (Dispute memory) {
        return _disputes[jobId];
    }
}
