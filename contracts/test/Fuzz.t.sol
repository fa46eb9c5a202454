// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";

/// @notice Fuzz tests over prices, fees, fee splits, deadlines, slash shares and stake amounts.
contract FuzzTest is Fixture {
    function _setFees(uint96 adapterFee, uint16 bps) internal {
        vm.prank(publisher);
        adapters.setFee(adapterId, adapterFee);
        market.setProtocolFee(bps);
    }

    /// Whatever the fees, a completed job splits its price exactly, with the formula documented, and the node
    /// always gets at least 1 wei.
    function testFuzz_payout_splits_price_exactly(uint256 price, uint96 adapterFee, uint16 bps) public {
        bps = uint16(bound(bps, 0, market.MAX_PROTOCOL_FEE_BPS()));
        adapterFee = uint96(bound(adapterFee, 0, 1_000_000 ether));
        _setFees(adapterFee, bps);
        price = bound(price, market.minPrice(adapterId), type(uint96).max);
        vm.deal(submitter, price);
        uint256 jobId = _submitAs(submitter, price, uint64(block.timestamp + 1 hours));
        _claim(jobId);
        _complete(jobId, _output(32));

        uint256 protocolAmount = price * bps / 10_000;
        uint256 nodeAmount = market.balanceOf(operator);
        assertEq(market.balanceOf(treasury), protocolAmount, "protocol");
        assertEq(market.balanceOf(publisher), adapterFee, "adapter");
        assertEq(nodeAmount + adapterFee + protocolAmount, price, "split sums to price");
        assertGe(nodeAmount, 1, "node fee non-zero");
        assertEq(address(market).balance, price, "all of it withdrawable");
    }

    /// submitJob accepts a price exactly when it leaves the node a non-zero fee.
    function testFuzz_price_floor(uint256 price, uint96 adapterFee, uint16 bps) public {
        bps = uint16(bound(bps, 0, market.MAX_PROTOCOL_FEE_BPS()));
        adapterFee = uint96(bound(adapterFee, 0, 10 ether));
        _setFees(adapterFee, bps);
        price = bound(price, 0, 20 ether);
        uint256 protocolAmount = price * bps / 10_000;
        uint64 deadline = uint64(block.timestamp + 1 hours);
        if (price <= uint256(adapterFee) + protocolAmount) {
            vm.expectRevert(abi.encodeWithSelector(JobMarket.PriceTooLow.selector, price, adapterFee, protocolAmount));
        }
        vm.prank(submitter);
        market.submitJob{value: price}(adapterId, input, MAX_TOKENS, deadline);
        // minPrice is always enough.
        uint256 jobId = _submitAs(submitter, market.minPrice(adapterId), deadline);
        assertTrue(market.getJob(jobId).status == JobMarket.JobStatus.Open, "minPrice accepted");
    }

    /// Claims and results are accepted strictly before the deadline, expiry exactly from it on.
    function testFuzz_deadline_boundary(uint256 duration, uint256 elapsed, bool claimFirst) public {
        vm.warp(1_000_000);
        duration = bound(duration, 1, market.MAX_JOB_DURATION());
        elapsed = bound(elapsed, 0, duration * 2);
        // Exact: duration <= MAX_JOB_DURATION.
        // forge-lint: disable-next-line(unsafe-typecast)
        uint64 deadline = uint64(block.timestamp + duration);
        uint256 jobId = _submitAs(submitter, PRICE, deadline);
        if (claimFirst) _claim(jobId);
        vm.warp(block.timestamp + elapsed);
        bool late = block.timestamp >= deadline;
        if (!claimFirst) {
            if (late) vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlinePassed.selector, jobId, deadline));
            _claim(jobId);
        }
        if (late) {
            market.expire(jobId);
            assertTrue(market.getJob(jobId).status == JobMarket.JobStatus.Expired, "expired");
        } else {
            vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlineNotReached.selector, jobId, deadline));
            market.expire(jobId);
            _complete(jobId, _output(8));
            assertTrue(market.getJob(jobId).status == JobMarket.JobStatus.Completed, "completed");
        }
    }

    /// A missed deadline moves exactly claimStake from the node to the submitter and treasury.
    function testFuzz_slash_split(uint256 claimStake, uint16 slashBps) public {
        claimStake = bound(claimStake, 0, 2 ether);
        slashBps = uint16(bound(slashBps, 0, 10_000));
        NodeRegistry nodes2 = new NodeRegistry(MIN_STAKE, UNSTAKE_DELAY);
        JobMarket m =
            new JobMarket(address(adapters), address(nodes2), treasury, PROTOCOL_FEE_BPS, claimStake, slashBps);
        nodes2.setMarket(address(m));
        vm.prank(operator);
        nodes2.register{value: 2 ether}(signer, BASE_MODEL, PEER_ID);
        vm.prank(submitter);
        uint256 jobId = m.submitJob{value: PRICE}(adapterId, input, MAX_TOKENS, uint64(block.timestamp + 60));
        vm.prank(operator);
        m.claimJob(jobId);
        vm.warp(block.timestamp + 60);
        m.expire(jobId);
        uint256 toSubmitter = claimStake * slashBps / 10_000;
        assertEq(m.balanceOf(submitter), PRICE + toSubmitter, "submitter");
        assertEq(m.balanceOf(treasury), claimStake - toSubmitter, "treasury");
        assertEq(nodes2.getNode(operator).stake, 2 ether - claimStake, "stake");
        assertEq(address(m).balance, PRICE + claimStake, "market balance");
        assertEq(address(nodes2).balance, 2 ether - claimStake, "registry balance");
    }

    /// The adapter fee is split among payees without losing or creating a wei.
    function testFuzz_payee_split(uint96 fee, uint16 s0, uint16 s1) public {
        fee = uint96(bound(fee, 0, 1_000 ether));
        s0 = uint16(bound(s0, 1, 9_998));
        s1 = uint16(bound(s1, 1, 9_999 - s0));
        address[] memory payees = new address[](3);
        (payees[0], payees[1], payees[2]) = (makeAddr("p0"), makeAddr("p1"), makeAddr("p2"));
        uint16[] memory shares = new uint16[](3);
        (shares[0], shares[1], shares[2]) = (s0, s1, 10_000 - s0 - s1);
        vm.prank(publisher);
        adapterId = adapters.registerWithPayees(CID, CONTENT_HASH, BASE_MODEL, 8, 1, fee, payees, shares);
        uint256 price = market.minPrice(adapterId);
        vm.deal(submitter, price);
        uint256 jobId = _submitAs(submitter, price, uint64(block.timestamp + 1 hours));
        _claim(jobId);
        _complete(jobId, _output(8));
        uint256 b0 = market.balanceOf(payees[0]);
        uint256 b1 = market.balanceOf(payees[1]);
        uint256 b2 = market.balanceOf(payees[2]);
        assertEq(b0, uint256(fee) * s0 / 10_000, "payee 0");
        assertEq(b1, uint256(fee) * s1 / 10_000, "payee 1");
        assertEq(b0 + b1 + b2, fee, "fee conserved");
    }

    /// Stake moves between bonded, locked, pending and withdrawn without changing the registry's total.
    function testFuzz_stake_accounting(uint256 stake, uint256 unstake, uint256 extra) public {
        address op = makeAddr("fuzz-operator");
        stake = bound(stake, MIN_STAKE, 1_000 ether);
        extra = bound(extra, 1, 1_000 ether);
        vm.deal(op, stake + extra);
        vm.prank(op);
        nodes.register{value: stake}(signer, BASE_MODEL, PEER_ID);
        vm.prank(op);
        nodes.addStake{value: extra}();
        unstake = bound(unstake, 1, stake + extra);
        vm.prank(op);
        nodes.requestUnstake(unstake);
        NodeRegistry.Node memory n = nodes.getNode(op);
        assertEq(n.stake + n.pendingUnstake, stake + extra, "conserved");
        assertEq(n.active, n.stake >= MIN_STAKE, "active iff bonded >= minimum");
        vm.warp(block.timestamp + UNSTAKE_DELAY);
        vm.prank(op);
        nodes.withdrawUnstaked();
        assertEq(op.balance, unstake, "withdrawn");
        assertEq(address(nodes).balance, 2 ether + stake + extra - unstake, "registry balance");
    }
}
