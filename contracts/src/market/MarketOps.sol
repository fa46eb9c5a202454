// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {HeldBalance} from "../lib/HeldBalance.sol";
import {JobHead, JobSlot, JobStatus, Terms, TermsHash} from "../lib/JobTypes.sol";
import {NodeRegistry} from "../NodeRegistry.sol";
import {MarketBase} from "./MarketBase.sol";

/// @title MarketOps
/// @notice The JobMarket's less frequent operations (cancel, release, reclaim, expire, adapter fee payout,
///         dispute, dispute settlement), split out so that the market's runtime code stays under the EIP-170
///         limit of 24,576 bytes. The market creates this contract in its constructor and delegatecalls it from
///         functions of the same signatures, so these run on the market's storage, balance and transient
///         reentrancy lock, emit the market's events and revert with the market's errors. The market's ABI is
///         unchanged. Called directly (not through the market) every function reverts.
/// @dev Inherits MarketBase only, declaring no state of its own, so its storage layout is the market's. Its
///      immutables are the market's: deployed first with the same Config (the market's constructor checks
///      configHash); the NodeRegistry, which the market creates, is derived from the market's address.
contract MarketOps is MarketBase {
    using JobSlot for uint256;

    /// @notice This function runs only inside its JobMarket (by delegatecall).
    error OnlyThroughMarket();

    address private immutable _self;
    /// @notice keccak256(abi.encode(config)) of the parameters this was built with; the JobMarket's constructor
    ///         checks it equals its own, so both run with the same immutables.
    bytes32 public immutable configHash;

    /// @param c The market's deployment parameters (deployed before the market, whose constructor checks them).
    constructor(Config memory c) MarketBase(c) {
        _self = address(this);
        configHash = keccak256(abi.encode(c));
    }

    /// @dev The market's NodeRegistry is its first CREATE (nonce 1): its address follows from the market's
    ///      (this code only runs by delegatecall, where address(this) is the market).
    function _registry() internal view override returns (NodeRegistry) {
        return NodeRegistry(
            payable(address(uint160(uint256(keccak256(abi.encodePacked(bytes2(0xd694), address(this), bytes1(0x01)))))))
        );
    }

    modifier delegated() {
        if (address(this) == _self) revert OnlyThroughMarket();
        _;
    }

    /// @notice Cancel an open (unclaimed) job; its price is credited back to the submitter.
    function cancel(Terms calldata t) external delegated nonReentrant {
        (uint256 slot, bytes32 termsHash) = _slotFor(t);
        _requireStatus(t, slot, JobStatus.Open);
        if (t.submitter != msg.sender) revert NotSubmitter(t.jobId, msg.sender);
        _jobs[t.jobId] = JobSlot.pack(termsHash, JobStatus.Cancelled, 0, slot, 0);
        _balances[msg.sender] += t.price;
        emit JobCancelled(t.jobId);
    }

    /// @notice Give back a claimed job the caller cannot serve: releasePenalty of its claim stake goes to the
    ///         treasury, the rest is unlocked, and the job reopens for other nodes (or is refunded past its
    ///         deadline). The submitter gets nothing from a release.
    function releaseJob(Terms calldata t) external delegated nonReentrant {
        (uint256 slot, bytes32 termsHash) = _slotFor(t);
        _requireStatus(t, slot, JobStatus.Claimed);
        if (_registry().operatorOf(slot.nodeId()) != msg.sender) revert NotClaimant(t.jobId, msg.sender);
        // Only inside the service window: past it the claim is reclaimable and must not escape its slash for
        // the small release penalty by front-running reclaim.
        uint256 reclaimableAt = uint256(t.submittedAt) + slot.offset() + t.serviceWindow;
        if (block.timestamp >= reclaimableAt) revert ServiceWindowPassed(t.jobId, reclaimableAt);
        uint256 stake = claimStakeFor(t.price);
        uint256 penalty = _registry().slashLocked(msg.sender, releasePenalty);
        _registry().unlockStake(msg.sender, stake - releasePenalty);
        if (penalty != 0) _creditTreasury(penalty);
        bool reopened = _reopenOrRefund(t, termsHash, slot);
        emit JobReleased(t.jobId, msg.sender, penalty, reopened);
    }

    /// @notice Reclaim a job whose claimant did not post a result within the job's service window: the claim
    ///         stake is slashed (the submitter gets at most compensationBps of the price, once per job; the rest
    ///         goes to the treasury) and the job reopens for other nodes, or is refunded past its deadline.
    function reclaim(Terms calldata t) external delegated nonReentrant {
        (uint256 slot, bytes32 termsHash) = _slotFor(t);
        _requireStatus(t, slot, JobStatus.Claimed);
        uint256 reclaimableAt = uint256(t.submittedAt) + slot.offset() + t.serviceWindow;
        if (block.timestamp < reclaimableAt) revert ServiceWindowOpen(t.jobId, reclaimableAt);
        address operator = _registry().operatorOf(slot.nodeId());
        (uint256 slashed, uint256 compensation, uint256 flags) = _slashClaim(t, slot, operator);
        bool reopened = _reopenOrRefund(t, termsHash, flags);
        emit JobReclaimed(t.jobId, operator, slashed, compensation, reopened);
    }

    /// @notice Close a job whose deadline passed without a result: the price goes back to the submitter; a
    ///         claimant's stake is slashed as in reclaim.
    function expire(Terms calldata t) external delegated nonReentrant {
        (uint256 slot, bytes32 termsHash) = _slotFor(t);
        JobStatus status = slot.status();
        if (status != JobStatus.Open && status != JobStatus.Claimed) revert WrongStatus(t.jobId, status);
        if (block.timestamp < t.deadline) revert DeadlineNotReached(t.jobId, t.deadline);
        uint256 slashed;
        uint256 flags = slot;
        if (status == JobStatus.Claimed) {
            (slashed,, flags) = _slashClaim(t, slot, _registry().operatorOf(slot.nodeId()));
        }
        _jobs[t.jobId] = JobSlot.pack(termsHash, JobStatus.Expired, 0, flags, 0);
        _balances[t.submitter] += t.price;
        emit JobExpired(t.jobId, t.price, slashed);
    }

    /// @notice Credit an adapter's matured fees to its publisher (or split among its payees); anyone may call.
    function withdrawAdapterFees(uint256 adapterId) external delegated nonReentrant {
        (uint256 rest, uint256 matured) = HeldBalance.release(_heldAdapter[adapterId], _epoch(block.timestamp));
        if (matured != 0) _heldAdapter[adapterId] = rest;
        uint256 amount = _adapterBalance[adapterId] + matured;
        if (amount == 0) revert NothingToWithdraw();
        _adapterBalance[adapterId] = 0;
        (, address publisher, address[] memory payees, uint16[] memory shares) =
            adapterRegistry.settlementTerms(adapterId);
        uint256 n = payees.length;
        if (n == 0) {
            _balances[publisher] += amount;
        } else {
            uint256 paid;
            for (uint256 i; i < n - 1; ++i) {
                uint256 part = amount * shares[i] / BPS;
                _balances[payees[i]] += part;
                paid += part;
            }
            _balances[payees[n - 1]] += amount - paid;
        }
        emit AdapterFeesPaid(adapterId, amount);
    }

    /// @notice Dispute a result inside its challenge window. The caller must be a validator the AdapterRegistry
    ///         allows now and must send exactly disputeBond. The job's held payments are set aside until settled.
    /// @param t The job's terms (from JobSubmitted).
    /// @param evidenceCid CID of the evidence (for TOPLOC: the recomputed proof), passed on to the arbiter.
    function dispute(Terms calldata t, string calldata evidenceCid) external payable delegated nonReentrant {
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
        address operator = _registry().operatorOf(slot.nodeId());
        (uint256 nodeAmount,,) = _split(t);
        _heldNode[operator] = HeldBalance.debit(_heldNode[operator], epoch, nodeAmount);
        for (uint256 i; i < t.adapters.length; ++i) {
            uint256 fee = t.adapters[i].fee;
            if (fee != 0) {
                _heldAdapter[t.adapters[i].id] = HeldBalance.debit(_heldAdapter[t.adapters[i].id], epoch, fee);
            }
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

    /// @notice Carry out a ruling (anyone), or, when the arbiter has not ruled within disputeTimeout, close the
    ///         dispute as "no fraud".
    function settleDispute(Terms calldata t) external delegated nonReentrant {
        (uint256 slot, bytes32 termsHash) = _slotFor(t);
        _requireStatus(t, slot, JobStatus.Disputed);
        Dispute memory d = _disputes[t.jobId];
        uint256 timeoutAt = uint256(d.openedAt) + disputeTimeout;
        if (d.verdict == 0 && block.timestamp < timeoutAt) revert NotRuled(t.jobId, timeoutAt);
        address operator = _registry().operatorOf(slot.nodeId());
        (uint256 nodeAmount,, uint256 protocolAmount) = _split(t);
        if (d.verdict == 1) {
            _jobs[t.jobId] = JobSlot.pack(termsHash, JobStatus.Refunded, slot.nodeId(), slot, slot.offset());
            uint256 slashed = _registry().slashAny(operator, claimStakeFor(t.price));
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

    // ------------------------------------------------------------------ pure helpers (JobMarket forwards to these)

    /// @notice The terms hash (see TermsHash); JobMarket.hashTerms forwards here.
    function hashTerms(Terms calldata t) external pure returns (bytes32) {
        return TermsHash.hash(t);
    }

    /// @notice The compact keys claimJob(s) and submitResult(s) take for a job, built from its terms (for tools
    ///         such as `cast` that hold the terms from JobSubmitted).
    function keysOf(Terms calldata t)
        external
        pure
        returns (uint256 head, uint256[] memory adapters, bytes32 bodyHash, bytes32 restHash)
    {
        Terms memory m = t;
        head = JobHead.pack(m);
        adapters = TermsHash.adapterWords(m);
        bodyHash = TermsHash.bodyHash(m);
        restHash = TermsHash.rest(m.baseModel, bodyHash);
    }
}
