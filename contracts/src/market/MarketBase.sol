// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

import {AdapterRegistry} from "../AdapterRegistry.sol";
import {NodeRegistry} from "../NodeRegistry.sol";
import {IArbiter} from "../IArbiter.sol";
import {HeldBalance} from "../lib/HeldBalance.sol";
import {JobSlot, JobStatus, Terms, TermsHash} from "../lib/JobTypes.sol";

/// @title MarketBase
/// @notice Storage, parameters, events, errors and money movements shared by the JobMarket's parts.
/// @dev Money the market holds is always one of: escrow of an Open or Claimed job (its price), earnings held for
///      the challenge window (HeldBalance words of node operators and adapters), amounts taken back from held
///      earnings by an open dispute, dispute bonds, and pull balances (`_balances`, `_adapterBalance`,
///      `_treasuryAccrued`). Stakes live in the NodeRegistry. Every transfer out goes through a withdrawal.
abstract contract MarketBase is Ownable2Step, ReentrancyGuardTransient, EIP712 {
    using JobSlot for uint256;

    /// @notice Deployment parameters (see docs/protocol.md for devnet and L2 values).
    struct Config {
        address owner;
        address adapterRegistry;
        address treasury;
        uint16 protocolFeeBps;
        uint96 minClaimStake;
        uint16 claimStakeBps;
        uint16 compensationBps;
        uint96 releasePenalty;
        uint32 defaultServiceWindow;
        uint32 minServiceWindow;
        uint32 challengeWindow;
        uint96 disputeBond;
        uint16 challengerRewardBps;
        uint32 disputeTimeout;
        uint96 minStake;
        uint64 unstakeDelay;
    }

    struct Dispute {
        address challenger;
        uint96 bond;
        address arbiter;
        uint40 openedAt;
        uint8 verdict; // 0 pending, 1 fraud, 2 no fraud
    }

    uint16 public constant BPS = 10_000;
    /// @notice Highest protocol fee the owner can set: 10 %.
    uint16 public constant MAX_PROTOCOL_FEE_BPS = 1_000;
    /// @notice Highest compensation a submitter may get for a slashed claim: 10 % of the price.
    uint16 public constant MAX_COMPENSATION_BPS = 1_000;
    /// @notice Longest time from submission to deadline.
    uint64 public constant MAX_JOB_DURATION = 30 days;
    /// @notice Longest challenge window (with MAX_JOB_DURATION it must fit the job slot's 23-bit offset).
    uint32 public constant MAX_CHALLENGE_WINDOW = 7 days;
    /// @notice Largest inline input or output; larger payloads go by CID.
    uint256 public constant MAX_INLINE_BYTES = 16 * 1024;
    uint256 public constant MAX_CID_LENGTH = 128;
    /// @notice Most adapters one job may merge.
    uint256 public constant MAX_ADAPTERS = 4;
    /// @notice Most jobs in one claimJobs or submitResults call.
    uint256 public constant MAX_BATCH = 256;

    AdapterRegistry public immutable adapterRegistry;
    uint96 public immutable minClaimStake;
    uint16 public immutable claimStakeBps;
    uint16 public immutable compensationBps;
    uint96 public immutable releasePenalty;
    uint32 public immutable defaultServiceWindow;
    uint32 public immutable minServiceWindow;
    uint32 public immutable challengeWindow;
    uint96 public immutable disputeBond;
    uint16 public immutable challengerRewardBps;
    uint32 public immutable disputeTimeout;

    /// @notice Account credited with protocol fees and the treasury share of slashes.
    address public treasury;
    uint96 internal _treasuryAccrued;
    /// @notice Number of jobs submitted so far (also the highest job id).
    uint64 public jobCount;
    /// @notice Protocol fee in basis points of the price, copied into each job's terms at submission.
    uint16 public protocolFeeBps;
    /// @notice The arbiter new disputes go to.
    IArbiter public arbiter;

    mapping(uint256 jobId => uint256) internal _jobs;
    mapping(address account => uint256) internal _balances;
    mapping(address operator => uint256) internal _heldNode;
    mapping(uint256 adapterId => uint256) internal _heldAdapter;
    mapping(uint256 adapterId => uint256) internal _adapterBalance;
    mapping(uint256 jobId => Dispute) internal _disputes;

    event JobSubmitted(
        uint256 indexed jobId,
        address indexed submitter,
        uint256 indexed adapterId,
        Terms terms,
        bytes input,
        string inputCid
    );
    event JobClaimed(uint256 indexed jobId, address indexed node);
    /// @dev The output itself (inline bytes or CID) is in the transaction's calldata only (ResultItem), not
    ///      repeated here: readers decode the submitResult(s) input of the transaction that emitted this event.
    event ResultSubmitted(
        uint256 indexed jobId, address indexed node, bytes32 outputHash, bytes32 proofHash, uint256 nodeAmount
    );
    event JobReleased(uint256 indexed jobId, address indexed node, uint256 penalty, bool reopened);
    event JobReclaimed(
        uint256 indexed jobId, address indexed node, uint256 slashed, uint256 compensation, bool reopened
    );
    event JobExpired(uint256 indexed jobId, uint256 refund, uint256 slashed);
    event JobCancelled(uint256 indexed jobId);
    event DisputeOpened(uint256 indexed jobId, address indexed challenger, address arbiter, string evidenceCid);
    event DisputeRuled(uint256 indexed jobId, bool fraud);
    event DisputeSettled(uint256 indexed jobId, bool fraud, uint256 refund, uint256 slashed, uint256 reward);
    event Withdrawn(address indexed account, uint256 amount);
    event AdapterFeesPaid(uint256 indexed adapterId, uint256 amount);
    event ProtocolFeeUpdated(uint16 protocolFeeBps);
    event TreasuryUpdated(address indexed treasury);
    event ArbiterUpdated(address indexed arbiter);

    error ZeroAddress();
    error InvalidConfig(string what);
    error ProtocolFeeTooHigh(uint16 bps, uint16 maximum);
    error UnknownAdapter(uint256 adapterId);
    error AdapterRetired(uint256 adapterId);
    /// @notice The registry's fee for the adapter is above the most the submitter accepted (a front-run setFee).
    error AdapterFeeAboveMax(uint256 adapterId, uint256 fee, uint256 maxFee);
    error BaseModelMismatch(uint256 adapterId);
    error BadAdapterList();
    error DeadlineInPast(uint64 deadline, uint256 nowTs);
    error DeadlineTooFar(uint64 deadline, uint256 latest);
    error ServiceWindowTooShort(uint32 window, uint32 minimum);
    error ZeroMaxTokens();
    error EmptyInput();
    error PayloadTooLarge(uint256 length, uint256 maximum);
    error InvalidCid();
    error ZeroHash();
    error PriceTooLow(uint256 price, uint256 fees, uint256 protocolAmount);
    error PriceTooHigh(uint256 price);
    error UnknownJob(uint256 jobId);
    /// @notice The terms given do not hash to what the market stored for this job id.
    error TermsMismatch(uint256 jobId);
    error WrongStatus(uint256 jobId, JobStatus status);
    error NotSubmitter(uint256 jobId, address caller);
    error NotClaimant(uint256 jobId, address caller);
    error DeadlinePassed(uint256 jobId, uint64 deadline);
    error DeadlineNotReached(uint256 jobId, uint64 deadline);
    error ServiceWindowOpen(uint256 jobId, uint256 reclaimableAt);
    /// @notice The claim's service window has passed: it can no longer be released, only reclaimed.
    error ServiceWindowPassed(uint256 jobId, uint256 reclaimableAt);
    error ChallengeWindowClosed(uint256 jobId, uint256 closedAt);
    error NodeNotEligible(address operator);
    error EmptyBatch();
    error BatchTooLarge(uint256 length, uint256 maximum);
    error NothingClaimed();
    error NothingSettled();
    error MalformedSignature();
    error WrongSigner(address recovered, address expected);
    error NotValidator(address caller);
    error WrongBond(uint256 sent, uint256 required);
    error NoArbiter();
    error NotArbiter(address caller);
    error AlreadyRuled(uint256 jobId);
    error NotRuled(uint256 jobId, uint256 timeoutAt);
    error NothingToWithdraw();
    error TransferFailed(address to, uint256 amount);
    error UnexpectedPayment(address from);
    /// @notice HeldBalance's underflow (thrown by a dispute in MarketOps), declared here so that it stays in the
    ///         JobMarket's ABI.
    error HeldUnderflow(uint256 amount, uint256 held);

    constructor(Config memory c) Ownable(c.owner) EIP712("OpenLoRA", "2") {
        adapterRegistry = AdapterRegistry(c.adapterRegistry);
        treasury = c.treasury;
        protocolFeeBps = c.protocolFeeBps;
        minClaimStake = c.minClaimStake;
        claimStakeBps = c.claimStakeBps;
        compensationBps = c.compensationBps;
        releasePenalty = c.releasePenalty;
        defaultServiceWindow = c.defaultServiceWindow;
        minServiceWindow = c.minServiceWindow;
        challengeWindow = c.challengeWindow;
        disputeBond = c.disputeBond;
        challengerRewardBps = c.challengerRewardBps;
        disputeTimeout = c.disputeTimeout;
    }

    /// @dev Checks deployment parameters; run once, by the JobMarket's constructor (MarketOps is built from the
    ///      same, already checked, parameters).
    function _validate(Config memory c) internal pure {
        if (c.owner == address(0) || c.adapterRegistry == address(0) || c.treasury == address(0)) revert ZeroAddress();
        if (c.protocolFeeBps > MAX_PROTOCOL_FEE_BPS) revert ProtocolFeeTooHigh(c.protocolFeeBps, MAX_PROTOCOL_FEE_BPS);
        if (c.minClaimStake == 0) revert InvalidConfig("minClaimStake must be > 0");
        if (c.claimStakeBps < MAX_PROTOCOL_FEE_BPS) revert InvalidConfig("claimStakeBps must cover the protocol fee");
        if (c.compensationBps > MAX_COMPENSATION_BPS) revert InvalidConfig("compensationBps above 10%");
        if (c.releasePenalty > c.minClaimStake) revert InvalidConfig("releasePenalty above minClaimStake");
        if (c.minServiceWindow == 0 || c.defaultServiceWindow < c.minServiceWindow) {
            revert InvalidConfig("service windows");
        }
        if (c.challengeWindow == 0 || c.challengeWindow > MAX_CHALLENGE_WINDOW) {
            revert InvalidConfig("challengeWindow");
        }
        if (c.challengerRewardBps > BPS) revert InvalidConfig("challengerRewardBps");
        if (c.disputeTimeout == 0) revert InvalidConfig("disputeTimeout");
        // A node could otherwise unstake and leave before a dispute over its last results is settled.
        if (c.unstakeDelay <= uint64(c.challengeWindow) + c.disputeTimeout) {
            revert InvalidConfig("unstakeDelay must exceed challengeWindow + disputeTimeout");
        }
    }

    /// @notice Accepts slashed stake from the node registry only.
    receive() external payable {
        if (msg.sender != address(_registry())) revert UnexpectedPayment(msg.sender);
    }

    /// @notice Stake a claim on a job of this price locks (and a missed service window forfeits): the larger of
    ///         minClaimStake and claimStakeBps of the price. Never zero.
    function claimStakeFor(uint256 price) public view returns (uint256) {
        uint256 scaled = price * claimStakeBps / BPS;
        return scaled > minClaimStake ? scaled : minClaimStake;
    }

    // ------------------------------------------------------------------ internals

    /// @dev The market's NodeRegistry: the market's first CREATE (JobMarket keeps it as an immutable; MarketOps,
    ///      running on the market by delegatecall, derives it from the market's address).
    function _registry() internal view virtual returns (NodeRegistry);

    /// @dev The job's slot, checked against the terms given.
    function _slotFor(Terms calldata t) internal view returns (uint256 slot, bytes32 termsHash) {
        termsHash = TermsHash.hash(t);
        slot = _jobs[t.jobId];
        if (slot == 0) revert UnknownJob(t.jobId);
        if (!slot.matches(termsHash)) revert TermsMismatch(t.jobId);
    }

    function _requireStatus(Terms calldata t, uint256 slot, JobStatus want) internal pure {
        JobStatus s = slot.status();
        if (s != want) revert WrongStatus(t.jobId, s);
    }

    /// @dev Splits a job's price: protocol fee, adapter fees, and what is left for the node.
    function _split(Terms calldata t) internal pure returns (uint256 nodeAmount, uint256 fees, uint256 protocolAmount) {
        protocolAmount = uint256(t.price) * t.protocolFeeBps / BPS;
        uint256 n = t.adapters.length;
        for (uint256 i; i < n; ++i) {
            fees += t.adapters[i].fee;
        }
        nodeAmount = uint256(t.price) - fees - protocolAmount;
    }

    function _epoch(uint256 timestamp) internal view returns (uint256) {
        return timestamp / challengeWindow;
    }

    function _holdForNode(address operator, uint256 amount) internal {
        (uint256 word, uint256 matured) = HeldBalance.credit(_heldNode[operator], _epoch(block.timestamp), amount);
        _heldNode[operator] = word;
        if (matured != 0) _balances[operator] += matured;
    }

    function _holdForAdapter(uint256 adapterId, uint256 amount) internal {
        (uint256 word, uint256 matured) = HeldBalance.credit(_heldAdapter[adapterId], _epoch(block.timestamp), amount);
        _heldAdapter[adapterId] = word;
        if (matured != 0) _adapterBalance[adapterId] += matured;
    }

    function _creditTreasury(uint256 amount) internal {
        uint256 accrued = uint256(_treasuryAccrued) + amount;
        if (accrued > type(uint96).max) {
            _balances[treasury] += amount;
        } else {
            // forge-lint: disable-next-line(unsafe-typecast)
            _treasuryAccrued = uint96(accrued);
        }
    }

    /// @dev Slashes the claim stake of a job that was not served in time: the submitter gets at most
    ///      compensationBps of the price, once per job; the rest goes to the treasury. Returns the new flags.
    function _slashClaim(Terms calldata t, uint256 slot, address operator)
        internal
        returns (uint256 slashed, uint256 compensation, uint256 flags)
    {
        flags = slot;
        slashed = _registry().slashLocked(operator, claimStakeFor(t.price));
        if (!slot.compensated()) {
            compensation = uint256(t.price) * compensationBps / BPS;
            if (compensation > slashed) compensation = slashed;
            flags = JobSlot.COMPENSATED;
            _balances[t.submitter] += compensation;
        }
        if (slashed > compensation) _creditTreasury(slashed - compensation);
    }

    /// @dev Reopens a job after its claimant left it, or refunds it when its deadline has passed.
    function _reopenOrRefund(Terms calldata t, bytes32 termsHash, uint256 flags) internal returns (bool reopened) {
        reopened = block.timestamp < t.deadline;
        if (reopened) {
            _jobs[t.jobId] = JobSlot.pack(termsHash, JobStatus.Open, 0, flags, 0);
        } else {
            _jobs[t.jobId] = JobSlot.pack(termsHash, JobStatus.Expired, 0, flags, 0);
            _balances[t.submitter] += t.price;
            emit JobExpired(t.jobId, t.price, 0);
        }
    }

    function _checkCid(string calldata cid) internal pure {
        if (bytes(cid).length == 0 || bytes(cid).length > MAX_CID_LENGTH) revert InvalidCid();
    }
}
