// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IArbiter} from "./IArbiter.sol";
import {HeldBalance} from "./lib/HeldBalance.sol";
import {
    AdapterRequest,
    AdapterTerm,
    ClaimKey,
    JobHead,
    JobRequest,
    JobSlot,
    JobStatus,
    ResultEntry,
    Terms,
    TermsHash
} from "./lib/JobTypes.sol";
import {NodeRegistry} from "./NodeRegistry.sol";
import {Disputes} from "./market/Disputes.sol";
import {MarketBase} from "./market/MarketBase.sol";
import {MarketOps} from "./market/MarketOps.sol";
import {Settlement} from "./market/Settlement.sol";

/// @title JobMarket (protocol v2)
/// @notice Escrowed inference jobs for LoRA adapters. A job's terms are emitted once and kept on chain only as
///         a hash packed with its status and claimant in one storage word; every later call re-supplies the
///         terms. Nodes claim and post results in batches (one stake update, one EIP-712 signature per batch).
///         A claim unanswered within the job's service window can be reclaimed by anyone (claimant slashed, job
///         reopened); a claimant may release a job it cannot serve for a small fixed penalty. Payments are held
///         for a challenge window during which a validator may dispute a result (see Disputes).
/// @dev Pull payments only. Result signatures are bound to chainId and this contract by the EIP-712 domain and
///      to the exact batch (job ids, terms hashes, output and proof hashes) by the signed struct.
contract JobMarket is Disputes, Settlement {
    using JobSlot for uint256;

    /// @notice The NodeRegistry this market created (its first CREATE), so the registry's market is fixed.
    NodeRegistry public immutable nodeRegistry;

    /// @notice MarketOps: cancel, releaseJob, reclaim, expire, withdrawAdapterFees, dispute and settleDispute
    ///         delegatecall it (see MarketOps: keeps this contract under the EIP-170 size limit).
    address public immutable marketOps;

    /// @notice The MarketOps given was built with other parameters (or is no MarketOps).
    error OpsMismatch(address ops);

    /// @param c Deployment parameters; the NodeRegistry is created here, so its market is fixed at deployment.
    /// @param ops A MarketOps deployed with the same `c` (deployed first, see script/Deploy.s.sol).
    constructor(Config memory c, address ops) MarketBase(c) {
        _validate(c);
        if (ops.code.length == 0 || MarketOps(payable(ops)).configHash() != keccak256(abi.encode(c))) {
            revert OpsMismatch(ops);
        }
        nodeRegistry = new NodeRegistry(c.minStake, c.unstakeDelay);
        marketOps = ops;
    }

    function _registry() internal view override returns (NodeRegistry) {
        return nodeRegistry;
    }

    // ------------------------------------------------------------------ submitters

    /// @notice Submit a single-adapter job with an inline input; msg.value is the price, held in escrow.
    /// @param adapterId Adapter to serve the job with.
    /// @param maxAdapterFee The highest adapter fee the submitter accepts (a higher registry fee reverts).
    /// @param input Prompt bytes, at most MAX_INLINE_BYTES.
    /// @param maxTokens Most tokens the node should generate.
    /// @param deadline Unix time by which the result must be on chain.
    /// @return jobId The new job's id.
    function submitJob(uint256 adapterId, uint96 maxAdapterFee, bytes calldata input, uint32 maxTokens, uint64 deadline)
        external
        payable
        nonReentrant
        returns (uint256 jobId)
    {
        if (adapterId > type(uint32).max) revert UnknownAdapter(adapterId);
        AdapterRequest[] memory one = new AdapterRequest[](1);
        // forge-lint: disable-next-line(unsafe-typecast)
        one[0] = AdapterRequest({id: uint32(adapterId), weightBps: BPS, maxFee: maxAdapterFee});
        return _submit(one, maxTokens, deadline, defaultServiceWindow, input, "", bytes32(0));
    }

    /// @notice Submit a job naming up to MAX_ADAPTERS adapters with merge weights, its own service window, and
    ///         its input inline (`input`) or by CID (`inputCid` + `inputHash`, with `input` empty).
    /// @return jobId The new job's id.
    function submitRequest(JobRequest calldata req, bytes calldata input, string calldata inputCid, bytes32 inputHash)
        external
        payable
        nonReentrant
        returns (uint256 jobId)
    {
        uint32 window = req.serviceWindow == 0 ? defaultServiceWindow : req.serviceWindow;
        return _submit(req.adapters, req.maxTokens, req.deadline, window, input, inputCid, inputHash);
    }

    /// @notice Cancel an open (unclaimed) job; its price is credited back to the submitter.
    function cancel(Terms calldata t) external {
        _delegateToOps();
    }

    // ------------------------------------------------------------------ nodes

    /// @notice Claim one open job named by its ClaimKey (see TermsHash; `keysOf` builds it from the terms).
    ///         Reverts with the reason when it cannot be claimed (TermsMismatch also for a job of another base
    ///         model than the caller's). Locks claimStakeFor(price).
    function claimJob(ClaimKey calldata k) external nonReentrant {
        (uint32 nodeId, bytes32 baseModel) = _claimer();
        bytes32 termsHash_ = _claimHash(k, baseModel);
        uint256 stake = _claim(termsHash_, k.head, nodeId);
        if (stake == 0) {
            _keySlot(termsHash_, k.head, JobStatus.Open);
            revert DeadlinePassed(JobHead.jobId(k.head), uint64(JobHead.deadline(k.head)));
        }
        nodeRegistry.lockStake(msg.sender, stake);
    }

    /// @notice Claim a batch of jobs, each named by its ClaimKey. Jobs that are no longer open, past their
    ///         deadline, for another base model or whose key does not match are skipped (a rival got there
    ///         first); reverts if none was claimed. Locks claimStakeFor(price) of each job claimed.
    /// @return claimed How many were claimed.
    function claimJobs(ClaimKey[] calldata keys) external nonReentrant returns (uint256 claimed) {
        _checkBatch(keys.length);
        (uint32 nodeId, bytes32 baseModel) = _claimer();
        uint256 stake;
        for (uint256 i; i < keys.length; ++i) {
            ClaimKey calldata k = keys[i];
            uint256 s = _claim(_claimHash(k, baseModel), k.head, nodeId);
            if (s != 0) {
                stake += s;
                ++claimed;
            }
        }
        if (claimed == 0) revert NothingClaimed();
        nodeRegistry.lockStake(msg.sender, stake);
    }

    /// @notice Post one result (a batch of one: the signature is over ResultBatch with this one Result, see
    ///         resultDigest). Reverts with the reason when the caller does not hold the job in time.
    function submitResult(ResultEntry calldata item, bytes calldata signature) external nonReentrant {
        (uint32 nodeId, address signer) = nodeRegistry.claimantInfo(msg.sender);
        Payout memory p;
        bytes32[] memory leaves = new bytes32[](1);
        (bytes32 termsHash_, bool ok) = _entry(item, nodeId, leaves, 0, p);
        if (!ok) {
            uint256 head = item.head;
            _keySlot(termsHash_, head, JobStatus.Claimed);
            if (block.timestamp >= JobHead.deadline(head)) {
                revert DeadlinePassed(JobHead.jobId(head), uint64(JobHead.deadline(head)));
            }
            revert NotClaimant(JobHead.jobId(head), msg.sender);
        }
        _checkSignature(leaves, signature, signer);
        _pay(p);
    }

    /// @notice Post a batch of results, each naming its job by its key (see ResultEntry), with one EIP-712
    ///         signature by the node's registered signer over ResultBatch(Result[]) (see batchDigest). Items whose
    ///         job the caller no longer holds (reclaimed, past deadline, already answered) are skipped; reverts if
    ///         none settled. Payments are held for the challenge window, then withdrawable.
    /// @return settled How many results were accepted.
    function submitResults(ResultEntry[] calldata items, bytes calldata signature)
        external
        nonReentrant
        returns (uint256 settled)
    {
        _checkBatch(items.length);
        (uint32 nodeId, address signer) = nodeRegistry.claimantInfo(msg.sender);
        Payout memory p;
        bytes32[] memory leaves = new bytes32[](items.length);
        for (uint256 i; i < items.length; ++i) {
            (, bool ok) = _entry(items[i], nodeId, leaves, i, p);
            if (ok) ++settled;
        }
        if (settled == 0) revert NothingSettled();
        _checkSignature(leaves, signature, signer);
        _pay(p);
    }

    /// @notice Give back a claimed job the caller cannot serve: releasePenalty of its claim stake goes to the
    ///         treasury, the rest is unlocked, and the job reopens for other nodes (or is refunded past its
    ///         deadline). The submitter gets nothing from a release.
    function releaseJob(Terms calldata t) external {
        _delegateToOps();
    }

    // ------------------------------------------------------------------ anyone

    /// @notice Reclaim a job whose claimant did not post a result within the job's service window: the claim
    ///         stake is slashed (the submitter gets at most compensationBps of the price, once per job; the rest
    ///         goes to the treasury) and the job reopens for other nodes, or is refunded past its deadline.
    function reclaim(Terms calldata t) external {
        _delegateToOps();
    }

    /// @notice Close a job whose deadline passed without a result: the price goes back to the submitter; a
    ///         claimant's stake is slashed as in reclaim.
    function expire(Terms calldata t) external {
        _delegateToOps();
    }

    /// @notice Send the caller its pull balance plus its earnings whose challenge window has passed.
    function withdraw() external nonReentrant {
        (uint256 rest, uint256 matured) = HeldBalance.release(_heldNode[msg.sender], _epoch(block.timestamp));
        if (matured != 0) _heldNode[msg.sender] = rest;
        uint256 amount = _balances[msg.sender] + matured;
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

    /// @notice Credit an adapter's matured fees to its publisher (or split among its payees); anyone may call.
    function withdrawAdapterFees(uint256 adapterId) external {
        _delegateToOps();
    }

    // ------------------------------------------------------------------ validators

    /// @notice Dispute a result inside its challenge window. The caller must be a validator the AdapterRegistry
    ///         allows now and must send exactly disputeBond. The job's held payments are set aside until settled.
    /// @param t The job's terms (from JobSubmitted).
    /// @param evidenceCid CID of the evidence (for TOPLOC: the recomputed proof), passed on to the arbiter.
    function dispute(Terms calldata t, string calldata evidenceCid) external payable {
        _delegateToOps();
    }

    /// @notice Carry out a ruling (anyone), or, when the arbiter has not ruled within disputeTimeout, close the
    ///         dispute as "no fraud".
    function settleDispute(Terms calldata t) external {
        _delegateToOps();
    }

    // ------------------------------------------------------------------ owner

    /// @notice Set the protocol fee for jobs submitted from now on (at most MAX_PROTOCOL_FEE_BPS).
    function setProtocolFee(uint16 bps) external onlyOwner {
        if (bps > MAX_PROTOCOL_FEE_BPS) revert ProtocolFeeTooHigh(bps, MAX_PROTOCOL_FEE_BPS);
        protocolFeeBps = bps;
        emit ProtocolFeeUpdated(bps);
    }

    /// @notice Set the account future protocol fees and slash shares go to.
    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert ZeroAddress();
        _balances[treasury] += _treasuryAccrued;
        _treasuryAccrued = 0;
        treasury = treasury_;
        emit TreasuryUpdated(treasury_);
    }

    /// @notice Set the arbiter new disputes go to (open disputes keep theirs).
    function setArbiter(address arbiter_) external onlyOwner {
        if (arbiter_ == address(0)) revert ZeroAddress();
        arbiter = IArbiter(arbiter_);
        emit ArbiterUpdated(arbiter_);
    }

    // ------------------------------------------------------------------ views

    /// @notice Wei the account can withdraw now (pull balance + matured earnings + treasury income).
    function balanceOf(address account) external view returns (uint256) {
        (, uint256 matured) = HeldBalance.release(_heldNode[account], _epoch(block.timestamp));
        return _balances[account] + matured + (account == treasury ? _treasuryAccrued : 0);
    }

    /// @notice Earnings of `account` still inside their challenge window.
    function heldOf(address account) external view returns (uint256) {
        (uint256 rest,) = HeldBalance.release(_heldNode[account], _epoch(block.timestamp));
        return HeldBalance.total(rest);
    }

    /// @notice An adapter's fees: withdrawable now (via withdrawAdapterFees) and still held.
    function adapterFees(uint256 adapterId) external view returns (uint256 withdrawable, uint256 held) {
        (uint256 rest, uint256 matured) = HeldBalance.release(_heldAdapter[adapterId], _epoch(block.timestamp));
        return (_adapterBalance[adapterId] + matured, HeldBalance.total(rest));
    }

    /// @notice A job's stored state: status, claimant operator, and the time of its claim or result.
    /// @return status Stored status (a Resulted job is final once `finalAt` has passed).
    /// @return node Claimant's operator address (zero when none).
    /// @return at Claim time while Claimed, result time while Resulted/Disputed/Final (0 otherwise).
    /// @return termsHashPrefix The stored 192-bit prefix of the terms hash (shifted left by 64 bits).
    function jobState(uint256 jobId)
        external
        view
        returns (JobStatus status, address node, uint256 at, bytes32 termsHashPrefix)
    {
        uint256 slot = _jobs[jobId];
        if (slot == 0) return (JobStatus.None, address(0), 0, bytes32(0));
        status = slot.status();
        uint32 nodeId = slot.nodeId();
        node = nodeId == 0 ? address(0) : nodeRegistry.operatorOf(nodeId);
        at = slot.offset();
        termsHashPrefix = bytes32(slot & JobSlot.HASH_MASK);
    }

    /// @notice Whether `t` are the job's terms as stored.
    function termsMatch(Terms calldata t) external view returns (bool) {
        uint256 slot = _jobs[t.jobId];
        return slot != 0 && slot.matches(TermsHash.hash(t));
    }

    /// @notice The terms hash (see TermsHash): what the market stores a prefix of and results sign as termsHash.
    function hashTerms(Terms calldata t) external view returns (bytes32) {
        _viewOps();
    }

    /// @notice The compact keys claimJob(s) and submitResult(s) take for a job, built from its terms (for tools
    ///         such as `cast` that hold the terms from JobSubmitted). Computed by MarketOps (pure).
    function keysOf(Terms calldata t)
        external
        view
        returns (uint256 head, uint256[] memory adapters, bytes32 bodyHash, bytes32 restHash)
    {
        _viewOps();
    }

    /// @notice The EIP-712 digest of a batch of one result.
    function resultDigest(uint256 jobId, bytes32 termsHash_, bytes32 outputHash, bytes32 proofHash)
        external
        view
        returns (bytes32)
    {
        bytes32[] memory leaves = new bytes32[](1);
        leaves[0] = _leaf(jobId, termsHash_, outputHash, proofHash);
        return _batchDigest(leaves);
    }

    /// @notice The EIP-712 domain separator (name "OpenLoRA", version "2", this chain, this contract).
    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The least price a single-adapter job on this adapter needs now: its fee plus the protocol fee,
    ///         leaving 1 wei for the node. Nodes want more (docs/submitters.md).
    function minPrice(uint256 adapterId) external view returns (uint256) {
        (bool exists,,,, uint96 fee) = adapterRegistry.marketTerms(adapterId);
        if (!exists) revert UnknownAdapter(adapterId);
        uint256 keep = BPS - protocolFeeBps;
        return ((uint256(fee) + 1) * BPS + keep - 1) / keep;
    }

    // ------------------------------------------------------------------ internals

    function _submit(
        AdapterRequest[] memory reqs,
        uint32 maxTokens,
        uint64 deadline,
        uint32 serviceWindow,
        bytes calldata input,
        string memory inputCid,
        bytes32 inputHash
    ) private returns (uint256 jobId) {
        if (maxTokens == 0) revert ZeroMaxTokens();
        if (deadline <= block.timestamp) revert DeadlineInPast(deadline, block.timestamp);
        if (deadline > block.timestamp + MAX_JOB_DURATION) {
            revert DeadlineTooFar(deadline, block.timestamp + MAX_JOB_DURATION);
        }
        if (serviceWindow < minServiceWindow) revert ServiceWindowTooShort(serviceWindow, minServiceWindow);
        if (msg.value > type(uint96).max) revert PriceTooHigh(msg.value);
        if (input.length != 0) {
            if (input.length > MAX_INLINE_BYTES) revert PayloadTooLarge(input.length, MAX_INLINE_BYTES);
            if (bytes(inputCid).length != 0) revert InvalidCid();
            inputHash = keccak256(input);
        } else {
            if (bytes(inputCid).length == 0) revert EmptyInput();
            if (bytes(inputCid).length > MAX_CID_LENGTH) revert InvalidCid();
            if (inputHash == bytes32(0)) revert ZeroHash();
        }
        (AdapterTerm[] memory terms, bytes32 baseModel, uint256 fees) = _adapterTerms(reqs);
        uint16 bps = protocolFeeBps;
        uint256 protocolAmount = msg.value * bps / BPS;
        if (msg.value <= fees + protocolAmount) revert PriceTooLow(msg.value, fees, protocolAmount);
        jobId = ++jobCount;
        // Casts are exact: price < 2^96 is checked; timestamps and windows fit their widths for millennia.
        Terms memory t = Terms({
            jobId: uint64(jobId),
            submitter: msg.sender,
            // forge-lint: disable-next-line(unsafe-typecast)
            price: uint96(msg.value),
            // forge-lint: disable-next-line(unsafe-typecast)
            submittedAt: uint40(block.timestamp),
            // forge-lint: disable-next-line(unsafe-typecast)
            deadline: uint40(deadline),
            serviceWindow: serviceWindow,
            maxTokens: maxTokens,
            protocolFeeBps: bps,
            baseModel: baseModel,
            inputHash: inputHash,
            adapters: terms
        });
        _record(t, input, inputCid);
    }

    /// @dev Stores the new job's slot (its TermsHash) and emits JobSubmitted with the terms' ABI encoding.
    function _record(Terms memory t, bytes calldata input, string memory inputCid) private {
        _jobs[t.jobId] = JobSlot.pack(TermsHash.hash(t), JobStatus.Open, 0, 0, 0);
        _emitSubmitted(t.jobId, t.adapters[0].id, abi.encode(t), input, inputCid);
    }

    /// @dev emit JobSubmitted(jobId, msg.sender, adapterId, t, input, inputCid), with the terms' data copied from
    ///      `enc` = abi.encode(t) instead of encoding them a second time. Data: three offsets, the terms' body,
    ///      then input and inputCid as length-prefixed, zero-padded bytes (the ABI encoding of the event's data).
    function _emitSubmitted(
        uint256 jobId,
        uint256 adapterId,
        bytes memory enc,
        bytes calldata input,
        string memory inputCid
    ) private {
        bytes32 topic = JobSubmitted.selector;
        assembly ("memory-safe") {
            let termsLen := sub(mload(enc), 0x20)
            let inLen := input.length
            let inPadded := and(add(inLen, 31), not(31))
            let cidLen := mload(inputCid)
            let cidPadded := and(add(cidLen, 31), not(31))
            let d := mload(0x40)
            let inAt := add(0x60, termsLen)
            let cidAt := add(inAt, add(0x20, inPadded))
            mstore(d, 0x60)
            mstore(add(d, 0x20), inAt)
            mstore(add(d, 0x40), cidAt)
            mcopy(add(d, 0x60), add(enc, 0x40), termsLen)
            let p := add(d, inAt)
            mstore(p, inLen)
            mstore(add(p, inPadded), 0) // zero the last (partial) word before copying over it
            calldatacopy(add(p, 0x20), input.offset, inLen)
            p := add(d, cidAt)
            mstore(p, cidLen)
            mstore(add(p, cidPadded), 0)
            mcopy(add(p, 0x20), add(inputCid, 0x20), cidLen)
            let size := add(cidAt, add(0x20, cidPadded))
            log4(d, size, topic, jobId, caller(), adapterId)
        }
    }

    /// @dev Checks each requested adapter against the registry and snapshots its fee and content hash.
    function _adapterTerms(AdapterRequest[] memory reqs)
        private
        view
        returns (AdapterTerm[] memory terms, bytes32 baseModel, uint256 fees)
    {
        uint256 n = reqs.length;
        if (n == 0 || n > MAX_ADAPTERS) revert BadAdapterList();
        terms = new AdapterTerm[](n);
        for (uint256 i; i < n; ++i) {
            AdapterRequest memory r = reqs[i];
            if (r.weightBps == 0) revert BadAdapterList();
            for (uint256 j; j < i; ++j) {
                if (reqs[j].id == r.id) revert BadAdapterList();
            }
            (bool exists, bool retired, bytes32 contentHash, bytes32 model, uint96 fee) =
                adapterRegistry.marketTerms(r.id);
            if (!exists) revert UnknownAdapter(r.id);
            if (retired) revert AdapterRetired(r.id);
            if (fee > r.maxFee) revert AdapterFeeAboveMax(r.id, fee, r.maxFee);
            if (i == 0) baseModel = model;
            else if (model != baseModel) revert BaseModelMismatch(r.id);
            terms[i] = AdapterTerm({id: r.id, weightBps: r.weightBps, fee: fee, contentHash: contentHash});
            fees += fee;
        }
    }

    function _claimer() private view returns (uint32 nodeId, bytes32 baseModel) {
        (nodeId, baseModel) = nodeRegistry.claimer(msg.sender);
        if (nodeId == 0) revert NodeNotEligible(msg.sender);
    }

    /// @dev The terms hash a claim key gives for a job of `baseModel` (the claiming node's).
    function _claimHash(ClaimKey calldata k, bytes32 baseModel) private pure returns (bytes32) {
        return TermsHash.ofKey(k.head, TermsHash.rest(baseModel, k.bodyHash), k.adapters);
    }

    /// @dev One result entry: its terms hash, output hash and signed leaf (stored at leaves[i]); settles it when
    ///      the caller holds the job in time. Returns the terms hash and whether it settled.
    function _entry(ResultEntry calldata it, uint32 nodeId, bytes32[] memory leaves, uint256 i, Payout memory p)
        private
        returns (bytes32 termsHash_, bool ok)
    {
        termsHash_ = TermsHash.ofKey(it.head, it.restHash, it.adapters);
        bytes32 outputHash = it.outputHash;
        if (outputHash == bytes32(0)) {
            outputHash = _inlineHash(it.output);
        } else if (it.output.length == 0 || it.output.length > MAX_CID_LENGTH) {
            revert InvalidCid();
        }
        leaves[i] = _leaf(JobHead.jobId(it.head), termsHash_, outputHash, it.proofHash);
        ok = _settle(termsHash_, it.head, it.adapters, nodeId, outputHash, it.proofHash, p);
    }

    /// @dev The slot of the job a key names, or the reason it names none in state `want`.
    function _keySlot(bytes32 termsHash_, uint256 head, JobStatus want) private view returns (uint256 slot) {
        uint256 jobId = JobHead.jobId(head);
        slot = _jobs[jobId];
        if (slot == 0) revert UnknownJob(jobId);
        if (!slot.matches(termsHash_)) revert TermsMismatch(jobId);
        JobStatus s = slot.status();
        if (s != want) revert WrongStatus(jobId, s);
    }

    /// @dev Runs the current call in MarketOps on this contract's state and returns or reverts with its result.
    function _delegateToOps() private {
        address ops = marketOps;
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), ops, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    /// @dev Runs the current (pure) call in MarketOps on MarketOps' own, empty, state and returns its result.
    function _viewOps() private view {
        address ops = marketOps;
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := staticcall(gas(), ops, 0, calldatasize(), 0, 0)
            returndatacopy(0, 0, returndatasize())
            if iszero(ok) { revert(0, returndatasize()) }
            return(0, returndatasize())
        }
    }

    function _checkBatch(uint256 n) private pure {
        if (n == 0) revert EmptyBatch();
        if (n > MAX_BATCH) revert BatchTooLarge(n, MAX_BATCH);
    }
}
