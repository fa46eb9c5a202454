// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Test} from "./utils/Test.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";

/// @dev Stands in for the job market: it creates the registry (so it is the registry's market) and may receive
///      slashed stake.
contract SlashSink {
    NodeRegistry public immutable reg;

    constructor() {
        reg = new NodeRegistry(1 ether, 1 hours);
    }

    receive() external payable {}
}

contract NodeRegistryTest is Test {
    bytes32 internal constant BASE = keccak256("tiny-llama");
    bytes32 internal constant OTHER_BASE = keccak256("other-model");
    string internal constant PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    NodeRegistry internal reg;
    address internal market;
    address internal operator = makeAddr("operator");
    address internal signer = makeAddr("signer");
    address internal other = makeAddr("other");

    function setUp() public {
        SlashSink sink = new SlashSink();
        reg = sink.reg();
        market = address(sink);
        vm.deal(operator, 100 ether);
        vm.deal(other, 100 ether);
    }

    function _register(uint256 stake) internal {
        vm.prank(operator);
        reg.register{value: stake}(signer, BASE, PEER);
    }

    // ---------------------------------------------------------------- market fixed at creation

    function test_market_is_the_creator() public {
        assertEq(reg.market(), market, "creator is the market");
        NodeRegistry mine = new NodeRegistry(1, 1);
        assertEq(mine.market(), address(this), "mine");
        assertEq(reg.minStake(), 1 ether, "min stake");
        assertEq(reg.unstakeDelay(), 1 hours, "delay");
    }

    // ---------------------------------------------------------------- register, update

    function test_register_stakes_and_emits() public {
        vm.expectEmit(true, true, true, true, address(reg));
        emit NodeRegistry.NodeRegistered(operator, signer, BASE, PEER, 2 ether);
        _register(2 ether);
        NodeRegistry.Node memory n = reg.getNode(operator);
        assertEq(n.signer, signer, "signer");
        assertEq(n.baseModel, BASE, "base");
        assertEq(n.stake, 2 ether, "stake");
        assertEq(n.locked, 0, "locked");
        assertTrue(n.active, "active");
        assertEq(n.peerId, PEER, "peer");
        assertEq(reg.nodeIdOf(operator), 1, "node id");
        assertEq(reg.operatorOf(1), operator, "operator of id");
        assertEq(reg.signerOf(operator), signer, "signerOf");
        assertEq(reg.freeStake(operator), 2 ether, "free");
        assertEq(address(reg).balance, 2 ether, "balance");
    }

    function test_register_reverts() public {
        vm.startPrank(operator);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.StakeBelowMinimum.selector, 0.5 ether, 1 ether));
        reg.register{value: 0.5 ether}(signer, BASE, PEER);
        vm.expectRevert(NodeRegistry.ZeroSigner.selector);
        reg.register{value: 1 ether}(address(0), BASE, PEER);
        vm.expectRevert(NodeRegistry.ZeroBaseModel.selector);
        reg.register{value: 1 ether}(signer, bytes32(0), PEER);
        vm.expectRevert(NodeRegistry.InvalidPeerId.selector);
        reg.register{value: 1 ether}(signer, BASE, "");
        vm.expectRevert(NodeRegistry.InvalidPeerId.selector);
        reg.register{value: 1 ether}(signer, BASE, string(new bytes(129)));
        reg.register{value: 1 ether}(signer, BASE, PEER);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NodeAlreadyRegistered.selector, operator));
        reg.register{value: 1 ether}(signer, BASE, PEER);
        vm.stopPrank();
    }

    function test_register_reverts_on_stake_overflow() public {
        uint256 huge = uint256(type(uint104).max) + 1;
        vm.deal(operator, huge);
        vm.expectRevert(NodeRegistry.StakeOverflow.selector);
        vm.prank(operator);
        reg.register{value: huge}(signer, BASE, PEER);
    }

    function test_update_changes_profile() public {
        _register(1 ether);
        vm.expectEmit(true, true, true, true, address(reg));
        emit NodeRegistry.NodeUpdated(operator, other, OTHER_BASE, "peer-2");
        vm.prank(operator);
        reg.update(other, OTHER_BASE, "peer-2");
        NodeRegistry.Node memory n = reg.getNode(operator);
        assertEq(n.signer, other, "signer");
        assertEq(n.baseModel, OTHER_BASE, "base");
        assertEq(n.peerId, "peer-2", "peer");
    }

    function test_update_reverts_unregistered_and_bad_profile() public {
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NodeNotRegistered.selector, other));
        vm.prank(other);
        reg.update(signer, BASE, PEER);
        _register(1 ether);
        vm.expectRevert(NodeRegistry.ZeroSigner.selector);
        vm.prank(operator);
        reg.update(address(0), BASE, PEER);
    }

    // ---------------------------------------------------------------- stake in and out

    function test_addStake_reactivates() public {
        _register(1 ether);
        vm.prank(operator);
        reg.requestUnstake(0.5 ether);
        assertFalse(reg.getNode(operator).active, "inactive below minimum");
        vm.expectEmit(true, false, false, true, address(reg));
        emit NodeRegistry.StakeAdded(operator, 0.5 ether);
        vm.prank(operator);
        reg.addStake{value: 0.5 ether}();
        assertTrue(reg.getNode(operator).active, "active again");
        assertEq(reg.getNode(operator).stake, 1 ether, "stake");
    }

    function test_addStake_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NodeNotRegistered.selector, other));
        vm.prank(other);
        reg.addStake{value: 1}();
        _register(1 ether);
        vm.expectRevert(NodeRegistry.ZeroAmount.selector);
        vm.prank(operator);
        reg.addStake();
        uint256 huge = uint256(type(uint104).max);
        vm.deal(operator, huge);
        vm.expectRevert(NodeRegistry.StakeOverflow.selector);
        vm.prank(operator);
        reg.addStake{value: huge}();
    }

    function test_unstake_after_delay() public {
        _register(3 ether);
        vm.warp(1_000);
        vm.expectEmit(true, false, false, true, address(reg));
        emit NodeRegistry.UnstakeRequested(operator, 1 ether, 1_000 + 1 hours);
        vm.prank(operator);
        reg.requestUnstake(1 ether);
        NodeRegistry.Node memory n = reg.getNode(operator);
        assertEq(n.stake, 2 ether, "bonded");
        assertEq(n.pendingUnstake, 1 ether, "pending");
        assertEq(n.unstakeAvailableAt, 1_000 + 1 hours, "available at");

        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.UnstakeNotReady.selector, uint64(1_000 + 1 hours)));
        vm.prank(operator);
        reg.withdrawUnstaked();

        vm.warp(1_000 + 1 hours);
        uint256 before = operator.balance;
        vm.expectEmit(true, false, false, true, address(reg));
        emit NodeRegistry.StakeWithdrawn(operator, 1 ether);
        vm.prank(operator);
        reg.withdrawUnstaked();
        assertEq(operator.balance - before, 1 ether, "paid");
        assertEq(reg.getNode(operator).pendingUnstake, 0, "pending cleared");
        assertEq(address(reg).balance, 2 ether, "registry keeps bonded stake");
    }

    function test_requestUnstake_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NodeNotRegistered.selector, other));
        vm.prank(other);
        reg.requestUnstake(1);
        _register(2 ether);
        vm.expectRevert(NodeRegistry.ZeroAmount.selector);
        vm.prank(operator);
        reg.requestUnstake(0);
        vm.prank(market);
        reg.lockStake(operator, 1.5 ether);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InsufficientFreeStake.selector, 1 ether, 0.5 ether));
        vm.prank(operator);
        reg.requestUnstake(1 ether);
    }

    function test_withdrawUnstaked_reverts_when_nothing_pending() public {
        _register(1 ether);
        vm.expectRevert(NodeRegistry.NothingToWithdraw.selector);
        vm.prank(operator);
        reg.withdrawUnstaked();
    }

    function test_withdrawUnstaked_reverts_when_receiver_rejects() public {
        Rejecter r = new Rejecter();
        vm.deal(address(r), 2 ether);
        r.join(reg, signer, BASE, PEER);
        r.unstake(reg, 1 ether);
        vm.warp(block.timestamp + 1 hours);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.TransferFailed.selector, address(r), 1 ether));
        r.withdraw(reg);
    }

    // ---------------------------------------------------------------- market hooks

    function test_lock_unlock_slashLocked() public {
        _register(2 ether);
        vm.startPrank(market);
        reg.lockStake(operator, 1 ether);
        assertEq(reg.freeStake(operator), 1 ether, "free after lock");
        assertFalse(reg.isEligible(operator, BASE, 1.5 ether), "not enough free");
        assertTrue(reg.isEligible(operator, BASE, 1 ether), "enough free");
        assertFalse(reg.isEligible(operator, OTHER_BASE, 0), "other model");
        reg.unlockStake(operator, 0.5 ether);
        assertEq(reg.getNode(operator).locked, 0.5 ether, "locked after unlock");

        uint256 before = market.balance;
        vm.expectEmit(true, false, false, true, address(reg));
        emit NodeRegistry.NodeSlashed(operator, 0.5 ether);
        uint256 taken = reg.slashLocked(operator, 0.7 ether); // capped at what is locked
        vm.stopPrank();
        assertEq(taken, 0.5 ether, "taken");
        assertEq(market.balance - before, 0.5 ether, "slash sent to market");
        NodeRegistry.Node memory n = reg.getNode(operator);
        assertEq(n.stake, 1.5 ether, "stake after slash");
        assertEq(n.locked, 0, "locked after slash");
        assertTrue(n.active, "still above minimum");
        (address op, address s) = reg.claimantOf(1);
        assertEq(op, operator, "claimant operator");
        assertEq(s, signer, "claimant signer");
        assertEq(reg.operatorOf(1), operator, "operatorOf");
        assertEq(reg.operatorOf(2), address(0), "unknown id");
        (uint32 id, bytes32 base) = reg.claimer(operator);
        assertEq(id, 1, "claimer id");
        assertEq(base, BASE, "claimer base");
        (uint32 id2, address s2) = reg.claimantInfo(operator);
        assertEq(id2, 1, "claimantInfo id");
        assertEq(s2, signer, "claimantInfo signer");
        assertEq(reg.signerOf(operator), signer, "signerOf");
    }

    function test_unlock_saturates_and_slash_of_nothing_sends_nothing() public {
        _register(2 ether);
        vm.startPrank(market);
        reg.lockStake(operator, 1 ether);
        reg.unlockStake(operator, 5 ether);
        assertEq(reg.getNode(operator).locked, 0, "saturated at zero");
        uint256 before = market.balance;
        assertEq(reg.slashLocked(operator, 1 ether), 0, "nothing locked, nothing taken");
        vm.stopPrank();
        assertEq(market.balance, before, "nothing sent");
        assertEq(reg.getNode(operator).stake, 2 ether, "stake intact");
    }

    function test_slashAny_takes_free_then_pending_then_locked() public {
        _register(3 ether);
        vm.prank(market);
        reg.lockStake(operator, 1 ether);
        vm.prank(operator);
        reg.requestUnstake(1 ether); // stake 2 (1 locked, 1 free), pending 1
        vm.prank(market);
        uint256 taken = reg.slashAny(operator, 1.5 ether);
        assertEq(taken, 1.5 ether, "taken");
        NodeRegistry.Node memory n = reg.getNode(operator);
        assertEq(n.stake, 1 ether, "free stake gone first");
        assertEq(n.pendingUnstake, 0.5 ether, "then pending");
        assertEq(n.locked, 1 ether, "locked untouched so far");
        vm.prank(market);
        taken = reg.slashAny(operator, 10 ether);
        assertEq(taken, 1.5 ether, "everything left");
        n = reg.getNode(operator);
        assertEq(n.stake + n.pendingUnstake + n.locked, 0, "emptied");
        assertFalse(n.active, "inactive");
        assertEq(address(reg).balance, 0, "registry holds nothing more");
    }

    function test_slash_below_minimum_deactivates() public {
        _register(1 ether);
        vm.startPrank(market);
        reg.lockStake(operator, 0.5 ether);
        reg.slashLocked(operator, 0.5 ether);
        vm.stopPrank();
        assertFalse(reg.getNode(operator).active, "inactive");
        assertFalse(reg.isEligible(operator, BASE, 0), "not eligible");
        (uint32 id,) = reg.claimer(operator);
        assertEq(id, 0, "an inactive node cannot claim");
    }

    function test_market_hooks_revert() public {
        _register(1 ether);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotMarket.selector, other));
        vm.prank(other);
        reg.lockStake(operator, 1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotMarket.selector, other));
        vm.prank(other);
        reg.unlockStake(operator, 1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotMarket.selector, other));
        vm.prank(other);
        reg.slashLocked(operator, 1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.NotMarket.selector, other));
        vm.prank(other);
        reg.slashAny(operator, 1);
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.InsufficientFreeStake.selector, 2 ether, 1 ether));
        vm.prank(market);
        reg.lockStake(operator, 2 ether);
    }

    function test_unknown_operator_views_are_zero() public view {
        NodeRegistry.Node memory n = reg.getNode(other);
        assertEq(n.signer, address(0), "signer");
        assertFalse(n.active, "active");
        assertEq(reg.nodeIdOf(other), 0, "id");
        assertFalse(reg.isEligible(other, BASE, 0), "eligible");
    }
}

/// @dev An operator contract that refuses native tokens, to prove failed transfers revert cleanly.
contract Rejecter {
    function join(NodeRegistry reg, address signer, bytes32 base, string calldata peer) external {
        reg.register{value: 2 ether}(signer, base, peer);
    }

    function unstake(NodeRegistry reg, uint256 amount) external {
        reg.requestUnstake(amount);
    }

    function withdraw(NodeRegistry reg) external {
        reg.withdrawUnstaked();
    }
}
