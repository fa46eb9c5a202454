// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

import {Fixture} from "./utils/Fixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {MarketBase} from "../src/market/MarketBase.sol";
import {MarketOps} from "../src/market/MarketOps.sol";
import {
    AdapterRequest,
    AdapterTerm,
    ClaimKey,
    JobRequest,
    JobStatus,
    ResultEntry,
    ResultItem,
    Terms
} from "../src/lib/JobTypes.sol";

/// @dev Rejects every payment (a submitter or node that cannot receive ETH).
contract Rejecter {
    receive() external payable {
        revert("no");
    }

    function call(address to, bytes calldata data) external payable returns (bytes memory) {
        (bool ok, bytes memory ret) = to.call{value: msg.value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
        return ret;
    }
}

/// @dev Tries to withdraw again from inside the payment it receives.
contract Reenterer {
    JobMarket internal immutable market;
    bool internal entered;

    constructor(JobMarket m) {
        market = m;
    }

    function submit(uint256 adapterId, uint96 fee, bytes calldata input, uint64 deadline) external payable {
        market.submitJob{value: msg.value}(adapterId, fee, input, 64, deadline);
    }

    function cancel(Terms calldata t) external {
        market.cancel(t);
    }

    function withdraw() external {
        market.withdraw();
    }

    receive() external payable {
        if (!entered) {
            entered = true;
            market.withdraw();
        }
    }
}

contract JobMarketTest is Fixture {
    string internal constant INPUT_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    bytes32 internal constant INPUT_HASH = keccak256("large input");
    uint256 internal constant SIGNER2_KEY = 0xb0b2;
    address internal operator2 = makeAddr("operator2");

    uint256 internal constant NODE_AMOUNT = PRICE - ADAPTER_FEE - PRICE * PROTOCOL_FEE_BPS / 10_000;
    uint256 internal constant STAKE = PRICE * CLAIM_STAKE_BPS / 10_000; // 0.015 ether > MIN_CLAIM_STAKE
    uint256 internal constant COMP = PRICE * COMPENSATION_BPS / 10_000;

    function _deadline() internal view returns (uint64) {
        return uint64(block.timestamp + 1 hours);
    }

    // ---------------------------------------------------------------- constructor, parameters, owner

    function test_constructor_sets_parameters() public view {
        assertEq(address(market.adapterRegistry()), address(adapters), "adapters");
        assertEq(nodes.market(), address(market), "registry's market is its creator");
        assertEq(nodes.minStake(), MIN_STAKE, "min stake");
        assertEq(nodes.unstakeDelay(), UNSTAKE_DELAY, "unstake delay");
        assertEq(market.treasury(), treasury, "treasury");
        assertEq(market.protocolFeeBps(), PROTOCOL_FEE_BPS, "fee");
        assertEq(market.minClaimStake(), MIN_CLAIM_STAKE, "min claim stake");
        assertEq(market.claimStakeBps(), CLAIM_STAKE_BPS, "claim stake bps");
        assertEq(market.compensationBps(), COMPENSATION_BPS, "compensation");
        assertEq(market.releasePenalty(), RELEASE_PENALTY, "release penalty");
        assertEq(market.defaultServiceWindow(), SERVICE_WINDOW, "service window");
        assertEq(market.minServiceWindow(), MIN_SERVICE_WINDOW, "min service window");
        assertEq(market.challengeWindow(), CHALLENGE_WINDOW, "challenge window");
        assertEq(market.disputeBond(), DISPUTE_BOND, "bond");
        assertEq(market.challengerRewardBps(), CHALLENGER_REWARD_BPS, "reward");
        assertEq(market.disputeTimeout(), DISPUTE_TIMEOUT, "timeout");
        assertEq(market.owner(), deployer, "owner");
        assertEq(address(market.arbiter()), address(arbiter), "arbiter");
        assertEq(market.jobCount(), 0, "no jobs");
    }

    function _expectConfigRevert(MarketBase.Config memory c, bytes memory err) internal {
        // MarketOps from valid parameters: the market's own checks run first and are what this tests.
        address ops = address(new MarketOps(_config()));
        vm.expectRevert(err);
        new JobMarket(c, ops);
    }

    function _invalid(string memory what) internal pure returns (bytes memory) {
        return abi.encodeWithSelector(MarketBase.InvalidConfig.selector, what);
    }

    function test_constructor_reverts_on_bad_parameters() public {
        MarketBase.Config memory c = _config();
        c.owner = address(0);
        // Ownable rejects a zero owner before the market's own checks run.
        _expectConfigRevert(c, abi.encodeWithSelector(Ownable.OwnableInvalidOwner.selector, address(0)));
        c = _config();
        c.adapterRegistry = address(0);
        _expectConfigRevert(c, abi.encodeWithSelector(MarketBase.ZeroAddress.selector));
        c = _config();
        c.treasury = address(0);
        _expectConfigRevert(c, abi.encodeWithSelector(MarketBase.ZeroAddress.selector));
        c = _config();
        c.protocolFeeBps = 1_001;
        _expectConfigRevert(
            c, abi.encodeWithSelector(MarketBase.ProtocolFeeTooHigh.selector, uint16(1_001), uint16(1_000))
        );
        c = _config();
        c.minClaimStake = 0;
        _expectConfigRevert(c, _invalid("minClaimStake must be > 0"));
        c = _config();
        c.claimStakeBps = 999;
        _expectConfigRevert(c, _invalid("claimStakeBps must cover the protocol fee"));
        c = _config();
        c.compensationBps = 1_001;
        _expectConfigRevert(c, _invalid("compensationBps above 10%"));
        c = _config();
        c.releasePenalty = MIN_CLAIM_STAKE + 1;
        _expectConfigRevert(c, _invalid("releasePenalty above minClaimStake"));
        c = _config();
        c.minServiceWindow = 0;
        _expectConfigRevert(c, _invalid("service windows"));
        c = _config();
        c.defaultServiceWindow = MIN_SERVICE_WINDOW - 1;
        _expectConfigRevert(c, _invalid("service windows"));
        c = _config();
        c.challengeWindow = 0;
        _expectConfigRevert(c, _invalid("challengeWindow"));
        c = _config();
        c.challengeWindow = 7 days + 1;
        _expectConfigRevert(c, _invalid("challengeWindow"));
        c = _config();
        c.challengerRewardBps = 10_001;
        _expectConfigRevert(c, _invalid("challengerRewardBps"));
        c = _config();
        c.disputeTimeout = 0;
        _expectConfigRevert(c, _invalid("disputeTimeout"));
        c = _config();
        c.unstakeDelay = uint64(CHALLENGE_WINDOW) + DISPUTE_TIMEOUT;
        _expectConfigRevert(c, _invalid("unstakeDelay must exceed challengeWindow + disputeTimeout"));
        // The boundary values are accepted.
        c = _config();
        c.unstakeDelay = uint64(CHALLENGE_WINDOW) + DISPUTE_TIMEOUT + 1;
        c.challengeWindow = 7 days;
        c.unstakeDelay = 7 days + DISPUTE_TIMEOUT + 1;
        c.protocolFeeBps = 1_000;
        c.compensationBps = 1_000;
        c.releasePenalty = MIN_CLAIM_STAKE;
        c.challengerRewardBps = 10_000;
        c.defaultServiceWindow = MIN_SERVICE_WINDOW;
        JobMarket m = _newMarket(c);
        assertEq(m.challengeWindow(), 7 days, "max window");
    }

    function test_receive_only_from_node_registry() public {
        vm.deal(stranger, 1 ether);
        vm.prank(stranger);
        (bool ok, bytes memory ret) = address(market).call{value: 1}("");
        assertFalse(ok, "stranger payment accepted");
        assertEq(ret, abi.encodeWithSelector(MarketBase.UnexpectedPayment.selector, stranger), "reason");
        vm.deal(address(nodes), 1 ether);
        vm.prank(address(nodes));
        (ok,) = address(market).call{value: 1}("");
        assertTrue(ok, "registry payment refused");
    }

    function test_claimStakeFor_scales_and_has_a_floor() public view {
        assertEq(market.claimStakeFor(0), MIN_CLAIM_STAKE, "floor at zero");
        assertEq(market.claimStakeFor(0.001 ether), MIN_CLAIM_STAKE, "floor");
        assertEq(market.claimStakeFor(1 ether), 1.5 ether, "scaled");
    }

    function test_setProtocolFee() public {
        vm.expectEmit(address(market));
        emit MarketBase.ProtocolFeeUpdated(250);
        market.setProtocolFee(250);
        assertEq(market.protocolFeeBps(), 250, "fee");
        Terms memory t = _submit();
        assertEq(t.protocolFeeBps, 250, "new jobs carry the new fee");
        assertTrue(market.termsMatch(t), "terms with the new fee");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.ProtocolFeeTooHigh.selector, uint16(1_001), uint16(1_000)));
        market.setProtocolFee(1_001);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        market.setProtocolFee(0);
    }

    function test_setProtocolFee_does_not_change_submitted_jobs() public {
        Terms memory t = _submit();
        market.setProtocolFee(1_000);
        _claim(t);
        _complete(t, "ok");
        (uint256 w,) = market.adapterFees(adapterId);
        assertEq(w, 0, "nothing matured yet");
        assertEq(market.heldOf(operator), NODE_AMOUNT, "old fee applies");
    }

    function test_setTreasury_moves_accrued_to_old_treasury() public {
        Terms memory t = _submit();
        _claim(t);
        _complete(t, "ok");
        uint256 accrued = PRICE * PROTOCOL_FEE_BPS / 10_000;
        assertEq(market.balanceOf(treasury), accrued, "accrued");
        vm.expectEmit(true, false, false, false, address(market));
        emit MarketBase.TreasuryUpdated(stranger);
        market.setTreasury(stranger);
        assertEq(market.treasury(), stranger, "treasury");
        assertEq(market.balanceOf(treasury), accrued, "old treasury keeps what it earned");
        assertEq(market.balanceOf(stranger), 0, "new treasury starts at zero");
        vm.expectRevert(MarketBase.ZeroAddress.selector);
        market.setTreasury(address(0));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        market.setTreasury(stranger);
    }

    function test_setArbiter() public {
        vm.expectEmit(true, false, false, false, address(market));
        emit MarketBase.ArbiterUpdated(stranger);
        market.setArbiter(stranger);
        assertEq(address(market.arbiter()), stranger, "arbiter");
        vm.expectRevert(MarketBase.ZeroAddress.selector);
        market.setArbiter(address(0));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        market.setArbiter(stranger);
    }

    function test_ownership_is_two_step() public {
        market.transferOwnership(stranger);
        assertEq(market.owner(), deployer, "not yet");
        assertEq(market.pendingOwner(), stranger, "pending");
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, operator));
        vm.prank(operator);
        market.acceptOwnership();
        vm.prank(stranger);
        market.acceptOwnership();
        assertEq(market.owner(), stranger, "accepted");
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, deployer));
        market.setProtocolFee(0);
    }

    // ---------------------------------------------------------------- submitJob

    function test_submitJob_escrows_and_emits_terms() public {
        uint64 deadline = _deadline();
        Terms memory expected = _terms(submitter, 1, PRICE, deadline);
        vm.expectEmit(address(market));
        emit MarketBase.JobSubmitted(1, submitter, adapterId, expected, input, "");
        vm.prank(submitter);
        uint256 jobId = market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, deadline);
        assertEq(jobId, 1, "first id");
        assertEq(market.jobCount(), 1, "count");
        assertEq(address(market).balance, PRICE, "escrow");
        (JobStatus s, address node, uint256 offset, bytes32 prefix) = market.jobState(jobId);
        assertEq(uint256(s), uint256(JobStatus.Open), "open");
        assertEq(node, address(0), "no claimant");
        assertEq(offset, 0, "no time");
        bytes32 h = market.hashTerms(expected);
        assertEq(prefix, h & ~bytes32(uint256(type(uint64).max)), "stored prefix");
        assertTrue(market.termsMatch(expected), "terms match");
        // The hash's definition (TermsHash), written out: body, rest, then head + rest + adapter words.
        AdapterTerm memory a = expected.adapters[0];
        bytes32 body = keccak256(
            abi.encode(
                expected.submitter,
                expected.serviceWindow,
                expected.maxTokens,
                expected.inputHash,
                a.weightBps,
                a.contentHash
            )
        );
        uint256 head = (uint256(expected.jobId) << 192) | (uint256(expected.price) << 96)
            | (uint256(expected.submittedAt) << 56) | (uint256(expected.deadline) << 16) | expected.protocolFeeBps;
        bytes32 rest = keccak256(abi.encode(expected.baseModel, body));
        assertEq(h, keccak256(abi.encode(head, rest, (uint256(a.id) << 96) | a.fee)), "hash definition");
    }

    function test_submitJob_accepts_a_lower_registry_fee_and_records_it() public {
        vm.prank(publisher);
        adapters.setFee(adapterId, 0);
        vm.recordLogs();
        vm.prank(submitter);
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, _deadline());
        Terms memory t = _lastSubmitted();
        assertEq(t.adapters[0].fee, 0, "the registry's fee, not the max");
        assertEq(t.adapters[0].contentHash, CONTENT_HASH, "content hash");
        assertEq(t.serviceWindow, SERVICE_WINDOW, "default window");
        assertEq(t.inputHash, keccak256(input), "input hash");
    }

    function test_submitJob_reverts() public {
        uint64 d = _deadline();
        vm.startPrank(submitter);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.UnknownAdapter.selector, uint256(type(uint32).max) + 1));
        market.submitJob{value: PRICE}(uint256(type(uint32).max) + 1, ADAPTER_FEE, input, MAX_TOKENS, d);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.UnknownAdapter.selector, 99));
        market.submitJob{value: PRICE}(99, ADAPTER_FEE, input, MAX_TOKENS, d);
        vm.expectRevert(
            abi.encodeWithSelector(MarketBase.AdapterFeeAboveMax.selector, adapterId, ADAPTER_FEE, ADAPTER_FEE - 1)
        );
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE - 1, input, MAX_TOKENS, d);
        vm.expectRevert(MarketBase.ZeroMaxTokens.selector);
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, 0, d);
        vm.expectRevert(
            abi.encodeWithSelector(MarketBase.DeadlineInPast.selector, uint64(block.timestamp), block.timestamp)
        );
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, uint64(block.timestamp));
        uint64 far = uint64(block.timestamp + 30 days + 1);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.DeadlineTooFar.selector, far, block.timestamp + 30 days));
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, far);
        vm.expectRevert(MarketBase.EmptyInput.selector);
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, "", MAX_TOKENS, d);
        bytes memory big = new bytes(16 * 1024 + 1);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.PayloadTooLarge.selector, big.length, 16 * 1024));
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, big, MAX_TOKENS, d);
        uint256 protocolAmount = ADAPTER_FEE * PROTOCOL_FEE_BPS / 10_000;
        vm.expectRevert(
            abi.encodeWithSelector(MarketBase.PriceTooLow.selector, ADAPTER_FEE, ADAPTER_FEE, protocolAmount)
        );
        market.submitJob{value: ADAPTER_FEE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, d);
        vm.stopPrank();

        uint256 huge = uint256(type(uint96).max) + 1;
        vm.deal(stranger, huge);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.PriceTooHigh.selector, huge));
        vm.prank(stranger);
        market.submitJob{value: huge}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, d);

        vm.prank(publisher);
        adapters.retire(adapterId);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.AdapterRetired.selector, adapterId));
        vm.prank(submitter);
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, d);
        assertEq(market.jobCount(), 0, "nothing submitted");
    }

    function test_submitJob_limits_are_inclusive() public {
        bytes memory maxInput = new bytes(16 * 1024);
        maxInput[0] = 0x01;
        vm.prank(submitter);
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, maxInput, 1, uint64(block.timestamp + 30 days));
        assertEq(market.jobCount(), 1, "max size and duration accepted");
        uint256 p = market.minPrice(adapterId);
        vm.prank(submitter);
        market.submitJob{value: p}(adapterId, ADAPTER_FEE, input, 1, uint64(block.timestamp + 1));
        assertEq(market.jobCount(), 2, "minPrice accepted");
    }

    // ---------------------------------------------------------------- submitRequest

    function _addAdapter(address pub, bytes32 model, uint96 fee) internal returns (uint256 id) {
        vm.prank(pub);
        id = adapters.register(CID, keccak256(abi.encode(pub, fee, model)), model, 4, 1000, fee);
    }

    function test_submitRequest_multi_adapter_with_weights() public {
        address pub2 = makeAddr("pub2");
        uint256 a2 = _addAdapter(pub2, BASE_MODEL, 0.002 ether);
        JobRequest memory req;
        req.adapters = new AdapterRequest[](2);
        req.adapters[0] = AdapterRequest({id: uint32(adapterId), weightBps: 7_000, maxFee: ADAPTER_FEE});
        req.adapters[1] = AdapterRequest({id: uint32(a2), weightBps: 3_000, maxFee: 1 ether});
        req.maxTokens = 32;
        req.deadline = _deadline();
        req.serviceWindow = 120;
        Terms memory t = _request(submitter, PRICE, req, input, "", bytes32(0));
        assertEq(t.adapters.length, 2, "two adapters");
        assertEq(t.adapters[0].weightBps, 7_000, "weight 0");
        assertEq(t.adapters[1].weightBps, 3_000, "weight 1");
        assertEq(t.adapters[1].fee, 0.002 ether, "fee snapshot");
        assertEq(t.serviceWindow, 120, "own window");
        assertEq(t.maxTokens, 32, "max tokens");
        assertTrue(market.termsMatch(t), "match");
        _claim(t);
        _complete(t, "merged");
        uint256 nodeAmount = PRICE - ADAPTER_FEE - 0.002 ether - PRICE / 100;
        assertEq(market.heldOf(operator), nodeAmount, "node's share");
        (, uint256 h1) = market.adapterFees(adapterId);
        (, uint256 h2) = market.adapterFees(a2);
        assertEq(h1, ADAPTER_FEE, "adapter 1 held");
        assertEq(h2, 0.002 ether, "adapter 2 held");
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        market.withdrawAdapterFees(a2);
        assertEq(market.balanceOf(pub2), 0.002 ether, "publisher 2 paid");
    }

    function test_submitRequest_input_by_cid_and_default_window() public {
        JobRequest memory req = _req1(adapterId, ADAPTER_FEE, _deadline());
        Terms memory t = _request(submitter, PRICE, req, "", INPUT_CID, INPUT_HASH);
        assertEq(t.inputHash, INPUT_HASH, "given hash");
        assertEq(t.serviceWindow, SERVICE_WINDOW, "0 = default");
    }

    function test_submitRequest_event_encodes_cid_and_odd_lengths() public {
        uint64 d = _deadline();
        JobRequest memory req = _req1(adapterId, ADAPTER_FEE, d);
        Terms memory expected = _terms(submitter, 1, PRICE, d);
        expected.inputHash = INPUT_HASH;
        vm.expectEmit(address(market));
        emit MarketBase.JobSubmitted(1, submitter, adapterId, expected, "", INPUT_CID);
        vm.prank(submitter);
        market.submitRequest{value: PRICE}(req, "", INPUT_CID, INPUT_HASH);
        // An input of 33 bytes (padding to 64) after a long one (dirty memory must not leak into the padding).
        bytes memory odd = new bytes(33);
        odd[32] = 0x7f;
        expected = _terms(submitter, 2, PRICE, d);
        expected.inputHash = keccak256(odd);
        vm.expectEmit(address(market));
        emit MarketBase.JobSubmitted(2, submitter, adapterId, expected, odd, "");
        vm.prank(submitter);
        market.submitRequest{value: PRICE}(req, odd, "", bytes32(0));
    }

    function test_submitRequest_reverts() public {
        uint64 d = _deadline();
        JobRequest memory req = _req1(adapterId, ADAPTER_FEE, d);
        vm.startPrank(submitter);
        req.serviceWindow = MIN_SERVICE_WINDOW - 1;
        vm.expectRevert(
            abi.encodeWithSelector(
                MarketBase.ServiceWindowTooShort.selector, MIN_SERVICE_WINDOW - 1, MIN_SERVICE_WINDOW
            )
        );
        market.submitRequest{value: PRICE}(req, input, "", bytes32(0));
        req.serviceWindow = 0;
        vm.expectRevert(MarketBase.InvalidCid.selector);
        market.submitRequest{value: PRICE}(req, input, INPUT_CID, bytes32(0));
        vm.expectRevert(MarketBase.EmptyInput.selector);
        market.submitRequest{value: PRICE}(req, "", "", INPUT_HASH);
        vm.expectRevert(MarketBase.ZeroHash.selector);
        market.submitRequest{value: PRICE}(req, "", INPUT_CID, bytes32(0));
        bytes memory longCid = new bytes(129);
        vm.expectRevert(MarketBase.InvalidCid.selector);
        market.submitRequest{value: PRICE}(req, "", string(longCid), INPUT_HASH);

        // Adapter lists: empty, too many, duplicate, zero weight.
        JobRequest memory bad = _req1(adapterId, ADAPTER_FEE, d);
        bad.adapters = new AdapterRequest[](0);
        vm.expectRevert(MarketBase.BadAdapterList.selector);
        market.submitRequest{value: PRICE}(bad, input, "", bytes32(0));
        bad.adapters = new AdapterRequest[](5);
        vm.expectRevert(MarketBase.BadAdapterList.selector);
        market.submitRequest{value: PRICE}(bad, input, "", bytes32(0));
        bad.adapters = new AdapterRequest[](2);
        bad.adapters[0] = AdapterRequest({id: uint32(adapterId), weightBps: 5_000, maxFee: ADAPTER_FEE});
        bad.adapters[1] = bad.adapters[0];
        vm.expectRevert(MarketBase.BadAdapterList.selector);
        market.submitRequest{value: PRICE}(bad, input, "", bytes32(0));
        bad.adapters = new AdapterRequest[](1);
        bad.adapters[0] = AdapterRequest({id: uint32(adapterId), weightBps: 0, maxFee: ADAPTER_FEE});
        vm.expectRevert(MarketBase.BadAdapterList.selector);
        market.submitRequest{value: PRICE}(bad, input, "", bytes32(0));
        vm.stopPrank();

        uint256 other = _addAdapter(publisher, keccak256("other-model"), 0);
        bad.adapters = new AdapterRequest[](2);
        bad.adapters[0] = AdapterRequest({id: uint32(adapterId), weightBps: 5_000, maxFee: ADAPTER_FEE});
        bad.adapters[1] = AdapterRequest({id: uint32(other), weightBps: 5_000, maxFee: 0});
        vm.expectRevert(abi.encodeWithSelector(MarketBase.BaseModelMismatch.selector, other));
        vm.prank(submitter);
        market.submitRequest{value: PRICE}(bad, input, "", bytes32(0));
        assertEq(market.jobCount(), 0, "nothing submitted");
    }

    function test_submitRequest_four_adapters_each_publisher_paid() public {
        JobRequest memory req;
        req.adapters = new AdapterRequest[](4);
        address[4] memory pubs;
        uint256[4] memory ids;
        for (uint256 i; i < 4; ++i) {
            pubs[i] = makeAddr(string.concat("pub", vm.toString(i)));
            ids[i] = _addAdapter(pubs[i], BASE_MODEL, uint96(1000 * (i + 1)));
            req.adapters[i] = AdapterRequest({id: uint32(ids[i]), weightBps: 2_500, maxFee: uint96(1000 * (i + 1))});
        }
        req.maxTokens = 8;
        req.deadline = _deadline();
        Terms memory t = _request(submitter, PRICE, req, input, "", bytes32(0));
        _claim(t);
        _complete(t, "four");
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        for (uint256 i; i < 4; ++i) {
            market.withdrawAdapterFees(ids[i]);
            assertEq(market.balanceOf(pubs[i]), 1000 * (i + 1), "each publisher its fee");
        }
    }

    // ---------------------------------------------------------------- cancel

    function test_cancel_refunds_open_job() public {
        Terms memory t = _submit();
        vm.expectEmit(address(market));
        emit MarketBase.JobCancelled(t.jobId);
        vm.prank(submitter);
        market.cancel(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Cancelled), "cancelled");
        assertEq(market.balanceOf(submitter), PRICE, "refund credited");
        uint256 before = submitter.balance;
        vm.prank(submitter);
        market.withdraw();
        assertEq(submitter.balance, before + PRICE, "refund paid");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Cancelled));
        vm.prank(submitter);
        market.cancel(t);
    }

    function test_cancel_reverts() public {
        Terms memory t = _submit();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotSubmitter.selector, t.jobId, stranger));
        vm.prank(stranger);
        market.cancel(t);
        // The stranger cannot pretend to be the submitter: the terms would not match.
        Terms memory forged = _terms(stranger, t.jobId, PRICE, t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        vm.prank(stranger);
        market.cancel(forged);
        Terms memory unknown = _terms(submitter, 42, PRICE, t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.UnknownJob.selector, 42));
        vm.prank(submitter);
        market.cancel(unknown);
        _claim(t);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Claimed));
        vm.prank(submitter);
        market.cancel(t);
    }

    // ---------------------------------------------------------------- claimJob / claimJobs

    function test_claimJob_locks_stake() public {
        Terms memory t = _submit();
        vm.expectEmit(address(market));
        emit MarketBase.JobClaimed(t.jobId, operator);
        _claim(t);
        (JobStatus s, address node, uint256 offset,) = market.jobState(t.jobId);
        assertEq(uint256(s), uint256(JobStatus.Claimed), "claimed");
        assertEq(node, operator, "claimant");
        assertEq(offset, 0, "claimed at submission time");
        assertEq(nodes.getNode(operator).locked, STAKE, "stake locked");
        assertEq(nodes.freeStake(operator), 20 ether - STAKE, "free stake");
    }

    function test_claimJob_reverts() public {
        Terms memory t = _submit();
        Terms memory wrong = _terms(submitter, t.jobId, PRICE + 1, t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        _claim(wrong);
        Terms memory unknown = _terms(submitter, 7, PRICE, t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.UnknownJob.selector, 7));
        _claim(unknown);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NodeNotEligible.selector, stranger));
        vm.prank(stranger);
        market.claimJob(_key(t));

        // Another base model: the key is hashed with the node's own model, so it names no job.
        _registerNode(operator2, SIGNER2_KEY, 2 ether);
        vm.prank(operator2);
        nodes.update(vm.addr(SIGNER2_KEY), keccak256("other-model"), PEER_ID);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        vm.prank(operator2);
        market.claimJob(_key(t));

        _claim(t);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Claimed));
        _claim(t);

        Terms memory late = _submit();
        vm.warp(late.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.DeadlinePassed.selector, late.jobId, late.deadline));
        _claim(late);
    }

    function test_claimJob_needs_free_stake_and_an_active_node() public {
        _registerNode(operator2, SIGNER2_KEY, MIN_STAKE);
        Terms memory t = _submitAs(submitter, 1 ether, _deadline()); // stake 1.5 ether > 1 ether
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InsufficientFreeStake.selector, 1.5 ether, MIN_STAKE));
        vm.prank(operator2);
        market.claimJob(_key(t));
        vm.prank(operator2);
        nodes.requestUnstake(1);
        Terms memory small = _submit();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NodeNotEligible.selector, operator2));
        vm.prank(operator2);
        market.claimJob(_key(small));
    }

    function test_claimJobs_skips_taken_and_stale_jobs() public {
        Terms[] memory ts = new Terms[](5);
        ts[0] = _submit();
        ts[1] = _submit();
        ts[2] = _submit();
        ts[3] = _terms(submitter, ts[2].jobId, PRICE + 1, ts[2].deadline); // wrong terms
        ts[4] = ts[0]; // duplicate
        _registerNode(operator2, SIGNER2_KEY, 2 ether);
        vm.prank(operator2);
        market.claimJob(_key(ts[1])); // a rival got there first
        vm.prank(operator);
        uint256 claimed = market.claimJobs(_keys(ts));
        assertEq(claimed, 2, "jobs 1 and 3");
        assertEq(nodes.getNode(operator).locked, 2 * STAKE, "one stake per claimed job");
        (, address n0,,) = market.jobState(ts[0].jobId);
        (, address n1,,) = market.jobState(ts[1].jobId);
        (, address n2,,) = market.jobState(ts[2].jobId);
        assertEq(n0, operator, "0 ours");
        assertEq(n1, operator2, "1 the rival's");
        assertEq(n2, operator, "2 ours");
    }

    function test_claimJobs_reverts() public {
        vm.expectRevert(MarketBase.EmptyBatch.selector);
        vm.prank(operator);
        market.claimJobs(_keys(new Terms[](0)));
        vm.expectRevert(abi.encodeWithSelector(MarketBase.BatchTooLarge.selector, 257, 256));
        vm.prank(operator);
        market.claimJobs(_keys(new Terms[](257)));
        Terms memory t = _submit();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NodeNotEligible.selector, stranger));
        vm.prank(stranger);
        market.claimJobs(_keys(_one(t)));
        _claim(t);
        vm.expectRevert(MarketBase.NothingClaimed.selector);
        vm.prank(operator);
        market.claimJobs(_keys(_one(t)));
        Terms memory late = _submit();
        vm.warp(late.deadline);
        vm.expectRevert(MarketBase.NothingClaimed.selector);
        vm.prank(operator);
        market.claimJobs(_keys(_one(late)));
    }

    function test_claimJobs_skips_other_base_model() public {
        uint256 other = _addAdapter(publisher, keccak256("other-model"), 0);
        JobRequest memory req = _req1(other, 0, _deadline());
        Terms memory t = _request(submitter, PRICE, req, input, "", bytes32(0));
        vm.expectRevert(MarketBase.NothingClaimed.selector);
        vm.prank(operator);
        market.claimJobs(_keys(_one(t)));
    }

    // ---------------------------------------------------------------- submitResult / submitResults

    function test_submitResult_holds_payments_for_the_challenge_window() public {
        Terms memory t = _submit();
        _claim(t);
        vm.warp(block.timestamp + 100);
        bytes memory out = _output(256);
        vm.expectEmit(address(market));
        emit MarketBase.ResultSubmitted(t.jobId, operator, keccak256(out), bytes32(0), NODE_AMOUNT);
        _complete(t, out);
        (JobStatus s, address node, uint256 offset,) = market.jobState(t.jobId);
        assertEq(uint256(s), uint256(JobStatus.Resulted), "resulted");
        assertEq(node, operator, "node");
        assertEq(offset, 100, "result offset");
        assertEq(nodes.getNode(operator).locked, 0, "stake unlocked");
        assertEq(market.heldOf(operator), NODE_AMOUNT, "held");
        assertEq(market.balanceOf(operator), 0, "not yet withdrawable");
        (uint256 w, uint256 h) = market.adapterFees(adapterId);
        assertEq(w, 0, "adapter: nothing withdrawable");
        assertEq(h, ADAPTER_FEE, "adapter held");
        assertEq(market.balanceOf(treasury), PRICE / 100, "protocol fee accrued at once");
        vm.expectRevert(MarketBase.NothingToWithdraw.selector);
        vm.prank(operator);
        market.withdraw();

        // Matures at the end of the epoch after next: (t / W + 2) * W.
        uint256 maturesAt = (block.timestamp / CHALLENGE_WINDOW + 2) * CHALLENGE_WINDOW;
        assertGe(maturesAt, block.timestamp + CHALLENGE_WINDOW, "held at least one window");
        vm.warp(maturesAt - 1);
        assertEq(market.balanceOf(operator), 0, "still held");
        vm.warp(maturesAt);
        assertEq(market.balanceOf(operator), NODE_AMOUNT, "matured");
        assertEq(market.heldOf(operator), 0, "nothing held");
        uint256 before = operator.balance;
        vm.expectEmit(address(market));
        emit MarketBase.Withdrawn(operator, NODE_AMOUNT);
        vm.prank(operator);
        market.withdraw();
        assertEq(operator.balance, before + NODE_AMOUNT, "paid");
        assertEq(market.balanceOf(operator), 0, "drained");
    }

    function test_submitResult_output_by_cid() public {
        Terms memory t = _submit();
        _claim(t);
        ResultItem memory it = _item(t, "");
        it.outputCid = INPUT_CID;
        it.outputHash = keccak256("big output");
        it.proofHash = keccak256("proof");
        ResultItem[] memory one = new ResultItem[](1);
        one[0] = it;
        bytes memory sig = _signBatch(SIGNER_KEY, one);
        vm.expectEmit(address(market));
        emit MarketBase.ResultSubmitted(t.jobId, operator, it.outputHash, it.proofHash, NODE_AMOUNT);
        vm.prank(operator);
        market.submitResult(_entry(it), sig);
    }

    function test_submitResult_inline_output_hash_is_computed_by_the_market() public {
        Terms memory t = _submit();
        _claim(t);
        ResultItem memory it = _item(t, "real");
        it.outputHash = keccak256("a lie");
        // The node signs keccak(output), whatever outputHash says.
        bytes32 digest = market.resultDigest(t.jobId, market.hashTerms(t), keccak256("real"), bytes32(0));
        bytes memory sig = _signDigest(SIGNER_KEY, digest);
        vm.prank(operator);
        market.submitResult(_entry(it), sig);
        assertEq(_status(t.jobId), uint256(JobStatus.Resulted), "accepted");
    }

    function test_submitResult_reverts() public {
        Terms memory t = _submit();
        bytes memory sig = _signBatch(SIGNER_KEY, _items(_one(t), "x"));
        ResultItem memory it = _item(t, "x");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Open));
        vm.prank(operator);
        market.submitResult(_entry(it), sig);
        _claim(t);
        // Unknown job and wrong terms.
        ResultItem memory unknown = _item(_terms(submitter, 9, PRICE, t.deadline), "x");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.UnknownJob.selector, 9));
        vm.prank(operator);
        market.submitResult(_entry(unknown), sig);
        ResultItem memory wrong = _item(_terms(submitter, t.jobId, PRICE - 1, t.deadline), "x");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        vm.prank(operator);
        market.submitResult(_entry(wrong), sig);
        // Not the claimant.
        _registerNode(operator2, SIGNER2_KEY, 2 ether);
        bytes memory sig2 = _signBatch(SIGNER2_KEY, _items(_one(t), "x"));
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotClaimant.selector, t.jobId, operator2));
        vm.prank(operator2);
        market.submitResult(_entry(it), sig2);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotClaimant.selector, t.jobId, stranger));
        vm.prank(stranger);
        market.submitResult(_entry(it), sig);
        // Signatures.
        bytes memory other = _signBatch(SIGNER2_KEY, _items(_one(t), "x"));
        vm.expectRevert(
            abi.encodeWithSelector(MarketBase.WrongSigner.selector, vm.addr(SIGNER2_KEY), vm.addr(SIGNER_KEY))
        );
        vm.prank(operator);
        market.submitResult(_entry(it), other);
        vm.expectRevert(MarketBase.MalformedSignature.selector);
        vm.prank(operator);
        market.submitResult(_entry(it), hex"1234");
        bytes memory badV = abi.encodePacked(bytes32(uint256(1)), bytes32(uint256(2)), uint8(29));
        vm.expectRevert(MarketBase.MalformedSignature.selector);
        vm.prank(operator);
        market.submitResult(_entry(it), badV);
        // Payload checks.
        ResultItem memory big = _item(t, new bytes(16 * 1024 + 1));
        vm.expectRevert(abi.encodeWithSelector(MarketBase.PayloadTooLarge.selector, 16 * 1024 + 1, 16 * 1024));
        vm.prank(operator);
        market.submitResult(_entry(big), sig);
        // An output by CID (outputHash given) needs a CID of 1..MAX_CID_LENGTH bytes.
        ResultEntry memory noCid = _entry(it);
        noCid.output = "";
        noCid.outputHash = keccak256("kept off chain");
        vm.expectRevert(MarketBase.InvalidCid.selector);
        vm.prank(operator);
        market.submitResult(noCid, sig);
        noCid.output = new bytes(129);
        vm.expectRevert(MarketBase.InvalidCid.selector);
        vm.prank(operator);
        market.submitResult(noCid, sig);
        // Past the deadline.
        vm.warp(t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.DeadlinePassed.selector, t.jobId, t.deadline));
        vm.prank(operator);
        market.submitResult(_entry(it), sig);
    }

    function test_submitResult_uses_the_signer_registered_now() public {
        Terms memory t = _submit();
        _claim(t);
        uint256 newKey = 0xbeef;
        vm.prank(operator);
        nodes.update(vm.addr(newKey), BASE_MODEL, PEER_ID);
        ResultItem[] memory items = _items(_one(t), "x");
        bytes memory oldSig = _signBatch(SIGNER_KEY, items);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongSigner.selector, vm.addr(SIGNER_KEY), vm.addr(newKey)));
        vm.prank(operator);
        market.submitResult(_entry(items[0]), oldSig);
        bytes memory newSig = _signBatch(newKey, items);
        vm.prank(operator);
        market.submitResult(_entry(items[0]), newSig);
    }

    function test_submitResults_batch_pays_once_per_payee() public {
        Terms[] memory ts = new Terms[](3);
        for (uint256 i; i < 3; ++i) {
            ts[i] = _submit();
        }
        vm.prank(operator);
        market.claimJobs(_keys(ts));
        ResultItem[] memory items = _items(ts, _output(64));
        items[1].proofHash = keccak256("proof-1");
        assertEq(_postBatch(items), 3, "all settled");
        assertEq(market.heldOf(operator), 3 * NODE_AMOUNT, "node held");
        (, uint256 h) = market.adapterFees(adapterId);
        assertEq(h, 3 * ADAPTER_FEE, "adapter held");
        assertEq(nodes.getNode(operator).locked, 0, "all stake unlocked");
    }

    /// A batch collects at most 16 distinct adapters in memory; the rest are credited as they come. Every
    /// publisher still gets exactly its fee, including one whose adapter appears again past the limit.
    function test_submitResults_credits_every_adapter_past_the_in_memory_limit() public {
        uint256 n = 18;
        uint256[] memory ids = new uint256[](n);
        Terms[] memory ts = new Terms[](n + 1);
        for (uint256 i; i < n; ++i) {
            vm.prank(publisher);
            ids[i] = adapters.register(CID, keccak256(abi.encode(i)), BASE_MODEL, 8, 65_536, uint96(1_000 + i));
            ts[i] = _request(submitter, PRICE, _req1(ids[i], uint96(1_000 + i), _deadline()), input, "", bytes32(0));
        }
        ts[n] = _request(submitter, PRICE, _req1(ids[n - 1], uint96(1_000 + n - 1), _deadline()), input, "", bytes32(0));
        vm.prank(operator);
        market.claimJobs(_keys(ts));
        assertEq(_postBatch(_items(ts, "out")), n + 1, "all settled");
        for (uint256 i; i < n; ++i) {
            (, uint256 held) = market.adapterFees(ids[i]);
            assertEq(held, (1_000 + i) * (i == n - 1 ? 2 : 1), "each publisher's fee held once per job");
        }
    }

    function test_submitResults_skips_items_not_held_and_signs_all() public {
        Terms[] memory ts = new Terms[](3);
        for (uint256 i; i < 3; ++i) {
            ts[i] = _submit();
        }
        vm.prank(operator);
        market.claimJobs(_keys(ts));
        // Job 1 is reclaimed by someone else first.
        vm.warp(block.timestamp + SERVICE_WINDOW);
        vm.prank(stranger);
        market.reclaim(ts[1]);
        ResultItem[] memory items = _items(ts, "out");
        assertEq(_postBatch(items), 2, "two settled");
        assertEq(_status(ts[1].jobId), uint256(JobStatus.Open), "reclaimed job reopened, not answered");
        // A duplicate in a batch settles once.
        Terms memory t = _submit();
        _claim(t);
        Terms[] memory dup = new Terms[](2);
        dup[0] = t;
        dup[1] = t;
        assertEq(_postBatch(_items(dup, "out")), 1, "duplicate settles once");
    }

    function test_submitResults_reverts() public {
        vm.expectRevert(MarketBase.EmptyBatch.selector);
        vm.prank(operator);
        market.submitResults(_entries(new ResultItem[](0)), "");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.BatchTooLarge.selector, 257, 256));
        vm.prank(operator);
        market.submitResults(_entries(new ResultItem[](257)), "");
        Terms memory t = _submit();
        ResultItem[] memory items = _items(_one(t), "x");
        bytes memory sig = _signBatch(SIGNER_KEY, items);
        vm.expectRevert(MarketBase.NothingSettled.selector);
        vm.prank(operator);
        market.submitResults(_entries(items), sig);
        _claim(t);
        vm.expectRevert(MarketBase.MalformedSignature.selector);
        vm.prank(operator);
        market.submitResults(_entries(items), "");
        vm.prank(operator);
        assertEq(market.submitResults(_entries(items), sig), 1, "settled");
        vm.expectRevert(MarketBase.NothingSettled.selector);
        vm.prank(operator);
        market.submitResults(_entries(items), sig);
    }

    // ---------------------------------------------------------------- releaseJob

    function test_releaseJob_penalty_to_treasury_and_job_reopens() public {
        Terms memory t = _submit();
        _claim(t);
        vm.expectEmit(address(market));
        emit MarketBase.JobReleased(t.jobId, operator, RELEASE_PENALTY, true);
        vm.prank(operator);
        market.releaseJob(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Open), "reopened");
        assertEq(nodes.getNode(operator).locked, 0, "unlocked");
        assertEq(nodes.getNode(operator).stake, 20 ether - RELEASE_PENALTY, "penalty slashed");
        assertEq(market.balanceOf(treasury), RELEASE_PENALTY, "penalty to treasury");
        assertEq(market.balanceOf(submitter), 0, "submitter gets nothing from a release");
        // Another node serves it.
        _registerNode(operator2, SIGNER2_KEY, 2 ether);
        vm.prank(operator2);
        market.claimJob(_key(t));
        ResultItem[] memory items = _items(_one(t), "served");
        bytes memory sig = _signBatch(SIGNER2_KEY, items);
        vm.prank(operator2);
        market.submitResult(_entry(items[0]), sig);
        assertEq(market.heldOf(operator2), NODE_AMOUNT, "second node paid");
    }

    function test_releaseJob_past_deadline_refunds() public {
        // a deadline inside the service window: the claimant may still release at the deadline
        Terms memory t = _submitAs(submitter, PRICE, uint64(block.timestamp + SERVICE_WINDOW / 2));
        _claim(t);
        vm.warp(t.deadline);
        vm.expectEmit(address(market));
        emit MarketBase.JobExpired(t.jobId, PRICE, 0);
        vm.expectEmit(address(market));
        emit MarketBase.JobReleased(t.jobId, operator, RELEASE_PENALTY, false);
        vm.prank(operator);
        market.releaseJob(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Expired), "expired");
        assertEq(market.balanceOf(submitter), PRICE, "refund");
    }

    function test_releaseJob_reverts() public {
        Terms memory t = _submit();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Open));
        vm.prank(operator);
        market.releaseJob(t);
        _claim(t);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotClaimant.selector, t.jobId, stranger));
        vm.prank(stranger);
        market.releaseJob(t);
        Terms memory wrong = _terms(submitter, t.jobId, PRICE, t.deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        vm.prank(operator);
        market.releaseJob(wrong);
    }

    function test_releaseJob_after_the_service_window_reverts_and_reclaim_slashes() public {
        // the release penalty is small: past the service window a claimant must not escape the reclaim
        // slash by front-running reclaim with a release
        Terms memory t = _submit();
        _claim(t);
        uint256 reclaimableAt = block.timestamp + SERVICE_WINDOW;
        vm.warp(reclaimableAt);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.ServiceWindowPassed.selector, t.jobId, reclaimableAt));
        vm.prank(operator);
        market.releaseJob(t);
        uint256 stakeBefore = nodes.getNode(operator).stake;
        vm.prank(stranger);
        market.reclaim(t);
        assertEq(stakeBefore - nodes.getNode(operator).stake, market.claimStakeFor(PRICE), "slashed in full");
    }

    // ---------------------------------------------------------------- reclaim

    function test_reclaim_after_service_window_slashes_and_reopens() public {
        Terms memory t = _submit();
        _claim(t);
        uint256 until = block.timestamp + SERVICE_WINDOW;
        vm.warp(until - 1);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.ServiceWindowOpen.selector, t.jobId, until));
        market.reclaim(t);
        vm.warp(until);
        vm.expectEmit(address(market));
        emit MarketBase.JobReclaimed(t.jobId, operator, STAKE, COMP, true);
        vm.prank(stranger);
        market.reclaim(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Open), "reopened");
        assertEq(market.balanceOf(submitter), COMP, "bounded compensation");
        assertEq(market.balanceOf(treasury), STAKE - COMP, "rest to treasury");
        assertEq(nodes.getNode(operator).stake, 20 ether - STAKE, "slashed");
        assertEq(nodes.getNode(operator).locked, 0, "nothing locked");
        // A second slash on the same job compensates nobody twice.
        _claim(t);
        vm.warp(block.timestamp + SERVICE_WINDOW);
        vm.expectEmit(address(market));
        emit MarketBase.JobReclaimed(t.jobId, operator, STAKE, 0, true);
        market.reclaim(t);
        assertEq(market.balanceOf(submitter), COMP, "compensated once");
        assertEq(market.balanceOf(treasury), 2 * STAKE - COMP, "all else to treasury");
    }

    function test_reclaim_service_window_counts_from_the_claim() public {
        Terms memory t = _submit();
        vm.warp(block.timestamp + 500);
        _claim(t);
        uint256 until = block.timestamp + SERVICE_WINDOW;
        vm.expectRevert(abi.encodeWithSelector(MarketBase.ServiceWindowOpen.selector, t.jobId, until));
        market.reclaim(t);
    }

    function test_reclaim_past_deadline_refunds() public {
        Terms memory t = _submit();
        _claim(t);
        vm.warp(t.deadline + 1);
        vm.expectEmit(address(market));
        emit MarketBase.JobExpired(t.jobId, PRICE, 0);
        vm.expectEmit(address(market));
        emit MarketBase.JobReclaimed(t.jobId, operator, STAKE, COMP, false);
        market.reclaim(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Expired), "expired");
        assertEq(market.balanceOf(submitter), PRICE + COMP, "refund + compensation");
    }

    function test_reclaim_reverts() public {
        Terms memory t = _submit();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Open));
        market.reclaim(t);
        Terms memory unknown = _terms(submitter, 5, PRICE, t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.UnknownJob.selector, 5));
        market.reclaim(unknown);
    }

    function test_reclaim_when_stake_was_taken_elsewhere_compensates_at_most_the_slash() public {
        // With a tiny price the compensation is bounded by 10 % of the price, never by the stake.
        Terms memory t = _submitAs(submitter, 0.002 ether, _deadline());
        _claim(t);
        vm.warp(block.timestamp + SERVICE_WINDOW);
        market.reclaim(t);
        assertEq(market.balanceOf(submitter), 0.0002 ether, "10% of the price");
        assertEq(market.balanceOf(treasury), MIN_CLAIM_STAKE - 0.0002 ether, "the rest of the min stake");
    }

    // ---------------------------------------------------------------- expire

    function test_expire_open_job_refunds() public {
        Terms memory t = _submit();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.DeadlineNotReached.selector, t.jobId, t.deadline));
        market.expire(t);
        vm.warp(t.deadline);
        vm.expectEmit(address(market));
        emit MarketBase.JobExpired(t.jobId, PRICE, 0);
        vm.prank(stranger);
        market.expire(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Expired), "expired");
        assertEq(market.balanceOf(submitter), PRICE, "refund");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Expired));
        market.expire(t);
    }

    function test_expire_claimed_job_slashes_claimant() public {
        Terms memory t = _submit();
        _claim(t);
        vm.warp(t.deadline);
        vm.expectEmit(address(market));
        emit MarketBase.JobExpired(t.jobId, PRICE, STAKE);
        market.expire(t);
        assertEq(market.balanceOf(submitter), PRICE + COMP, "refund + compensation");
        assertEq(market.balanceOf(treasury), STAKE - COMP, "treasury");
        assertEq(nodes.getNode(operator).locked, 0, "unlocked by the slash");
    }

    function test_expire_reverts_on_resulted_job() public {
        Terms memory t = _submit();
        _claim(t);
        _complete(t, "x");
        vm.warp(t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Resulted));
        market.expire(t);
        Terms memory forged = _terms(stranger, t.jobId, PRICE, t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        market.expire(forged);
    }

    // ---------------------------------------------------------------- withdraw / withdrawAdapterFees

    function test_withdraw_reverts() public {
        vm.expectRevert(MarketBase.NothingToWithdraw.selector);
        vm.prank(stranger);
        market.withdraw();
        Rejecter r = new Rejecter();
        vm.deal(address(r), 1 ether);
        vm.prank(address(r));
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, _deadline());
        Terms memory t = _terms(address(r), 1, PRICE, _deadline());
        vm.prank(address(r));
        market.cancel(t);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TransferFailed.selector, address(r), PRICE));
        r.call(address(market), abi.encodeCall(JobMarket.withdraw, ()));
        assertEq(market.balanceOf(address(r)), PRICE, "balance kept after a failed transfer");
    }

    function test_withdraw_is_not_reentrant() public {
        Reenterer r = new Reenterer(market);
        vm.deal(address(r), 1 ether);
        uint64 d = _deadline();
        r.submit{value: PRICE}(adapterId, ADAPTER_FEE, input, d);
        r.cancel(_terms(address(r), 1, PRICE, d));
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TransferFailed.selector, address(r), PRICE));
        r.withdraw();
        assertEq(address(market).balance, PRICE, "nothing left the market");
    }

    function test_treasury_withdraws_accrued_income() public {
        Terms memory t = _submit();
        _claim(t);
        _complete(t, "x");
        uint256 before = treasury.balance;
        vm.prank(treasury);
        market.withdraw();
        assertEq(treasury.balance, before + PRICE / 100, "protocol fee");
        assertEq(market.balanceOf(treasury), 0, "drained");
        vm.expectRevert(MarketBase.NothingToWithdraw.selector);
        vm.prank(treasury);
        market.withdraw();
    }

    function test_withdrawAdapterFees_to_publisher() public {
        Terms memory t = _submit();
        _claim(t);
        _complete(t, "x");
        vm.expectRevert(MarketBase.NothingToWithdraw.selector);
        market.withdrawAdapterFees(adapterId);
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        (uint256 w, uint256 h) = market.adapterFees(adapterId);
        assertEq(w, ADAPTER_FEE, "withdrawable");
        assertEq(h, 0, "none held");
        vm.expectEmit(address(market));
        emit MarketBase.AdapterFeesPaid(adapterId, ADAPTER_FEE);
        vm.prank(stranger); // anyone may call
        market.withdrawAdapterFees(adapterId);
        assertEq(market.balanceOf(publisher), ADAPTER_FEE, "publisher credited");
        vm.expectRevert(MarketBase.NothingToWithdraw.selector);
        market.withdrawAdapterFees(adapterId);
        vm.expectRevert(MarketBase.NothingToWithdraw.selector);
        market.withdrawAdapterFees(999);
    }

    function test_withdrawAdapterFees_split_among_payees_dust_to_last() public {
        address[] memory payees = new address[](3);
        payees[0] = makeAddr("p0");
        payees[1] = makeAddr("p1");
        payees[2] = makeAddr("p2");
        uint16[] memory shares = new uint16[](3);
        shares[0] = 3_333;
        shares[1] = 3_333;
        shares[2] = 3_334;
        vm.prank(publisher);
        uint256 id = adapters.registerWithPayees(CID, CONTENT_HASH, BASE_MODEL, 8, 1, 1001, payees, shares);
        JobRequest memory req = _req1(id, 1001, _deadline());
        Terms memory t = _request(submitter, PRICE, req, input, "", bytes32(0));
        _claim(t);
        _complete(t, "x");
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        market.withdrawAdapterFees(id);
        uint256 fee = 1001;
        uint256 a = fee * 3_333 / 10_000;
        assertEq(market.balanceOf(payees[0]), a, "p0");
        assertEq(market.balanceOf(payees[1]), a, "p1");
        assertEq(market.balanceOf(payees[2]), 1001 - 2 * a, "p2 gets the dust");
        assertEq(market.balanceOf(publisher), 0, "publisher gets nothing directly");
    }

    // ---------------------------------------------------------------- views

    function test_keysOf_gives_the_keys_claims_and_results_take() public {
        AdapterRequest[] memory two = new AdapterRequest[](2);
        vm.prank(publisher);
        uint256 second = adapters.register(CID, keccak256("second"), BASE_MODEL, 8, 65_536, 7);
        two[0] = AdapterRequest({id: uint32(adapterId), weightBps: 6_000, maxFee: ADAPTER_FEE});
        two[1] = AdapterRequest({id: uint32(second), weightBps: 4_000, maxFee: 7});
        JobRequest memory req =
            JobRequest({adapters: two, maxTokens: MAX_TOKENS, deadline: _deadline(), serviceWindow: 0});
        Terms memory t = _request(submitter, PRICE, req, input, "", bytes32(0));
        (uint256 head, uint256[] memory words, bytes32 body, bytes32 rest) = market.keysOf(t);
        ClaimKey memory k = _key(t);
        assertEq(head, k.head, "head");
        assertEq(words.length, 2, "one word per adapter");
        assertEq(words[0], (uint256(adapterId) << 96) | ADAPTER_FEE, "adapter word 0");
        assertEq(words[1], (uint256(second) << 96) | 7, "adapter word 1");
        assertEq(body, k.bodyHash, "body");
        assertEq(rest, keccak256(abi.encode(BASE_MODEL, body)), "rest");
        assertEq(head >> 192, t.jobId, "job id bits");
        assertEq((head >> 96) & type(uint96).max, PRICE, "price bits");
        assertEq(market.hashTerms(t), keccak256(abi.encode(head, rest, words[0], words[1])), "terms hash");
        // the keys claim and post the two-adapter job; each publisher is credited its fee
        _claim(t);
        _complete(t, "merged");
        (, uint256 held0) = market.adapterFees(adapterId);
        (, uint256 held1) = market.adapterFees(second);
        assertEq(held0, ADAPTER_FEE, "first publisher's fee held");
        assertEq(held1, 7, "second publisher's fee held");
    }

    function test_views() public {
        Terms memory t = _submit();
        bytes32 h = market.hashTerms(t);
        ResultItem[] memory items = _items(_one(t), "out");
        assertEq(market.resultDigest(t.jobId, h, keccak256("out"), bytes32(0)), _batchDigest(items), "digest = node's");
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("OpenLoRA"),
                keccak256("2"),
                block.chainid,
                address(market)
            )
        );
        assertEq(market.domainSeparator(), domain, "domain");
        assertEq(
            market.RESULT_TYPEHASH(),
            keccak256("Result(uint256 jobId,bytes32 termsHash,bytes32 outputHash,bytes32 proofHash)"),
            "result type"
        );
        Terms memory other = _terms(submitter, t.jobId, PRICE, t.deadline + 1);
        assertFalse(market.termsMatch(other), "other terms");
        assertFalse(market.termsMatch(_terms(submitter, 77, PRICE, t.deadline)), "unknown job");
        (JobStatus s,,,) = market.jobState(77);
        assertEq(uint256(s), uint256(JobStatus.None), "none");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.UnknownAdapter.selector, 77));
        market.minPrice(77);
        assertEq(market.getDispute(t.jobId).challenger, address(0), "no dispute");
    }

    function test_domain_follows_the_chain_id() public {
        Terms memory t = _submit();
        _claim(t);
        ResultItem[] memory items = _items(_one(t), "x");
        bytes memory sig = _signBatch(SIGNER_KEY, items);
        vm.chainId(999);
        vm.expectRevert();
        vm.prank(operator);
        market.submitResult(_entry(items[0]), sig);
        assertEq(_status(t.jobId), uint256(JobStatus.Claimed), "signature bound to its chain");
    }

    // ---------------------------------------------------------------- code size and MarketOps

    function test_code_sizes_fit_eip170_and_eip3860() public view {
        assertLe(address(market).code.length, 24_576, "JobMarket runtime (EIP-170)");
        assertLe(market.marketOps().code.length, 24_576, "MarketOps runtime (EIP-170)");
        assertLe(address(nodes).code.length, 24_576, "NodeRegistry runtime (EIP-170)");
        assertLe(address(adapters).code.length, 24_576, "AdapterRegistry runtime (EIP-170)");
        assertLe(type(JobMarket).creationCode.length + abi.encode(_config()).length + 32, 49_152, "JobMarket initcode");
        assertLe(type(MarketOps).creationCode.length + abi.encode(_config()).length, 49_152, "MarketOps initcode");
        address registryAt = address(
            uint160(uint256(keccak256(abi.encodePacked(bytes1(0xd6), bytes1(0x94), address(market), bytes1(0x01)))))
        );
        assertEq(registryAt, address(nodes), "registry is the market's first CREATE");
    }

    function test_constructor_refuses_ops_built_with_other_parameters() public {
        MarketBase.Config memory other = _config();
        other.releasePenalty = RELEASE_PENALTY + 1;
        address ops = address(new MarketOps(other));
        vm.expectRevert(abi.encodeWithSelector(JobMarket.OpsMismatch.selector, ops));
        new JobMarket(_config(), ops);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.OpsMismatch.selector, stranger));
        new JobMarket(_config(), stranger);
    }

    function test_marketOps_cannot_be_called_directly() public {
        MarketOps ops = MarketOps(payable(market.marketOps()));
        assertTrue(address(ops).code.length > 0, "ops deployed");
        assertEq(ops.configHash(), keccak256(abi.encode(_config())), "ops built with the market's config");
        Terms memory t = _submit();
        vm.expectRevert(MarketOps.OnlyThroughMarket.selector);
        vm.prank(submitter);
        ops.cancel(t);
        vm.expectRevert(MarketOps.OnlyThroughMarket.selector);
        ops.expire(t);
        vm.expectRevert(MarketOps.OnlyThroughMarket.selector);
        ops.reclaim(t);
        vm.expectRevert(MarketOps.OnlyThroughMarket.selector);
        ops.releaseJob(t);
        vm.expectRevert(MarketOps.OnlyThroughMarket.selector);
        ops.withdrawAdapterFees(adapterId);
        vm.expectRevert(MarketOps.OnlyThroughMarket.selector);
        ops.settleDispute(t);
        vm.expectRevert(MarketOps.OnlyThroughMarket.selector);
        vm.prank(validator);
        ops.dispute{value: DISPUTE_BOND}(t, "bafy");
        assertEq(_status(t.jobId), uint256(JobStatus.Open), "the market's job untouched");
    }

    // ---------------------------------------------------------------- raw calldata: dirty and non-canonical terms

    function test_dirty_jobId_word_claims_nothing() public {
        Terms memory t = _submit();
        bytes memory data = abi.encodeCall(JobMarket.claimJob, (_key(t)));
        assembly ("memory-safe") {
            // jobId word of the terms (selector, offset word, then the terms): set a bit above uint64.
            let w := add(data, add(0x20, 0x24))
            mstore(w, or(mload(w), shl(200, 1)))
        }
        vm.prank(operator);
        (bool ok,) = address(market).call(data);
        assertFalse(ok, "dirty jobId accepted");
        // In a batch it is skipped.
        Terms[] memory ts = new Terms[](1);
        ts[0] = t;
        bytes memory batch = abi.encodeCall(JobMarket.claimJobs, (_keys(ts)));
        assembly ("memory-safe") {
            // selector, array offset, length, element offset, then the terms.
            let w := add(batch, add(0x20, 0x64))
            mstore(w, or(mload(w), shl(200, 1)))
        }
        vm.prank(operator);
        (ok,) = address(market).call(batch);
        assertFalse(ok, "dirty batch claimed something");
        assertEq(_status(t.jobId), uint256(JobStatus.Open), "still open");
        _claim(t); // the clean terms still work
    }

    /// A key is hashed word for word: any other word (a dirty bit above an adapter's fee, an extra adapter word,
    /// another body or price) names no job, in claims and in results.
    function test_a_key_with_any_other_word_never_matches() public {
        Terms memory t = _submit();
        ClaimKey memory k = _key(t);
        ClaimKey[4] memory bad;
        for (uint256 i; i < 4; ++i) {
            bad[i] = _key(t);
        }
        bad[0].adapters[0] = k.adapters[0] | (uint256(1) << 200);
        bad[1].adapters = new uint256[](2);
        bad[1].adapters[0] = k.adapters[0];
        bad[2].bodyHash = keccak256("another input");
        bad[3].head = k.head + (uint256(1) << 96); // 1 wei more
        for (uint256 i; i < 4; ++i) {
            vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
            vm.prank(operator);
            market.claimJob(bad[i]);
        }
        assertEq(_status(t.jobId), uint256(JobStatus.Open), "still open");
        _claim(t);
        ResultEntry memory e = _entry(_item(t, "out"));
        e.restHash = keccak256("other rest");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        vm.prank(operator);
        market.submitResult(e, "");
        assertEq(_status(t.jobId), uint256(JobStatus.Claimed), "still claimed");
    }
}
