// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {AdapterRegistry} from "./AdapterRegistry.sol";
import {NodeRegistry} from "./NodeRegistry.sol";

/// @title JobMarket
/// @notice Escrowed inference jobs for LoRA adapters. A submitter pays the price into escrow; one eligible
///         node claims the job (locking part of its stake), serves it and submits the output with an EIP-712
///         signature of its registered signer; the escrow is then split into pull balances: the adapter fee to
///         the adapter's publisher (or its payees), the protocol fee to the treasury, the rest to the node.
///         A job not completed by its deadline can be expired by anyone: the submitter is refunded and the
///         claimant, if any, is slashed.
/// @dev Every native-token movement out of this contract goes through `withdraw` (pull payments). Result
///      signatures are bound to chainId and this contract's address by the EIP-712 domain, and to one job by
///      its id, so they cannot be replayed on another chain, another deployment or another job.
contract JobMarket is Ownable, ReentrancyGuardTransient, EIP712 {
    enum JobStatus {
        None,
        Open,
        Claimed,
        Completed,
        Expired,
        Cancelled
    }

    /// @notice The public view of one job (the ABI struct returned by `getJob`).
    struct Job {
        address submitter;
        address node;
        uint256 adapterId;
        bytes32 adapterHash;
        bytes32 inputHash;
        uint256 price;
        uint256 adapterFee;
        uint16 protocolFeeBps;
        uint32 maxTokens;
        uint64 deadline;
        JobStatus status;
    }

    /// @dev Storage layout: three slots, all written by submitJob, so a claim and a result only overwrite the
    ///      non-zero slot 1. The claimant is kept as its NodeRegistry id (32 bits) rather than its address,
    ///      and the adapter hash is not stored at all: the registry never changes an adapter's content hash,
    ///      so reading it back by id yields exactly the value the submitter saw.
    struct JobRecord {
        address submitter; // slot 0
        uint96 price; // slot 0
        uint96 adapterFee; // slot 1
        uint40 deadline; // slot 1
        uint32 adapterId; // slot 1
        uint32 nodeId; // slot 1
        uint16 protocolFeeBps; // slot 1
        JobStatus status; // slot 1
        uint32 maxTokens; // slot 1
        bytes32 inputHash; // slot 2
    }

    /// @notice EIP-712 type of the statement a node's signer signs for each result.
    bytes32 public constant RESULT_TYPEHASH =
        keccak256("Result(uint256 jobId,bytes32 inputHash,bytes32 adapterHash,bytes32 outputHash)");
    /// @notice Basis points in one whole.
    uint16 public constant BPS = 10_000;
    /// @notice Highest protocol fee the owner can set: 10%.
    uint16 public constant MAX_PROTOCOL_FEE_BPS = 1_000;
    /// @notice Longest time from submission to deadline; bounds how long escrow and claim stake stay locked.
    uint64 public constant MAX_JOB_DURATION = 30 days;
    /// @notice Largest inline input or output; larger payloads go by CID (submitJobByCid, submitResultByCid).
    uint256 public constant MAX_INLINE_BYTES = 16 * 1024;
    /// @notice Longest CID string accepted, in bytes.
    uint256 public constant MAX_CID_LENGTH = 128;

    AdapterRegistry public immutable adapterRegistry;
    NodeRegistry public immutable nodeRegistry;
    /// @notice Stake a node must have free to claim a job; locked until the job completes or expires.
    uint256 public immutable claimStake;
    /// @notice Share, in basis points, of a slashed claim stake credited to the submitter (rest: treasury).
    uint16 public immutable slashToSubmitterBps;

    /// @notice Account credited with protocol fees and the treasury share of slashes.
    address public treasury;
    /// @dev Treasury income not yet withdrawn. It sits in the treasury's slot so that crediting the protocol fee
    ///      rewrites a slot the result already read instead of a cold mapping slot; balanceOf and withdraw add it in.
    uint96 private _treasuryAccrued;
    /// @notice Protocol fee in basis points of the price, snapshotted into each job at submission.
    uint16 public protocolFeeBps;
    /// @notice Number of jobs submitted so far (also the highest job id).
    uint64 public jobCount;

    mapping(uint256 jobId => JobRecord) private _jobs;
    mapping(address account => uint256) private _balances;

    event JobSubmitted(
        uint256 indexed jobId,
        address indexed submitter,
        uint256 indexed adapterId,
        bytes32 adapterHash,
        bytes32 inputHash,
        bytes input,
        string inputCid,
        uint32 maxTokens,
        uint64 deadline,
        uint256 price
    );
    event JobClaimed(uint256 indexed jobId, address indexed node);
    event ResultSubmitted(
        uint256 indexed jobId,
        address indexed node,
        bytes32 outputHash,
        bytes output,
        string outputCid,
        uint256 nodeAmount,
        uint256 adapterAmount,
        uint256 protocolAmount
    );
    event JobCancelled(uint256 indexed jobId);
    event JobExpired(uint256 indexed jobId, uint256 refund, uint256 slashed);
    event Withdrawn(address indexed account, uint256 amount);
    event ProtocolFeeUpdated(uint16 protocolFeeBps);
    event TreasuryUpdated(address indexed treasury);

    /// @notice A constructor or setter address argument is zero.
    error ZeroAddress();
    /// @notice The protocol fee is above MAX_PROTOCOL_FEE_BPS.
    error ProtocolFeeTooHigh(uint16 bps, uint16 maximum);
    /// @notice The slash share is above 10000 basis points.
    error SlashShareTooHigh(uint16 bps);
    /// @notice No adapter has this id.
    error UnknownAdapter(uint256 adapterId);
    /// @notice The adapter is retired and takes no new jobs.
    error AdapterRetired(uint256 adapterId);
    /// @notice The deadline must be after the current block's timestamp.
    error DeadlineInPast(uint64 deadline, uint256 nowTs);
    /// @notice The deadline is more than MAX_JOB_DURATION ahead.
    error DeadlineTooFar(uint64 deadline, uint256 latest);
    /// @notice maxTokens must be positive.
    error ZeroMaxTokens();
    /// @notice Inline input is empty: send the prompt bytes, or use submitJobByCid.
    error EmptyInput();
    /// @notice An inline payload is larger than MAX_INLINE_BYTES: use the ByCid variant.
    error PayloadTooLarge(uint256 length, uint256 maximum);
    /// @notice The CID is empty or longer than MAX_CID_LENGTH bytes.
    error InvalidCid();
    /// @notice A content hash given with a CID is zero.
    error ZeroHash();
    /// @notice The price must cover the adapter fee, the protocol fee and leave a non-zero node fee.
    error PriceTooLow(uint256 price, uint256 adapterFee, uint256 protocolAmount);
    /// @notice The price does not fit in 96 bits.
    error PriceTooHigh(uint256 price);
    /// @notice No job has this id.
    error UnknownJob(uint256 jobId);
    /// @notice The job is not in the status this call needs.
    error WrongStatus(uint256 jobId, JobStatus status);
    /// @notice Only the job's submitter may cancel it.
    error NotSubmitter(uint256 jobId, address caller);
    /// @notice The job's deadline has passed: it can only be expired.
    error DeadlinePassed(uint256 jobId, uint64 deadline);
    /// @notice The job's deadline has not passed yet.
    error DeadlineNotReached(uint256 jobId, uint64 deadline);
    /// @notice The caller is not an active node serving the adapter's base model with claimStake free.
    error NodeNotEligible(address operator);
    /// @notice Only the node that claimed the job may submit its result.
    error NotClaimant(uint256 jobId, address caller);
    /// @notice The signature is malformed (not 65 bytes, or a high-s / invalid value).
    error MalformedSignature();
    /// @notice The result was signed by another key than the node's registered signer.
    error WrongSigner(address recovered, address expected);
    /// @notice The caller has no balance to withdraw.
    error NothingToWithdraw();
    /// @notice The native-token transfer failed (the receiver reverted).
    error TransferFailed(address to, uint256 amount);
    /// @notice Native tokens are accepted only from the node registry (slashed stake).
    error UnexpectedPayment(address from);

    /// @param adapterRegistry_ The AdapterRegistry jobs name their adapter in.
    /// @param nodeRegistry_ The NodeRegistry nodes stake in (its market must be set to this contract).
    /// @param treasury_ Account credited with protocol fees.
    /// @param protocolFeeBps_ Protocol fee in basis points, at most MAX_PROTOCOL_FEE_BPS.
    /// @param claimStake_ Stake, in wei, a claim locks and a missed deadline forfeits.
    /// @param slashToSubmitterBps_ Share of a forfeited claim stake credited to the job's submitter.
    constructor(
        address adapterRegistry_,
        address nodeRegistry_,
        address treasury_,
        uint16 protocolFeeBps_,
        uint256 claimStake_,
        uint16 slashToSubmitterBps_
    ) Ownable(msg.sender) EIP712("OpenLoRA", "1") {
        if (adapterRegistry_ == address(0) || nodeRegistry_ == address(0) || treasury_ == address(0)) {
            revert ZeroAddress();
        }
        if (protocolFeeBps_ > MAX_PROTOCOL_FEE_BPS) revert ProtocolFeeTooHigh(protocolFeeBps_, MAX_PROTOCOL_FEE_BPS);
        if (slashToSubmitterBps_ > BPS) revert SlashShareTooHigh(slashToSubmitterBps_);
        adapterRegistry = AdapterRegistry(adapterRegistry_);
        nodeRegistry = NodeRegistry(nodeRegistry_);
        treasury = treasury_;
        protocolFeeBps = protocolFeeBps_;
        claimStake = claimStake_;
        slashToSubmitterBps = slashToSubmitterBps_;
    }

    /// @notice Accepts slashed stake from the node registry; `expire` credits it to pull balances.
    receive() external payable {
        if (msg.sender != address(nodeRegistry)) revert UnexpectedPayment(msg.sender);
    }

    // ------------------------------------------------------------------ submitters

    /// @notice Submit a job with an inline input; msg.value is the price, held in escrow.
    /// @param adapterId Adapter to serve the job with (must exist and not be retired).
    /// @param input Prompt bytes (UTF-8 text or a chat JSON the node understands), at most MAX_INLINE_BYTES.
    /// @param maxTokens Most tokens the node should generate.
    /// @param deadline Unix time by which the result must be on chain (after now, within MAX_JOB_DURATION).
    /// @return jobId The new job's id (ids start at 1).
    function submitJob(uint256 adapterId, bytes calldata input, uint32 maxTokens, uint64 deadline)
        external
        payable
        nonReentrant
        returns (uint256 jobId)
    {
        if (input.length == 0) revert EmptyInput();
        if (input.length > MAX_INLINE_BYTES) revert PayloadTooLarge(input.length, MAX_INLINE_BYTES);
        bytes32 inputHash = keccak256(input);
        bytes32 adapterHash;
        (jobId, adapterHash) = _open(adapterId, inputHash, maxTokens, deadline);
        emit JobSubmitted(
            jobId, msg.sender, adapterId, adapterHash, inputHash, input, "", maxTokens, deadline, msg.value
        );
    }

    /// @notice Submit a job whose input is stored off chain (IPFS); msg.value is the price.
    /// @param inputCid CID of the input.
    /// @param inputHash keccak256 of the input bytes; the node checks the fetched input against it and signs it.
    /// @return jobId The new job's id.
    function submitJobByCid(
        uint256 adapterId,
        string calldata inputCid,
        bytes32 inputHash,
        uint32 maxTokens,
        uint64 deadline
    ) external payable nonReentrant returns (uint256 jobId) {
        _checkCid(inputCid);
        if (inputHash == bytes32(0)) revert ZeroHash();
        bytes32 adapterHash;
        (jobId, adapterHash) = _open(adapterId, inputHash, maxTokens, deadline);
        emit JobSubmitted(
            jobId, msg.sender, adapterId, adapterHash, inputHash, "", inputCid, maxTokens, deadline, msg.value
        );
    }

    /// @notice Cancel an open (unclaimed) job and credit its price back to the submitter's pull balance.
    function cancel(uint256 jobId) external nonReentrant {
        JobRecord storage job = _jobs[jobId];
        JobStatus status = job.status;
        if (status != JobStatus.Open) _revertStatus(jobId, status);
        if (job.submitter != msg.sender) revert NotSubmitter(jobId, msg.sender);
        job.status = JobStatus.Cancelled;
        _balances[msg.sender] += job.price;
        emit JobCancelled(jobId);
    }

    // ------------------------------------------------------------------ nodes

    /// @notice Claim an open job before its deadline. The caller (the node's operator key) must be an active
    ///         node serving the adapter's base model with at least claimStake free; that stake is locked until
    ///         the job completes (unlocked) or expires (slashed). Exactly one node can claim a job.
    function claimJob(uint256 jobId) external nonReentrant {
        JobRecord storage job = _jobs[jobId];
        JobStatus status = job.status;
        if (status != JobStatus.Open) _revertStatus(jobId, status);
        uint64 deadline = job.deadline;
        if (block.timestamp >= deadline) revert DeadlinePassed(jobId, deadline);
        bytes32 baseModel = adapterRegistry.baseModelOf(job.adapterId);
        uint32 nodeId = nodeRegistry.eligibleNodeId(msg.sender, baseModel, claimStake);
        if (nodeId == 0) revert NodeNotEligible(msg.sender);
        job.nodeId = nodeId;
        job.status = JobStatus.Claimed;
        emit JobClaimed(jobId, msg.sender);
        if (claimStake != 0) nodeRegistry.lockStake(msg.sender, claimStake);
    }

    /// @notice Submit the output of a claimed job inline and get paid.
    /// @param output The generated bytes (at most MAX_INLINE_BYTES); outputHash = keccak256(output).
    /// @param signature 65-byte EIP-712 signature of Result(jobId, inputHash, adapterHash, outputHash) by the
    ///        node's registered signer; see resultDigest().
    function submitResult(uint256 jobId, bytes calldata output, bytes calldata signature) external nonReentrant {
        if (output.length > MAX_INLINE_BYTES) revert PayloadTooLarge(output.length, MAX_INLINE_BYTES);
        bytes32 outputHash = keccak256(output);
        (uint256 nodeAmount, uint256 adapterAmount, uint256 protocolAmount) = _settle(jobId, outputHash, signature);
        emit ResultSubmitted(jobId, msg.sender, outputHash, output, "", nodeAmount, adapterAmount, protocolAmount);
    }

    /// @notice Submit the output of a claimed job by CID (for outputs larger than MAX_INLINE_BYTES).
    /// @param outputCid CID of the output.
    /// @param outputHash keccak256 of the output bytes (what the signature covers).
    /// @param signature As for submitResult.
    function submitResultByCid(uint256 jobId, string calldata outputCid, bytes32 outputHash, bytes calldata signature)
        external
        nonReentrant
    {
        _checkCid(outputCid);
        if (outputHash == bytes32(0)) revert ZeroHash();
        (uint256 nodeAmount, uint256 adapterAmount, uint256 protocolAmount) = _settle(jobId, outputHash, signature);
        emit ResultSubmitted(jobId, msg.sender, outputHash, "", outputCid, nodeAmount, adapterAmount, protocolAmount);
    }

    // ------------------------------------------------------------------ anyone

    /// @notice Close a job whose deadline has passed without a result: the price is credited back to the
    ///         submitter; if a node had claimed it, its claim stake is slashed, slashToSubmitterBps of it
    ///         credited to the submitter and the rest to the treasury.
    function expire(uint256 jobId) external nonReentrant {
        JobRecord storage job = _jobs[jobId];
        JobStatus status = job.status;
        if (status != JobStatus.Open && status != JobStatus.Claimed) _revertStatus(jobId, status);
        uint64 deadline = job.deadline;
        if (block.timestamp < deadline) revert DeadlineNotReached(jobId, deadline);
        job.status = JobStatus.Expired;
        address submitter = job.submitter;
        uint256 refund = job.price;
        uint256 slashed;
        if (status == JobStatus.Claimed && claimStake != 0) {
            slashed = claimStake;
            uint256 toSubmitter = slashed * slashToSubmitterBps / BPS;
            refund += toSubmitter;
            _creditTreasury(slashed - toSubmitter);
        }
        _balances[submitter] += refund;
        emit JobExpired(jobId, refund, slashed);
        if (slashed != 0) nodeRegistry.slash(nodeRegistry.operatorOf(job.nodeId), slashed);
    }

    /// @notice Send the caller its whole pull balance (refunds, fees, node payments, slash shares).
    function withdraw() external nonReentrant {
        uint256 amount = _balances[msg.sender];
        if (msg.sender == treasury) {
            amount += _treasuryAccrued;
            _treasuryAccrued = 0;
        }
        if (amount == 0) revert NothingToWithdraw();
        _balances[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        (bool ok,) = msg.sender.call{value: amount}("");
        if (!ok) revert TransferFailed(msg.sender, amount);
    }

    // ------------------------------------------------------------------ owner

    /// @notice Set the protocol fee for jobs submitted from now on (at most MAX_PROTOCOL_FEE_BPS).
    function setProtocolFee(uint16 bps) external onlyOwner {
        if (bps > MAX_PROTOCOL_FEE_BPS) revert ProtocolFeeTooHigh(bps, MAX_PROTOCOL_FEE_BPS);
        protocolFeeBps = bps;
        emit ProtocolFeeUpdated(bps);
    }

    /// @notice Set the account future protocol fees and slash shares are credited to. Balances already
    ///         credited to the old treasury stay withdrawable by it.
    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert ZeroAddress();
        _balances[treasury] += _treasuryAccrued;
        _treasuryAccrued = 0;
        treasury = treasury_;
        emit TreasuryUpdated(treasury_);
    }

    // ------------------------------------------------------------------ views

    /// @notice Wei the account can withdraw now.
    function balanceOf(address account) external view returns (uint256) {
        return _balances[account] + (account == treasury ? _treasuryAccrued : 0);
    }

    /// @notice Everything about one job (all zero, status None, for an unknown id).
    function getJob(uint256 jobId) external view returns (Job memory) {
        JobRecord storage j = _jobs[jobId];
        return Job({
            submitter: j.submitter,
            node: j.nodeId == 0 ? address(0) : nodeRegistry.operatorOf(j.nodeId),
            adapterId: j.adapterId,
            adapterHash: j.status == JobStatus.None ? bytes32(0) : adapterRegistry.contentHashOf(j.adapterId),
            inputHash: j.inputHash,
            price: j.price,
            adapterFee: j.adapterFee,
            protocolFeeBps: j.protocolFeeBps,
            maxTokens: j.maxTokens,
            deadline: j.deadline,
            status: j.status
        });
    }

    /// @notice The EIP-712 digest a node's signer signs for a result (for clients to check their signing).
    function resultDigest(uint256 jobId, bytes32 inputHash, bytes32 adapterHash, bytes32 outputHash)
        public
        view
        returns (bytes32)
    {
        return _hashTypedDataV4(keccak256(abi.encode(RESULT_TYPEHASH, jobId, inputHash, adapterHash, outputHash)));
    }

    /// @notice The EIP-712 domain separator (name "OpenLoRA", version "1", this chain, this contract).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice A price that is enough for a job on this adapter now: covers the adapter fee and protocol fee
    ///         and leaves at least 1 wei for the node. Offer more to attract nodes.
    function minPrice(uint256 adapterId) external view returns (uint256) {
        (bool exists,,, uint96 fee) = adapterRegistry.jobTerms(adapterId);
        if (!exists) revert UnknownAdapter(adapterId);
        uint256 keep = BPS - protocolFeeBps;
        return ((uint256(fee) + 1) * BPS + keep - 1) / keep;
    }

    // ------------------------------------------------------------------ internals

    function _open(uint256 adapterId, bytes32 inputHash, uint32 maxTokens, uint64 deadline)
        private
        returns (uint256 jobId, bytes32 adapterHash)
    {
        if (maxTokens == 0) revert ZeroMaxTokens();
        if (deadline <= block.timestamp) revert DeadlineInPast(deadline, block.timestamp);
        if (deadline > block.timestamp + MAX_JOB_DURATION) {
            revert DeadlineTooFar(deadline, block.timestamp + MAX_JOB_DURATION);
        }
        if (msg.value > type(uint96).max) revert PriceTooHigh(msg.value);
        if (adapterId > type(uint32).max) revert UnknownAdapter(adapterId);
        (bool exists, bool retired, bytes32 contentHash, uint96 fee) = adapterRegistry.jobTerms(adapterId);
        if (!exists) revert UnknownAdapter(adapterId);
        if (retired) revert AdapterRetired(adapterId);
        uint16 bps = protocolFeeBps;
        uint256 protocolAmount = msg.value * bps / BPS;
        if (msg.value <= uint256(fee) + protocolAmount) revert PriceTooLow(msg.value, fee, protocolAmount);

        jobId = ++jobCount;
        // The casts are exact: price < 2^96 and adapterId < 2^32 are checked above, and the deadline is at
        // most MAX_JOB_DURATION after now, far below 2^40 seconds (year 36812).
        _jobs[jobId] = JobRecord({
            submitter: msg.sender,
            // forge-lint: disable-next-line(unsafe-typecast)
            price: uint96(msg.value),
            adapterFee: fee,
            // forge-lint: disable-next-line(unsafe-typecast)
            deadline: uint40(deadline),
            // forge-lint: disable-next-line(unsafe-typecast)
            adapterId: uint32(adapterId),
            nodeId: 0,
            protocolFeeBps: bps,
            status: JobStatus.Open,
            maxTokens: maxTokens,
            inputHash: inputHash
        });
        adapterHash = contentHash;
    }

    function _settle(uint256 jobId, bytes32 outputHash, bytes calldata signature)
        private
        returns (uint256 nodeAmount, uint256 adapterAmount, uint256 protocolAmount)
    {
        (JobRecord storage job, address signer) = _claimedByCaller(jobId);
        (address publisher, address[] memory payees, uint16[] memory shares) =
            _verifyResult(jobId, job, signer, outputHash, signature);

        job.status = JobStatus.Completed;
        uint256 price = job.price;
        protocolAmount = price * job.protocolFeeBps / BPS;
        adapterAmount = job.adapterFee;
        nodeAmount = price - adapterAmount - protocolAmount;
        _balances[msg.sender] += nodeAmount;
        if (protocolAmount != 0) _creditTreasury(protocolAmount);
        if (adapterAmount != 0) _creditAdapterFee(adapterAmount, publisher, payees, shares);
        if (claimStake != 0) nodeRegistry.unlockStake(msg.sender, claimStake);
    }

    /// @dev Checks the job is claimed, still in time and that the caller is its claimant; returns the
    ///      claimant's current signer.
    function _claimedByCaller(uint256 jobId) private view returns (JobRecord storage job, address signer) {
        job = _jobs[jobId];
        JobStatus status = job.status;
        if (status != JobStatus.Claimed) _revertStatus(jobId, status);
        uint64 deadline = job.deadline;
        if (block.timestamp >= deadline) revert DeadlinePassed(jobId, deadline);
        address operator;
        (operator, signer) = nodeRegistry.claimantOf(job.nodeId);
        if (operator != msg.sender) revert NotClaimant(jobId, msg.sender);
    }

    /// @dev Checks the signature against the claimant's registered signer and returns who gets the adapter fee.
    function _verifyResult(
        uint256 jobId,
        JobRecord storage job,
        address signer,
        bytes32 outputHash,
        bytes calldata signature
    ) private view returns (address publisher, address[] memory payees, uint16[] memory shares) {
        bytes32 adapterHash;
        (adapterHash, publisher, payees, shares) = adapterRegistry.settlementTerms(job.adapterId);
        bytes32 digest = resultDigest(jobId, job.inputHash, adapterHash, outputHash);
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
        if (err != ECDSA.RecoverError.NoError) revert MalformedSignature();
        if (recovered != signer) revert WrongSigner(recovered, signer);
    }

    function _creditAdapterFee(uint256 amount, address publisher, address[] memory payees, uint16[] memory shares)
        private
    {
        uint256 n = payees.length;
        if (n == 0) {
            _balances[publisher] += amount;
            return;
        }
        uint256 paid;
        for (uint256 i; i < n - 1; ++i) {
            uint256 part = amount * shares[i] / BPS;
            _balances[payees[i]] += part;
            paid += part;
        }
        _balances[payees[n - 1]] += amount - paid;
    }

    function _creditTreasury(uint256 amount) private {
        uint256 accrued = uint256(_treasuryAccrued) + amount;
        if (accrued > type(uint96).max) {
            _balances[treasury] += amount;
        } else {
            // Exact: accrued <= type(uint96).max.
            // forge-lint: disable-next-line(unsafe-typecast)
            _treasuryAccrued = uint96(accrued);
        }
    }

    function _revertStatus(uint256 jobId, JobStatus status) private pure {
        if (status == JobStatus.None) revert UnknownJob(jobId);
        revert WrongStatus(jobId, status);
    }

    function _checkCid(string calldata cid) private pure {
        if (bytes(cid).length == 0 || bytes(cid).length > MAX_CID_LENGTH) revert InvalidCid();
    }
}
