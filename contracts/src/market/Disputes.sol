// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {HeldBalance} from "../lib/HeldBalance.sol";
import {JobSlot, JobStatus, Terms} from "../lib/JobTypes.sol";
import {MarketBase} from "./MarketBase.sol";

/// @title Disputes
/// @notice Results are final after the challenge window. Within it a registered validator may dispute a result
///         with a bond and an evidence CID; the arbiter rules; anyone then settles. Fraud: the claimant's claim
///         stake is slashed, the submitter refunded in full, the challenger gets its bond back plus a share of the
///         slash. No fraud (or no ruling within disputeTimeout): the bond goes to the node and the job is final.
abstract contract Disputes is MarketBase {
    using JobSlot for uint256;

    /// @notice Dispute a result inside its challenge window. The caller must be a validator the AdapterRegistry
    ///         allows now and must send exactly disputeBond. The job's held payments are set aside until settled.
    /// @param t The job's terms (from JobSubmitted).
    /// @param evidenceCid CID of the evidence (for TOPLOC: the recomputed proof), passed on to the arbiter.
    function dispute(Terms calldata t, string calldata evidenceCid) external payable nonReentrant {
        if (!adapterRegistry.isValidator(msg.sender)) revert NotValidator(msg.sender);
        if (msg.value != disputeBond) revert WrongBond(msg.value, disputeBond);
        _checkCid(evidenceCid);
        address arb = address(arbiter);
        if (arb == address(0)) revert NoArbiter();
        (uint256 slot, bytes32 termsHash) = _slotFor(t);
        _requireStatus(t, slot, JobStatus.Resulted);
        uint256 resultAt = uint256(t.submittedAt) + slot.offset();
        if (block.timestamp >= resultAt + challengeWindow) {
            revert ChallengeWindowClosed(t.jobId, resultAt + challengeWindow);
        }
        // Take the job's payments back out of the held balances (still held: see HeldBalance).
        uint256 epoch = _epoch(resultAt);
        address operator = nodeRegistry.operatorOf(slot.nodeId());
        (uint256 nodeAmount,,) = _split(t);
        _heldNode[operator] = HeldBalance.debit(_heldNode[operator], epoch, nodeAmount);
        for (uint256 i; i < t.adapters.length; ++i) {
            uint256 fee = t.adapters[i].fee;
            if (fee != 0) _heldAdapter[t.adapters[i].id] = HeldBalance.debit(_heldAdapter[t.adapters[i].id], epoch, fee);
        }
        _jobs[t.jobId] = JobSlot.pack(termsHash, JobStatus.Disputed, slot.nodeId(), slot, slot.offset());
        _disputes[t.jobId] = Dispute({
            challenger: msg.sender,
            // forge-lint: disable-next-line(unsafe-typecast)
            bond: uint96(msg.value),
            arbiter: arb,
            // forge-lint: disable-next-line(unsafe-typecast)
            openedAt: uint40(block.timestamp),
            verdict: 0
        });
        emit DisputeOpened(t.jobId, msg.sender, arb, evidenceCid);
        arbiter.openCase(t.jobId, msg.sender, evidenceCid);
    }

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

    /// @notice Carry out a ruling (anyone), or, when the arbiter has not ruled within disputeTimeout, close the
    ///         dispute as "no fraud".
    function settleDispute(Terms calldata t) external nonReentrant {
        (uint256 slot, bytes32 termsHash) = _slotFor(t);
        _requireStatus(t, slot, JobStatus.Disputed);
        Dispute memory d = _disputes[t.jobId];
        uint256 timeoutAt = uint256(d.openedAt) + disputeTimeout;
        if (d.verdict == 0 && block.timestamp < timeoutAt) revert NotRuled(t.jobId, timeoutAt);
        address operator = nodeRegistry.operatorOf(slot.nodeId());
        (uint256 nodeAmount,, uint256 protocolAmount) = _split(t);
        if (d.verdict == 1) {
            _jobs[t.jobId] = JobSlot.pack(termsHash, JobStatus.Refunded, slot.nodeId(), slot, slot.offset());
            uint256 slashed = nodeRegistry.slashAny(operator, claimStakeFor(t.price));
            // The protocol fee was paid out at the result: the slash covers it so the refund is whole.
            uint256 fromSlash = slashed < protocolAmount ? slashed : protocolAmount;
            uint256 refund = uint256(t.price) - protocolAmount + fromSlash;
            _balances[t.submitter] += refund;
            uint256 rest = slashed - fromSlash;
            uint256 reward = rest * challengerRewardBps / BPS;
            _balances[d.challenger] += uint256(d.bond) + reward;
            if (rest > reward) _creditTreasury(rest - reward);
            emit DisputeSettled(t.jobId, true, refund, slashed, reward);
        } else {
            _jobs[t.jobId] = JobSlot.pack(termsHash, JobStatus.Final, slot.nodeId(), slot, slot.offset());
            _balances[operator] += nodeAmount + d.bond;
            for (uint256 i; i < t.adapters.length; ++i) {
                _adapterBalance[t.adapters[i].id] += t.adapters[i].fee;
            }
            emit DisputeSettled(t.jobId, false, 0, 0, 0);
        }
    }

    /// @notice A dispute's record: challenger, bond, arbiter, when it was opened and the verdict
    ///         (0 pending, 1 fraud, 2 no fraud).
    function getDispute(uint256 jobId) external view returns (Dispute memory) {
        return _disputes[jobId];
    }
}
