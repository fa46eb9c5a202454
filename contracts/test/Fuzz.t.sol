// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {HeldBalance} from "../src/lib/HeldBalance.sol";
import {MarketBase} from "../src/market/MarketBase.sol";
import {AdapterRequest, JobRequest, JobStatus, ResultItem, Terms} from "../src/lib/JobTypes.sol";

/// @notice Fuzzing over prices, fees, windows and batch sizes.
contract FuzzTest is Fixture {
    uint256 internal constant SIGNER2_KEY = 0xb0b2;

    /// @dev A job at `price` with the adapter's fee set to `fee` and the protocol fee to `bps`.
    function _job(uint256 price, uint96 fee, uint16 bps, uint32 window, uint64 duration)
        internal
        returns (Terms memory t)
    {
        vm.prank(publisher);
        adapters.setFee(adapterId, fee);
        market.setProtocolFee(bps);
        JobRequest memory req = _req1(adapterId, fee, uint64(block.timestamp + duration));
        req.serviceWindow = window;
        vm.deal(submitter, price);
        t = _request(submitter, price, req, input, "", bytes32(0));
    }

    function _fees(uint256 price, uint96 fee, uint16 bps) internal pure returns (uint256 node, uint256 protocol) {
        protocol = price * bps / 10_000;
        node = price - fee - protocol;
    }

    /// Every wei of a completed job goes to the node, the adapter or the treasury, and nothing else.
    function testFuzz_lifecycle_splits_the_price_exactly(uint96 priceSeed, uint96 feeSeed, uint16 bpsSeed) public {
        uint16 bps = uint16(bound(bpsSeed, 0, 1_000));
        uint96 fee = uint96(bound(feeSeed, 0, 10 ether));
        uint256 minP = (uint256(fee) + 1) * 10_000 / (10_000 - bps) + 1;
        uint256 price = bound(priceSeed, minP, 50 ether);
        Terms memory t = _job(price, fee, bps, 0, 1 hours);
        vm.deal(operator, 100 ether);
        vm.prank(operator);
        nodes.addStake{value: 80 ether}();
        _claim(t);
        _complete(t, "out");
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        if (fee != 0) market.withdrawAdapterFees(adapterId);
        (uint256 node, uint256 protocol) = _fees(price, fee, bps);
        assertEq(market.balanceOf(operator), node, "node");
        assertEq(market.balanceOf(publisher), fee, "adapter");
        assertEq(market.balanceOf(treasury), protocol, "treasury");
        assertEq(node + fee + protocol, price, "sum");
        assertEq(address(market).balance, price, "all still in the market until withdrawn");
    }

    /// A price below fee + protocol fee (+1 wei for the node) is refused; minPrice is always accepted.
    function testFuzz_price_floor(uint96 priceSeed, uint96 feeSeed, uint16 bpsSeed) public {
        uint16 bps = uint16(bound(bpsSeed, 0, 1_000));
        uint96 fee = uint96(bound(feeSeed, 0, 10 ether));
        vm.prank(publisher);
        adapters.setFee(adapterId, fee);
        market.setProtocolFee(bps);
        uint256 price = bound(priceSeed, 0, 20 ether);
        vm.deal(submitter, 100 ether);
        uint64 d = uint64(block.timestamp + 1 hours);
        bool ok = price > uint256(fee) + price * bps / 10_000;
        if (!ok) {
            vm.expectRevert(abi.encodeWithSelector(MarketBase.PriceTooLow.selector, price, fee, price * bps / 10_000));
        }
        vm.prank(submitter);
        market.submitJob{value: price}(adapterId, fee, input, 8, d);
        uint256 p = market.minPrice(adapterId);
        vm.prank(submitter);
        market.submitJob{value: p}(adapterId, fee, input, 8, d);
        (uint256 node,) = _fees(p, fee, bps);
        assertGe(node, 1, "minPrice leaves the node at least 1 wei");
    }

    /// A submitter fee cap below the registry's fee always reverts, at or above it never does.
    function testFuzz_fee_cap(uint96 feeSeed, uint96 capSeed) public {
        uint96 fee = uint96(bound(feeSeed, 0, 0.005 ether));
        uint96 cap = uint96(bound(capSeed, 0, 0.005 ether));
        vm.prank(publisher);
        adapters.setFee(adapterId, fee);
        uint64 d = uint64(block.timestamp + 1 hours);
        if (fee > cap) {
            vm.expectRevert(abi.encodeWithSelector(MarketBase.AdapterFeeAboveMax.selector, adapterId, fee, cap));
        }
        vm.prank(submitter);
        market.submitJob{value: PRICE}(adapterId, cap, input, 8, d);
    }

    /// The claim stake is never zero, scales with the price, and is exactly what a claim locks.
    function testFuzz_claim_stake(uint96 priceSeed) public {
        uint256 price = bound(priceSeed, 0.0012 ether, 10 ether);
        uint256 stake = market.claimStakeFor(price);
        assertGe(stake, MIN_CLAIM_STAKE, "floor");
        assertGe(stake, price * CLAIM_STAKE_BPS / 10_000, "scaled");
        assertGe(stake, price, "at least the price (1.5x here)");
        Terms memory t = _submitAs(submitter, price, uint64(block.timestamp + 1 hours));
        _claim(t);
        assertEq(nodes.getNode(operator).locked, stake, "locked");
    }

    /// Reclaims and expiry: the submitter never gets more than escrow + compensationBps of the price, however
    /// many times its job is claimed and slashed, and the market keeps exactly the rest.
    function testFuzz_slashes_bounded_compensation(uint96 priceSeed, uint8 roundsSeed, bool expireAtEnd) public {
        uint256 price = bound(priceSeed, 0.0012 ether, 2 ether);
        uint256 rounds = bound(roundsSeed, 1, 5);
        Terms memory t = _submitAs(submitter, price, uint64(block.timestamp + 1 days));
        uint256 slashed;
        for (uint256 i; i < rounds; ++i) {
            _claim(t);
            vm.warp(block.timestamp + SERVICE_WINDOW);
            market.reclaim(t);
            slashed += market.claimStakeFor(price);
        }
        if (expireAtEnd) {
            vm.warp(t.deadline);
            market.expire(t);
        } else {
            vm.prank(submitter);
            market.cancel(t);
        }
        uint256 comp = price * COMPENSATION_BPS / 10_000;
        assertEq(market.balanceOf(submitter), price + comp, "escrow + compensation, once");
        assertLe(market.balanceOf(submitter), price + price / 10, "bounded by 10 %");
        assertEq(market.balanceOf(treasury), slashed - comp, "treasury");
        assertEq(address(market).balance, price + slashed, "market holds escrow + slashes");
    }

    /// Service windows: a claim is reclaimable exactly `window` seconds after it was made.
    function testFuzz_service_window(uint32 windowSeed, uint32 claimDelaySeed) public {
        uint32 window = uint32(bound(windowSeed, MIN_SERVICE_WINDOW, 10 days));
        uint256 claimDelay = bound(claimDelaySeed, 0, 5 days);
        Terms memory t = _job(PRICE, ADAPTER_FEE, PROTOCOL_FEE_BPS, window, 30 days);
        assertEq(t.serviceWindow, window, "window in the terms");
        vm.warp(block.timestamp + claimDelay);
        _claim(t);
        uint256 at = block.timestamp + window;
        vm.warp(at - 1);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.ServiceWindowOpen.selector, t.jobId, at));
        market.reclaim(t);
        vm.warp(at);
        market.reclaim(t);
        assertEq(_status(t.jobId), uint256(at < t.deadline ? JobStatus.Open : JobStatus.Expired), "reopened");
    }

    /// Challenge windows: a result can be disputed strictly inside its window, and its payment is held for at
    /// least the window and matures within two.
    function testFuzz_challenge_window(uint32 startSeed, uint32 disputeAtSeed) public {
        vm.warp(bound(startSeed, 1, 30 days));
        Terms memory t = _submit();
        _claim(t);
        _complete(t, "answer");
        uint256 resultAt = block.timestamp;
        uint256 node = PRICE - ADAPTER_FEE - PRICE / 100;
        uint256 uid = vm.snapshotState();
        vm.warp(resultAt + CHALLENGE_WINDOW - 1);
        assertEq(market.balanceOf(operator), 0, "held for the whole window");
        vm.warp(resultAt + 2 * CHALLENGE_WINDOW);
        assertEq(market.balanceOf(operator), node, "matured within two windows");
        vm.revertToState(uid);
        uint256 d = bound(disputeAtSeed, 0, 2 * CHALLENGE_WINDOW);
        vm.warp(resultAt + d);
        if (d >= CHALLENGE_WINDOW) {
            vm.expectRevert(
                abi.encodeWithSelector(MarketBase.ChallengeWindowClosed.selector, t.jobId, resultAt + CHALLENGE_WINDOW)
            );
        }
        vm.prank(validator);
        market.dispute{value: DISPUTE_BOND}(t, "bafyevidence");
    }

    /// Batches of any size up to the cap claim and settle exactly the jobs they can, paying each once.
    /// forge-config: default.fuzz.runs = 48
    function testFuzz_batches(uint8 nSeed, uint256 takenMask) public {
        uint256 n = bound(nSeed, 1, 40);
        Terms[] memory ts = new Terms[](n);
        for (uint256 i; i < n; ++i) {
            ts[i] = _submit();
        }
        _registerNode(makeAddr("rival"), SIGNER2_KEY, 5 ether);
        uint256 taken;
        for (uint256 i; i < n; ++i) {
            if ((takenMask >> i) & 1 == 1) {
                vm.prank(makeAddr("rival"));
                market.claimJob(_key(ts[i]));
                ++taken;
            }
        }
        if (taken == n) {
            vm.expectRevert(MarketBase.NothingClaimed.selector);
            vm.prank(operator);
            market.claimJobs(_keys(ts));
            return;
        }
        vm.prank(operator);
        assertEq(market.claimJobs(_keys(ts)), n - taken, "claimed the free ones");
        assertEq(nodes.getNode(operator).locked, (n - taken) * market.claimStakeFor(PRICE), "stake per job");
        ResultItem[] memory items = _items(ts, _output(48));
        assertEq(_postBatch(items), n - taken, "settled ours only");
        assertEq(market.heldOf(operator), (n - taken) * (PRICE - ADAPTER_FEE - PRICE / 100), "paid once each");
        assertEq(nodes.getNode(operator).locked, 0, "all unlocked");
        bytes memory again = _signBatch(SIGNER_KEY, items);
        vm.expectRevert(MarketBase.NothingSettled.selector);
        vm.prank(operator);
        market.submitResults(_entries(items), again);
    }

    /// A batch signature covers exactly its items in order: swapping any two distinct items breaks it.
    /// forge-config: default.fuzz.runs = 64
    function testFuzz_batch_signature_order(uint8 nSeed, uint8 iSeed, uint8 jSeed) public {
        uint256 n = bound(nSeed, 2, 12);
        uint256 i = bound(iSeed, 0, n - 1);
        uint256 j = bound(jSeed, 0, n - 1);
        vm.assume(i != j);
        Terms[] memory ts = new Terms[](n);
        for (uint256 k; k < n; ++k) {
            ts[k] = _submit();
        }
        vm.prank(operator);
        market.claimJobs(_keys(ts));
        ResultItem[] memory items = _items(ts, "same output for all");
        bytes memory sig = _signBatch(SIGNER_KEY, items);
        (items[i], items[j]) = (items[j], items[i]);
        vm.prank(operator);
        (bool ok, bytes memory ret) =
            address(market).call(abi.encodeCall(JobMarket.submitResults, (_entries(items), sig)));
        assertFalse(ok, "reordered batch accepted");
        assertEq(bytes4(ret), MarketBase.WrongSigner.selector, "wrong signer");
    }

    /// Multi-adapter jobs: each adapter gets exactly its fee, whatever the weights and fees.
    /// forge-config: default.fuzz.runs = 64
    function testFuzz_multi_adapter_fees(uint8 nSeed, uint96 f0, uint96 f1, uint96 f2, uint96 f3) public {
        uint256 n = bound(nSeed, 1, 4);
        uint96[4] memory fees = [
            uint96(bound(f0, 0, 0.001 ether)),
            uint96(bound(f1, 0, 0.001 ether)),
            uint96(bound(f2, 0, 0.001 ether)),
            uint96(bound(f3, 0, 0.001 ether))
        ];
        JobRequest memory req;
        req.adapters = new AdapterRequest[](n);
        uint256[] memory ids = new uint256[](n);
        for (uint256 k; k < n; ++k) {
            vm.prank(publisher);
            ids[k] = adapters.register(CID, bytes32(k + 1), BASE_MODEL, 4, 1, fees[k]);
            req.adapters[k] = AdapterRequest({id: uint32(ids[k]), weightBps: uint16(1 + k * 1000), maxFee: fees[k]});
        }
        req.maxTokens = 8;
        req.deadline = uint64(block.timestamp + 1 hours);
        Terms memory t = _request(submitter, PRICE, req, input, "", bytes32(0));
        _claim(t);
        _complete(t, "x");
        uint256 sum;
        for (uint256 k; k < n; ++k) {
            (, uint256 held) = market.adapterFees(ids[k]);
            assertEq(held, fees[k], "adapter fee");
            sum += fees[k];
        }
        assertEq(market.heldOf(operator), PRICE - sum - PRICE / 100, "node gets the rest");
    }

    /// HeldBalance against a model: credits at non-decreasing epochs; after each, what has matured (spilled
    /// to the caller or kept in the word) is exactly what was credited at least two epochs ago, and the rest is
    /// held.
    function testFuzz_held_balance_model(uint256 seed, uint256 stepSeed) public pure {
        uint256 word;
        uint256 credited;
        uint256 spilledOut;
        uint256 epoch = 10;
        uint256[64] memory amountAt; // per epoch offset from 10
        for (uint256 k; k < 16; ++k) {
            uint256 step = (stepSeed >> (k * 4)) % 4; // 0..3 epochs later
            epoch += step;
            uint256 amount = 1 + ((seed >> (k * 16)) % 60_000);
            uint256 s;
            (word, s) = HeldBalance.credit(word, epoch, amount);
            spilledOut += s;
            credited += amount;
            amountAt[epoch - 10] += amount;
            uint256 old;
            for (uint256 e = 10; e + 2 <= epoch; ++e) {
                old += amountAt[e - 10];
            }
            (uint256 rest, uint256 matured) = HeldBalance.release(word, epoch);
            assertEq(spilledOut + matured, old, "matured = credits at least two epochs old");
            assertEq(HeldBalance.total(rest), credited - old, "the rest held");
        }
        (uint256 rest2, uint256 matured2) = HeldBalance.release(word, epoch + 2);
        assertEq(spilledOut + matured2, credited, "all mature two epochs after the last credit");
        assertEq(rest2, 0, "nothing held");
    }
}
