// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "./Test.sol";
import {AdapterRegistry} from "../../src/AdapterRegistry.sol";
import {NodeRegistry} from "../../src/NodeRegistry.sol";
import {JobMarket} from "../../src/JobMarket.sol";
import {ValidatorArbiter} from "../../src/ValidatorArbiter.sol";
import {MarketBase} from "../../src/market/MarketBase.sol";
import {MarketOps} from "../../src/market/MarketOps.sol";
import {
    AdapterRequest,
    AdapterTerm,
    ClaimKey,
    JobRequest,
    JobStatus,
    ResultEntry,
    ResultItem,
    Terms
} from "../../src/lib/JobTypes.sol";
import {Keys} from "./Keys.sol";
import {Vm} from "./Vm.sol";

/// @notice A deployed v2 protocol with one adapter, one staked node and two validators, plus helpers that
///         rebuild a job's terms exactly as the market emitted them.
abstract contract Fixture is Test {
    uint96 internal constant MIN_STAKE = 1 ether;
    uint64 internal constant UNSTAKE_DELAY = 3 days;
    uint16 internal constant PROTOCOL_FEE_BPS = 100;
    uint96 internal constant MIN_CLAIM_STAKE = 0.01 ether;
    uint16 internal constant CLAIM_STAKE_BPS = 15_000; // 1.5 x the price
    uint16 internal constant COMPENSATION_BPS = 1_000;
    uint96 internal constant RELEASE_PENALTY = 0.001 ether;
    uint32 internal constant SERVICE_WINDOW = 10 minutes;
    uint32 internal constant MIN_SERVICE_WINDOW = 30;
    uint32 internal constant CHALLENGE_WINDOW = 1 hours;
    uint96 internal constant DISPUTE_BOND = 0.05 ether;
    uint16 internal constant CHALLENGER_REWARD_BPS = 5_000;
    uint32 internal constant DISPUTE_TIMEOUT = 1 days;
    uint96 internal constant ADAPTER_FEE = 0.001 ether;
    uint256 internal constant PRICE = 0.01 ether;
    uint32 internal constant MAX_TOKENS = 64;

    bytes32 internal constant BASE_MODEL = keccak256("tiny-llama");
    bytes32 internal constant CONTENT_HASH = 0x3dc34324562f4212c00a9347e3eea21acf5eb7263537971a538ee9f688f53654;
    string internal constant CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
    string internal constant PEER_ID = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    uint256 internal constant SIGNER_KEY = 0x5157e4;

    AdapterRegistry internal adapters;
    NodeRegistry internal nodes;
    JobMarket internal market;
    ValidatorArbiter internal arbiter;

    address internal deployer = address(this);
    address internal treasury = makeAddr("treasury");
    address internal publisher = makeAddr("publisher");
    address internal validator = makeAddr("validator");
    address internal validator2 = makeAddr("validator2");
    address internal submitter = makeAddr("submitter");
    address internal operator = makeAddr("operator");
    address internal stranger = makeAddr("stranger");
    address internal signer = vm.addr(SIGNER_KEY);

    uint256 internal adapterId;
    bytes internal input = bytes("Summarise: LoRA adapters are low-rank updates to a frozen base model.");

    function _config() internal view virtual returns (MarketBase.Config memory) {
        return MarketBase.Config({
            owner: deployer,
            adapterRegistry: address(adapters),
            treasury: treasury,
            protocolFeeBps: PROTOCOL_FEE_BPS,
            minClaimStake: MIN_CLAIM_STAKE,
            claimStakeBps: CLAIM_STAKE_BPS,
            compensationBps: COMPENSATION_BPS,
            releasePenalty: RELEASE_PENALTY,
            defaultServiceWindow: SERVICE_WINDOW,
            minServiceWindow: MIN_SERVICE_WINDOW,
            challengeWindow: CHALLENGE_WINDOW,
            disputeBond: DISPUTE_BOND,
            challengerRewardBps: CHALLENGER_REWARD_BPS,
            disputeTimeout: DISPUTE_TIMEOUT,
            minStake: MIN_STAKE,
            unstakeDelay: UNSTAKE_DELAY
        });
    }

    /// @dev A market and its MarketOps, deployed as script/Deploy.s.sol does (MarketOps first, same config).
    function _newMarket(MarketBase.Config memory c) internal returns (JobMarket) {
        return new JobMarket(c, address(new MarketOps(c)));
    }

    function setUp() public virtual {
        adapters = new AdapterRegistry(deployer);
        market = _newMarket(_config());
        nodes = market.nodeRegistry();
        arbiter = new ValidatorArbiter(address(market), address(adapters), 1);
        market.setArbiter(address(arbiter));
        adapters.setValidator(validator, true);
        adapters.setValidator(validator2, true);

        vm.prank(publisher);
        adapterId = adapters.register(CID, CONTENT_HASH, BASE_MODEL, 8, 65_536, ADAPTER_FEE);

        vm.deal(operator, 100 ether);
        vm.prank(operator);
        nodes.register{value: 20 ether}(signer, BASE_MODEL, PEER_ID);

        vm.deal(submitter, 1000 ether);
        vm.deal(validator, 10 ether);
        vm.deal(validator2, 10 ether);
    }

    /// @dev The terms the market builds for a single-adapter job submitted now by `who`.
    function _terms(address who, uint256 jobId, uint256 price, uint64 deadline) internal view returns (Terms memory t) {
        AdapterTerm[] memory a = new AdapterTerm[](1);
        a[0] = AdapterTerm({id: uint32(adapterId), weightBps: 10_000, fee: ADAPTER_FEE, contentHash: CONTENT_HASH});
        t = Terms({
            jobId: uint64(jobId),
            submitter: who,
            price: uint96(price),
            submittedAt: uint40(block.timestamp),
            deadline: uint40(deadline),
            serviceWindow: SERVICE_WINDOW,
            maxTokens: MAX_TOKENS,
            protocolFeeBps: market.protocolFeeBps(),
            baseModel: BASE_MODEL,
            inputHash: keccak256(input),
            adapters: a
        });
    }

    function _submit() internal returns (Terms memory) {
        return _submitAs(submitter, PRICE, uint64(block.timestamp + 1 hours));
    }

    function _submitAs(address who, uint256 price, uint64 deadline) internal returns (Terms memory t) {
        vm.prank(who);
        uint256 jobId = market.submitJob{value: price}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, deadline);
        t = _terms(who, jobId, price, deadline);
    }

    function _claim(Terms memory t) internal {
        vm.prank(operator);
        market.claimJob(_key(t));
    }

    function _item(Terms memory t, bytes memory output) internal pure returns (ResultItem memory it) {
        it = ResultItem({terms: t, output: output, outputCid: "", outputHash: bytes32(0), proofHash: bytes32(0)});
    }

    /// @dev The EIP-712 digest of a batch, built the way a node does (struct hashes of each result).
    function _batchDigest(ResultItem[] memory items) internal view returns (bytes32) {
        bytes32[] memory leaves = new bytes32[](items.length);
        for (uint256 i; i < items.length; ++i) {
            bytes32 outputHash = items[i].output.length != 0 ? keccak256(items[i].output) : items[i].outputHash;
            leaves[i] = keccak256(
                abi.encode(
                    market.RESULT_TYPEHASH(),
                    items[i].terms.jobId,
                    market.hashTerms(items[i].terms),
                    outputHash,
                    items[i].proofHash
                )
            );
        }
        bytes32 structHash = keccak256(abi.encode(market.BATCH_TYPEHASH(), keccak256(abi.encodePacked(leaves))));
        return keccak256(abi.encodePacked("\x19\x01", market.domainSeparator(), structHash));
    }

    function _signBatch(uint256 key, ResultItem[] memory items) internal view returns (bytes memory) {
        return _signDigest(key, _batchDigest(items));
    }

    function _signDigest(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _output(uint256 length) internal pure returns (bytes memory out) {
        out = new bytes(length);
        for (uint256 i; i < length; ++i) {
            // forge-lint: disable-next-line(unsafe-typecast)
            out[i] = bytes1(uint8(0x41 + i % 26));
        }
    }

    function _complete(Terms memory t, bytes memory output) internal {
        ResultItem memory it = _item(t, output);
        ResultItem[] memory one = new ResultItem[](1);
        one[0] = it;
        bytes memory sig = _signBatch(SIGNER_KEY, one);
        vm.prank(operator);
        market.submitResult(_entry(it), sig);
    }

    /// @dev Submits a request and returns the terms decoded from its JobSubmitted event (what a node reads).
    function _request(address who, uint256 price, JobRequest memory req, bytes memory in_, string memory cid, bytes32 h)
        internal
        returns (Terms memory t)
    {
        vm.recordLogs();
        vm.prank(who);
        market.submitRequest{value: price}(req, in_, cid, h);
        t = _lastSubmitted();
    }

    /// @dev The terms of the last JobSubmitted among the logs recorded since vm.recordLogs().
    function _lastSubmitted() internal returns (Terms memory t) {
        Vm.Log[] memory logs = vm.getRecordedLogs();
        bytes32 topic = MarketBase.JobSubmitted.selector;
        for (uint256 i = logs.length; i > 0; --i) {
            if (logs[i - 1].emitter == address(market) && logs[i - 1].topics[0] == topic) {
                (t,,) = abi.decode(logs[i - 1].data, (Terms, bytes, string));
                return t;
            }
        }
        fail("no JobSubmitted");
    }

    function _req1(uint256 id, uint96 maxFee, uint64 deadline) internal pure returns (JobRequest memory req) {
        req.adapters = new AdapterRequest[](1);
        req.adapters[0] = AdapterRequest({id: uint32(id), weightBps: 10_000, maxFee: maxFee});
        req.maxTokens = MAX_TOKENS;
        req.deadline = deadline;
    }

    function _items(Terms[] memory ts, bytes memory output) internal pure returns (ResultItem[] memory items) {
        items = new ResultItem[](ts.length);
        for (uint256 i; i < ts.length; ++i) {
            items[i] = _item(ts[i], output);
        }
    }

    function _key(Terms memory t) internal pure returns (ClaimKey memory) {
        return Keys.claimKey(t);
    }

    function _entry(ResultItem memory it) internal pure returns (ResultEntry memory) {
        return Keys.entry(it);
    }

    /// @dev The compact keys claimJobs takes (see Keys).
    function _keys(Terms[] memory ts) internal pure returns (ClaimKey[] memory) {
        return Keys.claimKeys(ts);
    }

    /// @dev The submitResults entries for full-terms items (see Keys).
    function _entries(ResultItem[] memory items) internal pure returns (ResultEntry[] memory) {
        return Keys.entries(items);
    }

    function _one(Terms memory t) internal pure returns (Terms[] memory ts) {
        ts = new Terms[](1);
        ts[0] = t;
    }

    /// @dev Posts a signed batch as `operator` (with SIGNER_KEY) and returns how many settled.
    function _postBatch(ResultItem[] memory items) internal returns (uint256) {
        bytes memory sig = _signBatch(SIGNER_KEY, items);
        vm.prank(operator);
        return market.submitResults(_entries(items), sig);
    }

    /// @dev Registers a second node (operator2 with SIGNER2_KEY) on the same base model.
    function _registerNode(address op, uint256 key, uint256 stake) internal {
        vm.deal(op, stake + 10 ether);
        vm.prank(op);
        nodes.register{value: stake}(vm.addr(key), BASE_MODEL, PEER_ID);
    }

    function _status(uint256 jobId) internal view returns (uint256) {
        (JobStatus s,,,) = market.jobState(jobId);
        return uint256(s);
    }
}
