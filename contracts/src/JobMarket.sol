// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

import {IArbiter} from "./IArbiter.sol";
import {HeldBalance} from "./lib/HeldBalance.sol";
import {
    AdapterRequest,
    AdapterTerm,
    JobRequest,
    JobSlot,
    JobStatus,
    ResultItem,
    Terms,
    TermsAt
} from "./lib/JobTypes.sol";
import {NodeRegistry} from "./NodeRegistry.sol";
import {Disputes} from "./market/Disputes.sol";
import {MarketBase} from "./market/MarketBase.sol";
import {MarketOps} from "./market/MarketOps.sol";

/// @title JobMarket (protocol v2)
/// @notice Escrowed inference jobs for LoRA adapters. A job's terms are emitted once and kept on chain only as
///         a hash packed with its status and claimant in one storage word; every later call re-supplies the
///         terms. Nodes claim and post results in batches (one stake update, one EIP-712 signature per batch).
///         A claim unanswered within the job's service window can be reclaimed by anyone (claimant slashed, job
///         reopened); a claimant may release a job it cannot serve for a small fixed penalty. Payments are held
///         for a challenge window during which a validator may dispute a result (see Disputes).
/// @dev Pull payments only. Result signatures are bound to chainId and this contract by the EIP-712 domain and
///      to the exact batch (job ids, terms hashes, output and proof hashes) by the signed struct.
contract JobMarket is Disputes {
    using JobSlot for uint256;

    /// @notice EIP-712 types: a batch of results, each naming its job, terms, output and proof.
    bytes32 public constant RESULT_TYPEHASH =
        keccak256("Result(uint256 jobId,bytes32 termsHash,bytes32 outputHash,bytes32 proofHash)");
    bytes32 public constant BATCH_TYPEHASH = keccak256(
        "ResultBatch(Result[] results)Result(uint256 jobId,bytes32 termsHash,bytes32 outputHash,bytes32 proofHash)"
    );

    /// @dev MarketOps, created here: cancel, releaseJob, reclaim, expire, withdrawAdapterFees, dispute and
    ///      settleDispute delegatecall it (see MarketOps: keeps this contract under the EIP-170 size limit).
    address private immutable _ops;

    /// @param c Deployment parameters; the NodeRegistry is created here, so its market is fixed at deployment.
    ///        The NodeRegistry is this contract's first CREATE (nonce 1), MarketOps its second (nonce 2).
    constructor(Config memory c) MarketBase(c, new NodeRegistry(c.minStake, c.unstakeDelay)) {
        _validate(c);
        _ops = address(new MarketOps(c, nodeRegistry));
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

    /// @notice Claim one open job (reverts with the reason when it cannot be claimed). Locks claimStakeFor(price).
    function claimJob(Terms calldata t) external nonReentrant {
        (uint32 nodeId, bytes32 baseModel) = nodeRegistry.claimer(msg.sender);
        if (nodeId == 0) revert NodeNotEligible(msg.sender);
        uint256 stake = _claimItem(t, nodeId, baseModel);
        if (stake == 0) {
            // Say why (the checks of _claimItem, in order).
            (uint256 slot,) = _slotFor(t);
            _requireStatus(t, slot, JobStatus.Open);
            if (block.timestamp >= t.deadline) revert DeadlinePassed(t.jobId, t.deadline);
            revert NodeNotEligible(msg.sender);
        }
        nodeRegistry.lockStake(msg.sender, stake);
    }

    /// @notice Claim a batch of jobs. Jobs that are no longer open, past their deadline, for another base model
    ///         or whose terms do not match are skipped (a rival got there first); reverts if none was claimed.
    /// @return claimed How many were claimed.
    function claimJobs(Terms[] calldata terms) external nonReentrant returns (uint256 claimed) {
        _checkBatch(terms.length);
        (uint32 nodeId, bytes32 baseModel) = nodeRegistry.claimer(msg.sender);
        if (nodeId == 0) revert NodeNotEligible(msg.sender);
        uint256 stake;
        for (uint256 i; i < terms.length; ++i) {
            uint256 s = _claimItem(terms[i], nodeId, baseModel);
            if (s != 0) {
                stake += s;
                ++claimed;
            }
        }
        if (claimed == 0) revert NothingClaimed();
        nodeRegistry.lockStake(msg.sender, stake);
    }

    /// @notice Post one result (a batch of one); the signature is over ResultBatch with this one Result
    ///         (see resultDigest).
    function submitResult(ResultItem calldata item, bytes calldata signature) external nonReentrant {
        (uint32 nodeId, address signer) = nodeRegistry.claimantInfo(msg.sender);
        Payout memory p = _newPayout(1);
        (bytes32 leaf, bool ok) = _settleItem(item, nodeId, p);
        if (!ok) {
            (uint256 slot,) = _slotFor(item.terms);
            _requireStatus(item.terms, slot, JobStatus.Claimed);
            if (block.timestamp >= item.terms.deadline) revert DeadlinePassed(item.terms.jobId, item.terms.deadline);
            revert NotClaimant(item.terms.jobId, msg.sender);
        }
        bytes32[] memory leaves = new bytes32[](1);
        leaves[0] = leaf;
        _checkSignature(leaves, signature, signer);
        _pay(p);
    }

    /// @notice Post a batch of results with one EIP-712 signature by the node's registered signer over
    ///         ResultBatch(Result[]) (see batchDigest). Items whose job the caller no longer holds (reclaimed,
    ///         past deadline, already answered) are skipped; reverts if none settled. Payments are held for the
    ///         challenge window, then withdrawable.
    /// @return settled How many results were accepted.
    function submitResults(ResultItem[] calldata items, bytes calldata signature)
        external
        nonReentrant
        returns (uint256 settled)
    {
        _checkBatch(items.length);
        (uint32 nodeId, address signer) = nodeRegistry.claimantInfo(msg.sender);
        Payout memory p = _newPayout(items.length);
        bytes32[] memory leaves = new bytes32[](items.length);
        for (uint256 i; i < items.length; ++i) {
            bool ok;
            (leaves[i], ok) = _settleItem(items[i], nodeId, p);
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
        return slot != 0 && slot.matches(JobSlot.hashOf(t));
    }

    /// @notice keccak256 of the terms' ABI encoding (abi.encode(terms) without its leading offset word): what
    ///         results sign as termsHash.
    function hashTerms(Terms calldata t) external pure returns (bytes32) {
        return JobSlot.hashOf(t);
    }

    /// @notice The EIP-712 digest of a batch of one result.
    function resultDigest(uint256 jobId, bytes32 termsHash_, bytes32 outputHash, bytes32 proofHash)
        external
        view
        returns (bytes32)
    {
        bytes32[] memory leaves = new bytes32[](1);
        leaves[0] = keccak256(abi.encode(RESULT_TYPEHASH, jobId, termsHash_, outputHash, proofHash));
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

    /// @dev What one batch of results pays out, accumulated in memory and written once per payee.
    struct Payout {
        uint256 nodeAmount;
        uint256 protocolAmount;
        uint256 stake;
        uint256 nAdapters;
        uint256[] adapterIds;
        uint256[] adapterAmounts;
    }

    function _newPayout(uint256 items) private pure returns (Payout memory p) {
        p.adapterIds = new uint256[](items * MAX_ADAPTERS);
        p.adapterAmounts = new uint256[](items * MAX_ADAPTERS);
    }

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

    /// @dev Stores the new job's slot and emits JobSubmitted; one encoding of the terms serves both the stored
    ///      hash (JobSlot.hashOfMemory's definition) and the event.
    function _record(Terms memory t, bytes calldata input, string memory inputCid) private {
        bytes memory enc = abi.encode(t);
        bytes32 h;
        assembly ("memory-safe") {
            h := keccak256(add(enc, 0x40), sub(mload(enc), 0x20))
        }
        _jobs[t.jobId] = JobSlot.pack(h, JobStatus.Open, 0, 0, 0);
        _emitSubmitted(t.jobId, t.adapters[0].id, enc, input, inputCid);
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

    /// @dev Claims one job if it is open, in time, for the caller's base model and its terms match; returns the
    ///      stake to lock (0 when skipped). Fields are read with one calldataload each (no ABI re-validation):
    ///      once the hash of the raw bytes matched the stored hash of the canonical encoding, the bytes are
    ///      canonical, so every field sits at its fixed offset (TermsAt). Before the match only the jobId word
    ///      is read, to find the slot; a dirty one finds no job.
    function _claimItem(Terms calldata t, uint32 nodeId, bytes32 baseModel) private returns (uint256 stake) {
        bytes32 termsHash_ = JobSlot.hashOf(t);
        uint256 jobId = TermsAt.jobId(t);
        uint256 slot = _jobs[jobId];
        if (!slot.matches(termsHash_) || slot.status() != JobStatus.Open) return 0;
        if (block.timestamp >= TermsAt.deadline(t) || TermsAt.baseModel(t) != baseModel) return 0;
        unchecked {
            // submittedAt <= now: it is the block time of the submission, and time does not go back.
            _jobs[jobId] =
                JobSlot.pack(termsHash_, JobStatus.Claimed, nodeId, slot, block.timestamp - TermsAt.submittedAt(t));
        }
        stake = claimStakeFor(TermsAt.price(t));
        emit JobClaimed(jobId, msg.sender);
    }

    /// @dev Accepts one result if the caller holds its job in time; adds its payments to `p`. Returns the
    ///      EIP-712 struct hash of the item (signed whether or not it is accepted) and whether it was. Reads the
    ///      terms' fields as _claimItem does (after the hash matched) and hashes in scratch memory, so a batch
    ///      does not grow memory per item.
    function _settleItem(ResultItem calldata it, uint32 nodeId, Payout memory p)
        private
        returns (bytes32 leaf, bool ok)
    {
        Terms calldata t = it.terms;
        bytes32 termsHash_ = JobSlot.hashOf(t);
        bytes32 outputHash = _outputHash(it);
        bytes32 proofHash = it.proofHash;
        uint256 jobId = TermsAt.jobId(t);
        bytes32 typeHash = RESULT_TYPEHASH;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typeHash)
            mstore(add(m, 0x20), jobId)
            mstore(add(m, 0x40), termsHash_)
            mstore(add(m, 0x60), outputHash)
            mstore(add(m, 0x80), proofHash)
            leaf := keccak256(m, 0xa0)
        }
        uint256 slot = _jobs[jobId];
        if (!slot.matches(termsHash_) || slot.status() != JobStatus.Claimed || slot.nodeId() != nodeId) {
            return (leaf, false);
        }
        if (block.timestamp >= TermsAt.deadline(t)) return (leaf, false);
        unchecked {
            _jobs[jobId] =
                JobSlot.pack(termsHash_, JobStatus.Resulted, nodeId, slot, block.timestamp - TermsAt.submittedAt(t));
        }
        uint256 nodeAmount = _accrue(t, p);
        emit ResultSubmitted(jobId, msg.sender, outputHash, proofHash, nodeAmount);
        return (leaf, true);
    }

    /// @dev Adds an accepted result's payments to the batch: node, adapters, protocol, stake to unlock.
    function _accrue(Terms calldata t, Payout memory p) private view returns (uint256 nodeAmount) {
        uint256 price = TermsAt.price(t);
        uint256 protocolAmount = price * TermsAt.protocolFeeBps(t) / BPS;
        uint256 fees;
        uint256 n = TermsAt.adapterCount(t);
        for (uint256 i; i < n; ++i) {
            uint256 fee = TermsAt.adapterFee(t, i);
            fees += fee;
            _addAdapter(p, TermsAt.adapterId(t, i), fee);
        }
        // The market accepted these terms with price > fees + protocolAmount.
        nodeAmount = price - fees - protocolAmount;
        p.nodeAmount += nodeAmount;
        p.protocolAmount += protocolAmount;
        p.stake += claimStakeFor(price);
    }

    function _outputHash(ResultItem calldata it) private pure returns (bytes32 h) {
        bytes calldata out = it.output;
        uint256 len = out.length;
        if (len != 0) {
            if (len > MAX_INLINE_BYTES) revert PayloadTooLarge(len, MAX_INLINE_BYTES);
            assembly ("memory-safe") {
                let m := mload(0x40)
                calldatacopy(m, out.offset, len)
                h := keccak256(m, len)
            }
            return h;
        }
        _checkCid(it.outputCid);
        h = it.outputHash;
        if (h == bytes32(0)) revert ZeroHash();
    }

    function _addAdapter(Payout memory p, uint256 id, uint256 fee) private pure {
        for (uint256 k; k < p.nAdapters; ++k) {
            if (p.adapterIds[k] == id) {
                p.adapterAmounts[k] += fee;
                return;
            }
        }
        p.adapterIds[p.nAdapters] = id;
        p.adapterAmounts[p.nAdapters] = fee;
        ++p.nAdapters;
    }

    /// @dev Writes a batch's payments: once for the node, once per adapter, once for the treasury; unlocks stake.
    function _pay(Payout memory p) private {
        _holdForNode(msg.sender, p.nodeAmount);
        for (uint256 k; k < p.nAdapters; ++k) {
            if (p.adapterAmounts[k] != 0) _holdForAdapter(p.adapterIds[k], p.adapterAmounts[k]);
        }
        if (p.protocolAmount != 0) _creditTreasury(p.protocolAmount);
        nodeRegistry.unlockStake(msg.sender, p.stake);
    }

    function _checkSignature(bytes32[] memory leaves, bytes calldata signature, address signer) private view {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(_batchDigest(leaves), signature);
        if (err != ECDSA.RecoverError.NoError) revert MalformedSignature();
        if (recovered != signer) revert WrongSigner(recovered, signer);
    }

    function _batchDigest(bytes32[] memory leaves) private view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(BATCH_TYPEHASH, keccak256(abi.encodePacked(leaves)))));
    }

    /// @dev Runs the current call in MarketOps on this contract's state and returns or reverts with its result.
    function _delegateToOps() private {
        address ops = _ops;
        assembly {
            calldatacopy(0, 0, calldatasize())
            let ok := delegatecall(gas(), ops, 0, calldatasize(), 0, 0)
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
