// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";

/// @notice A submitter whose receive() re-enters the market: withdraw, cancel, expire, in turn.
contract ReentrantSubmitter {
    enum Attack {
        None,
        Withdraw,
        Cancel,
        Expire
    }

    JobMarket internal immutable market;
    Attack public attack;
    uint256 public target;
    bool public reentered;
    bytes public reentryError;

    constructor(JobMarket market_) {
        market = market_;
    }

    function arm(Attack attack_, uint256 target_) external {
        attack = attack_;
        target = target_;
    }

    function submit(uint256 adapterId, bytes calldata input, uint256 price, uint64 deadline)
        external
        returns (uint256)
    {
        return market.submitJob{value: price}(adapterId, input, 8, deadline);
    }

    function cancel(uint256 jobId) external {
        market.cancel(jobId);
    }

    function withdraw() external {
        market.withdraw();
    }

    receive() external payable {
        if (attack == Attack.None || reentered) return;
        reentered = true;
        bool ok;
        bytes memory err;
        if (attack == Attack.Withdraw) {
            (ok, err) = address(market).call(abi.encodeCall(JobMarket.withdraw, ()));
        } else if (attack == Attack.Cancel) {
            (ok, err) = address(market).call(abi.encodeCall(JobMarket.cancel, (target)));
        } else {
            (ok, err) = address(market).call(abi.encodeCall(JobMarket.expire, (target)));
        }
        // Keep the inner failure for the test to inspect; the outer withdrawal goes on.
        if (!ok) reentryError = err;
    }

    function reentryErrorSelector() external view returns (bytes4) {
        // Exact: the selector is the first four bytes by design.
        // forge-lint: disable-next-line(unsafe-typecast)
        return bytes4(reentryError);
    }
}

/// @notice A node operator whose receive() tries to withdraw its unstaked stake twice.
contract ReentrantOperator {
    NodeRegistry internal immutable nodes;

    constructor(NodeRegistry nodes_) {
        nodes = nodes_;
    }

    function join(address signer, bytes32 base, string calldata peer) external payable {
        nodes.register{value: msg.value}(signer, base, peer);
    }

    function unstake(uint256 amount) external {
        nodes.requestUnstake(amount);
    }

    function withdraw() external {
        nodes.withdrawUnstaked();
    }

    receive() external payable {
        nodes.withdrawUnstaked();
    }
}

contract SecurityTest is Fixture {
    bytes4 internal constant REENTRANCY = bytes4(keccak256("ReentrancyGuardReentrantCall()"));

    ReentrantSubmitter internal attacker;

    function setUp() public override {
        super.setUp();
        attacker = new ReentrantSubmitter(market);
        vm.deal(address(attacker), 10 ether);
    }

    function _attackerJob() internal returns (uint256) {
        return attacker.submit(adapterId, input, PRICE, uint64(block.timestamp + 1 hours));
    }

    // ---------------------------------------------------------------- reentrancy

    function test_reentrant_withdraw_is_blocked() public {
        uint256 a = _attackerJob();
        _submit(); // someone else's escrow, the prize a drain would take
        attacker.cancel(a);
        attacker.arm(ReentrantSubmitter.Attack.Withdraw, 0);
        uint256 before = address(attacker).balance;
        attacker.withdraw();
        assertTrue(attacker.reentered(), "attack ran");
        assertTrue(attacker.reentryErrorSelector() == REENTRANCY, "inner withdraw hit the guard");
        assertEq(address(attacker).balance - before, PRICE, "paid exactly once");
        assertEq(market.balanceOf(address(attacker)), 0, "balance spent");
        assertEq(address(market).balance, PRICE, "other escrow untouched");
    }

    function test_reentrant_cancel_is_blocked() public {
        uint256 a = _attackerJob();
        uint256 b = _attackerJob();
        attacker.cancel(a);
        attacker.arm(ReentrantSubmitter.Attack.Cancel, b);
        attacker.withdraw();
        assertTrue(attacker.reentryErrorSelector() == REENTRANCY, "inner cancel hit the guard");
        assertTrue(market.getJob(b).status == JobMarket.JobStatus.Open, "second job untouched");
        assertEq(market.balanceOf(address(attacker)), 0, "no refund credited by the re-entry");
    }

    function test_reentrant_expire_is_blocked() public {
        uint256 a = _attackerJob();
        uint256 b = _attackerJob();
        attacker.cancel(a);
        vm.warp(block.timestamp + 1 hours);
        attacker.arm(ReentrantSubmitter.Attack.Expire, b);
        attacker.withdraw();
        assertTrue(attacker.reentryErrorSelector() == REENTRANCY, "inner expire hit the guard");
        assertTrue(market.getJob(b).status == JobMarket.JobStatus.Open, "second job untouched");
        // Outside a withdrawal the same expiry works, and everything is withdrawn exactly once.
        market.expire(b);
        attacker.withdraw();
        assertEq(market.balanceOf(address(attacker)), 0, "all withdrawn");
        assertEq(address(market).balance, 0, "nothing left");
    }

    function test_reentrant_unstake_withdrawal_is_blocked() public {
        ReentrantOperator op = new ReentrantOperator(nodes);
        op.join{value: 2 ether}(signer, BASE_MODEL, PEER_ID);
        op.unstake(1 ether);
        vm.warp(block.timestamp + UNSTAKE_DELAY);
        // The inner call hits the guard; the transfer fails, so the outer call reverts with TransferFailed.
        vm.expectRevert(abi.encodeWithSelector(NodeRegistry.TransferFailed.selector, address(op), 1 ether));
        op.withdraw();
        assertEq(nodes.getNode(address(op)).pendingUnstake, 1 ether, "still pending");
        assertEq(address(nodes).balance, 4 ether, "registry holds both nodes' stake");
    }

    // ---------------------------------------------------------------- replay

    /// @dev A second deployment on the same chain, with the same node (same operator and signer) registered.
    function _secondDeployment() internal returns (JobMarket other) {
        AdapterRegistry adapters2 = new AdapterRegistry();
        NodeRegistry nodes2 = new NodeRegistry(MIN_STAKE, UNSTAKE_DELAY);
        other = new JobMarket(
            address(adapters2), address(nodes2), treasury, PROTOCOL_FEE_BPS, CLAIM_STAKE, SLASH_TO_SUBMITTER_BPS
        );
        nodes2.setMarket(address(other));
        vm.prank(publisher);
        adapters2.register(CID, CONTENT_HASH, BASE_MODEL, 8, 65_536, ADAPTER_FEE);
        vm.prank(operator);
        nodes2.register{value: 2 ether}(signer, BASE_MODEL, PEER_ID);
        vm.prank(submitter);
        uint256 jobId = other.submitJob{value: PRICE}(1, input, MAX_TOKENS, uint64(block.timestamp + 1 hours));
        assertEq(jobId, 1, "same job id on the second deployment");
        vm.prank(operator);
        other.claimJob(jobId);
    }

    function test_signature_replay_on_second_deployment_fails() public {
        uint256 jobId = _submit();
        _claim(jobId);
        bytes memory output = _output(64);
        bytes memory sig = _signResult(market, SIGNER_KEY, jobId, output);
        vm.prank(operator);
        market.submitResult(jobId, output, sig);

        JobMarket other = _secondDeployment();
        assertNotEq(other.domainSeparator(), market.domainSeparator(), "domains differ by contract address");
        // Same job id, input, adapter, output, signer: only the verifying contract differs.
        vm.expectRevert();
        vm.prank(operator);
        other.submitResult(jobId, output, sig);
        assertTrue(other.getJob(jobId).status == JobMarket.JobStatus.Claimed, "not paid on the second deployment");
        // The signature made for the second deployment works there.
        bytes memory sig2 = _signResult(other, SIGNER_KEY, jobId, output);
        vm.prank(operator);
        other.submitResult(jobId, output, sig2);
    }

    function test_signature_replay_on_other_chain_fails() public {
        uint256 jobId = _submit();
        _claim(jobId);
        bytes memory output = _output(64);
        bytes memory sig = _signResult(market, SIGNER_KEY, jobId, output);
        bytes32 before = market.domainSeparator();

        vm.chainId(block.chainid + 1);
        assertNotEq(market.domainSeparator(), before, "domain follows chain id");
        vm.expectRevert();
        vm.prank(operator);
        market.submitResult(jobId, output, sig);
        assertTrue(market.getJob(jobId).status == JobMarket.JobStatus.Claimed, "not paid on the other chain");
    }

    function test_signature_for_one_job_does_not_pay_another() public {
        uint256 first = _submit();
        uint256 second = _submit();
        _claim(first);
        _claim(second);
        bytes memory output = _output(32);
        bytes memory sig = _signResult(market, SIGNER_KEY, first, output);
        vm.expectRevert();
        vm.prank(operator);
        market.submitResult(second, output, sig);
    }

    function test_signature_binds_adapter_hash() public {
        uint256 jobId = _submit();
        _claim(jobId);
        bytes memory output = _output(32);
        bytes32 forged = keccak256("some other adapter file");
        bytes memory sig =
            _signDigest(SIGNER_KEY, market.resultDigest(jobId, keccak256(input), forged, keccak256(output)));
        vm.expectRevert();
        vm.prank(operator);
        market.submitResult(jobId, output, sig);
    }
}
