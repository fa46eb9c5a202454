// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {ValidatorArbiter} from "../src/ValidatorArbiter.sol";
import {HeldBalance} from "../src/lib/HeldBalance.sol";
import {MarketBase} from "../src/market/MarketBase.sol";
import {JobStatus, Terms} from "../src/lib/JobTypes.sol";

/// @dev An arbiter that records cases and rules when told to.
contract MockArbiter {
    JobMarket public market;
    uint256 public cases;
    string public lastEvidence;

    function setMarket(JobMarket m) external {
        market = m;
    }

    function openCase(uint256, address, string calldata evidenceCid) external {
        ++cases;
        lastEvidence = evidenceCid;
    }

    function ruleOn(uint256 jobId, bool fraud) external {
        market.rule(jobId, fraud);
    }
}

contract DisputesTest is Fixture {
    string internal constant EVIDENCE = "bafkreievidenceevidenceevidenceevidenceevidenceevidence";
    uint256 internal constant PROTOCOL = PRICE * PROTOCOL_FEE_BPS / 10_000;
    uint256 internal constant NODE_AMOUNT = PRICE - ADAPTER_FEE - PROTOCOL;
    uint256 internal constant STAKE = PRICE * CLAIM_STAKE_BPS / 10_000;

    function _resulted() internal returns (Terms memory t) {
        t = _submit();
        _claim(t);
        _complete(t, "answer");
    }

    function _dispute(Terms memory t, address who) internal {
        vm.prank(who);
        market.dispute{value: DISPUTE_BOND}(t, EVIDENCE);
    }

    // ---------------------------------------------------------------- dispute

    function test_dispute_sets_payments_aside_and_opens_a_case() public {
        Terms memory t = _resulted();
        vm.expectEmit(address(market));
        emit MarketBase.DisputeOpened(t.jobId, validator, address(arbiter), EVIDENCE);
        vm.expectEmit(address(arbiter));
        emit ValidatorArbiter.CaseOpened(t.jobId, validator, EVIDENCE);
        _dispute(t, validator);
        assertEq(_status(t.jobId), uint256(JobStatus.Disputed), "disputed");
        assertEq(market.heldOf(operator), 0, "node's payment taken out of its held balance");
        (uint256 w, uint256 h) = market.adapterFees(adapterId);
        assertEq(w + h, 0, "adapter fee set aside");
        MarketBase.Dispute memory d = market.getDispute(t.jobId);
        assertEq(d.challenger, validator, "challenger");
        assertEq(d.bond, DISPUTE_BOND, "bond");
        assertEq(d.arbiter, address(arbiter), "arbiter");
        assertEq(d.openedAt, block.timestamp, "opened");
        assertEq(d.verdict, 0, "pending");
        ValidatorArbiter.Case memory c = arbiter.getCase(t.jobId);
        assertTrue(c.open, "case open");
        assertEq(c.challenger, validator, "case challenger");
        // Matured earnings of the node stay untouched by the dispute.
        vm.warp(block.timestamp + 3 * CHALLENGE_WINDOW);
        assertEq(market.balanceOf(operator), 0, "disputed payment never matures");
    }

    function test_dispute_only_touches_the_disputed_job() public {
        Terms memory a = _submit();
        Terms memory b = _submit();
        _claim(a);
        _claim(b);
        _complete(a, "a");
        _complete(b, "b");
        _dispute(a, validator);
        assertEq(market.heldOf(operator), NODE_AMOUNT, "the other job stays held");
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        assertEq(market.balanceOf(operator), NODE_AMOUNT, "and matures");
    }

    function test_dispute_reverts() public {
        Terms memory t = _resulted();
        vm.deal(stranger, 1 ether);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotValidator.selector, stranger));
        vm.prank(stranger);
        market.dispute{value: DISPUTE_BOND}(t, EVIDENCE);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongBond.selector, DISPUTE_BOND - 1, DISPUTE_BOND));
        vm.prank(validator);
        market.dispute{value: DISPUTE_BOND - 1}(t, EVIDENCE);
        vm.expectRevert(MarketBase.InvalidCid.selector);
        vm.prank(validator);
        market.dispute{value: DISPUTE_BOND}(t, "");
        Terms memory wrong = _terms(submitter, t.jobId, PRICE, t.deadline + 1);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        _dispute(wrong, validator);
        Terms memory open = _submit();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, open.jobId, JobStatus.Open));
        _dispute(open, validator);
        // The window: result time + challengeWindow, exclusive.
        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.ChallengeWindowClosed.selector, t.jobId, block.timestamp));
        _dispute(t, validator);
    }

    function test_dispute_at_the_last_second_of_the_window() public {
        vm.warp(CHALLENGE_WINDOW - 1); // the result lands at the end of an epoch
        Terms memory t = _resulted();
        vm.warp(block.timestamp + CHALLENGE_WINDOW - 1);
        _dispute(t, validator);
        assertEq(_status(t.jobId), uint256(JobStatus.Disputed), "still inside the window");
    }

    function test_dispute_by_removed_validator_reverts() public {
        Terms memory t = _resulted();
        adapters.setValidator(validator, false);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotValidator.selector, validator));
        _dispute(t, validator);
    }

    function test_dispute_without_arbiter_reverts() public {
        JobMarket m = _newMarket(_config());
        Terms memory t = _terms(submitter, 1, PRICE, 100);
        vm.expectRevert(MarketBase.NoArbiter.selector);
        vm.prank(validator);
        m.dispute{value: DISPUTE_BOND}(t, EVIDENCE);
    }

    function test_dispute_twice_reverts() public {
        Terms memory t = _resulted();
        _dispute(t, validator);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Disputed));
        _dispute(t, validator2);
    }

    // ---------------------------------------------------------------- rule

    function test_rule_only_by_the_case_arbiter_once() public {
        Terms memory t = _resulted();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotArbiter.selector, address(arbiter)));
        vm.prank(address(arbiter));
        market.rule(t.jobId, true); // no dispute yet
        _dispute(t, validator);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotArbiter.selector, stranger));
        vm.prank(stranger);
        market.rule(t.jobId, true);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotArbiter.selector, validator2));
        vm.prank(validator2);
        market.rule(t.jobId, true);
        vm.expectEmit(address(market));
        emit MarketBase.DisputeRuled(t.jobId, false);
        vm.prank(address(arbiter));
        market.rule(t.jobId, false);
        assertEq(market.getDispute(t.jobId).verdict, 2, "no fraud");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.AlreadyRuled.selector, t.jobId));
        vm.prank(address(arbiter));
        market.rule(t.jobId, true);
    }

    function test_rule_after_timeout_settlement_reverts() public {
        Terms memory t = _resulted();
        _dispute(t, validator);
        vm.warp(block.timestamp + DISPUTE_TIMEOUT);
        market.settleDispute(t);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Final));
        vm.prank(address(arbiter));
        market.rule(t.jobId, true);
    }

    function test_arbiter_replaced_after_opening_keeps_the_case() public {
        Terms memory t = _resulted();
        _dispute(t, validator);
        MockArbiter other = new MockArbiter();
        market.setArbiter(address(other));
        other.setMarket(market);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotArbiter.selector, address(other)));
        other.ruleOn(t.jobId, true);
        vm.prank(validator2);
        arbiter.vote(t.jobId, true);
        assertEq(market.getDispute(t.jobId).verdict, 1, "the original arbiter ruled");
        // New disputes go to the new arbiter.
        Terms memory t2 = _resulted();
        _dispute(t2, validator);
        assertEq(other.cases(), 1, "new case");
        assertEq(other.lastEvidence(), EVIDENCE, "evidence passed on");
        other.ruleOn(t2.jobId, false);
        market.settleDispute(t2);
        assertEq(_status(t2.jobId), uint256(JobStatus.Final), "final");
    }

    // ---------------------------------------------------------------- settleDispute

    function test_settle_fraud_refunds_submitter_slashes_node_rewards_challenger() public {
        Terms memory t = _resulted();
        _dispute(t, validator);
        vm.prank(validator2);
        arbiter.vote(t.jobId, true);
        uint256 rest = STAKE - PROTOCOL;
        uint256 reward = rest * CHALLENGER_REWARD_BPS / 10_000;
        vm.expectEmit(address(market));
        emit MarketBase.DisputeSettled(t.jobId, true, PRICE, STAKE, reward);
        vm.prank(stranger);
        market.settleDispute(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Refunded), "refunded");
        assertEq(market.balanceOf(submitter), PRICE, "full refund");
        assertEq(market.balanceOf(validator), DISPUTE_BOND + reward, "bond back + reward");
        assertEq(market.balanceOf(treasury), PROTOCOL + rest - reward, "treasury: fee + rest");
        assertEq(nodes.getNode(operator).stake, 20 ether - STAKE, "node slashed");
        vm.warp(block.timestamp + 3 * CHALLENGE_WINDOW);
        assertEq(market.balanceOf(operator), 0, "node paid nothing");
        (uint256 w, uint256 h) = market.adapterFees(adapterId);
        assertEq(w + h, 0, "adapter paid nothing");
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Refunded));
        market.settleDispute(t);
    }

    function test_settle_fraud_takes_stake_being_unstaked() public {
        Terms memory t = _resulted();
        vm.startPrank(operator);
        nodes.requestUnstake(20 ether - 0.005 ether); // leaves less free stake than the slash
        vm.stopPrank();
        _dispute(t, validator);
        vm.prank(validator2);
        arbiter.vote(t.jobId, true);
        market.settleDispute(t);
        assertEq(nodes.getNode(operator).stake + nodes.getNode(operator).pendingUnstake, 20 ether - STAKE, "slashed");
        assertEq(market.balanceOf(submitter), PRICE, "full refund");
    }

    function test_settle_no_fraud_pays_node_and_bond_goes_to_node() public {
        Terms memory t = _resulted();
        _dispute(t, validator);
        vm.prank(validator2);
        arbiter.vote(t.jobId, false);
        vm.expectEmit(address(market));
        emit MarketBase.DisputeSettled(t.jobId, false, 0, 0, 0);
        market.settleDispute(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Final), "final");
        assertEq(market.balanceOf(operator), NODE_AMOUNT + DISPUTE_BOND, "payment + bond, withdrawable now");
        (uint256 w,) = market.adapterFees(adapterId);
        assertEq(w, ADAPTER_FEE, "adapter fee withdrawable");
        assertEq(market.balanceOf(validator), 0, "challenger loses its bond");
        assertEq(market.balanceOf(submitter), 0, "no refund");
    }

    function test_settle_timeout_counts_as_no_fraud() public {
        Terms memory t = _resulted();
        _dispute(t, validator);
        uint256 timeoutAt = block.timestamp + DISPUTE_TIMEOUT;
        vm.warp(timeoutAt - 1);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotRuled.selector, t.jobId, timeoutAt));
        market.settleDispute(t);
        vm.warp(timeoutAt);
        market.settleDispute(t);
        assertEq(market.balanceOf(operator), NODE_AMOUNT + DISPUTE_BOND, "node paid");
        // Late votes find the dispute closed.
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Final));
        vm.prank(validator2);
        arbiter.vote(t.jobId, true);
    }

    function test_settle_reverts_when_not_disputed() public {
        Terms memory t = _resulted();
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Resulted));
        market.settleDispute(t);
        Terms memory wrong = _terms(submitter, t.jobId, PRICE + 1, t.deadline);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.TermsMismatch.selector, t.jobId));
        market.settleDispute(wrong);
    }

    // ---------------------------------------------------------------- ValidatorArbiter

    function test_arbiter_constructor() public {
        vm.expectRevert(ValidatorArbiter.ZeroQuorum.selector);
        new ValidatorArbiter(address(market), address(adapters), 0);
        assertEq(address(arbiter.market()), address(market), "market");
        assertEq(address(arbiter.adapterRegistry()), address(adapters), "registry");
        assertEq(arbiter.quorum(), 1, "quorum");
    }

    function test_arbiter_openCase_only_market() public {
        vm.expectRevert(abi.encodeWithSelector(ValidatorArbiter.NotMarket.selector, stranger));
        vm.prank(stranger);
        arbiter.openCase(1, stranger, EVIDENCE);
    }

    function test_arbiter_vote_reverts() public {
        Terms memory t = _resulted();
        vm.expectRevert(abi.encodeWithSelector(ValidatorArbiter.NoOpenCase.selector, t.jobId));
        vm.prank(validator2);
        arbiter.vote(t.jobId, true);
        _dispute(t, validator);
        vm.expectRevert(abi.encodeWithSelector(ValidatorArbiter.NotValidator.selector, stranger));
        vm.prank(stranger);
        arbiter.vote(t.jobId, true);
        vm.expectRevert(abi.encodeWithSelector(ValidatorArbiter.ChallengerCannotVote.selector, t.jobId));
        vm.prank(validator);
        arbiter.vote(t.jobId, true);
        adapters.setValidator(validator2, false);
        vm.expectRevert(abi.encodeWithSelector(ValidatorArbiter.NotValidator.selector, validator2));
        vm.prank(validator2);
        arbiter.vote(t.jobId, true);
    }

    function test_arbiter_k_of_n() public {
        ValidatorArbiter two = new ValidatorArbiter(address(market), address(adapters), 2);
        market.setArbiter(address(two));
        address v3 = makeAddr("validator3");
        address v4 = makeAddr("validator4");
        adapters.setValidator(v3, true);
        adapters.setValidator(v4, true);
        Terms memory t = _resulted();
        _dispute(t, validator);
        vm.expectEmit(address(two));
        emit ValidatorArbiter.Voted(t.jobId, validator2, true);
        vm.prank(validator2);
        two.vote(t.jobId, true);
        vm.expectRevert(abi.encodeWithSelector(ValidatorArbiter.AlreadyVoted.selector, t.jobId, validator2));
        vm.prank(validator2);
        two.vote(t.jobId, false);
        assertTrue(two.hasVoted(t.jobId, validator2), "recorded");
        vm.prank(v3);
        two.vote(t.jobId, false);
        assertEq(market.getDispute(t.jobId).verdict, 0, "1-1: undecided");
        vm.expectEmit(address(two));
        emit ValidatorArbiter.CaseDecided(t.jobId, true);
        vm.prank(v4);
        two.vote(t.jobId, true);
        assertEq(market.getDispute(t.jobId).verdict, 1, "2 fraud votes rule fraud");
        ValidatorArbiter.Case memory c = two.getCase(t.jobId);
        assertEq(c.fraudVotes, 2, "fraud votes");
        assertEq(c.honestVotes, 1, "honest votes");
        assertTrue(c.decided, "decided");
        address v5 = makeAddr("validator5");
        adapters.setValidator(v5, true);
        vm.expectRevert(abi.encodeWithSelector(ValidatorArbiter.NoOpenCase.selector, t.jobId));
        vm.prank(v5);
        two.vote(t.jobId, false);
    }

    // ---------------------------------------------------------------- held balances

    function test_held_balance_reuses_buckets_without_a_transaction() public {
        // Results in three consecutive epochs: the third credit matures the first.
        _resulted();
        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        _resulted();
        vm.warp(block.timestamp + CHALLENGE_WINDOW);
        _resulted();
        assertEq(market.balanceOf(operator), NODE_AMOUNT, "first matured");
        assertEq(market.heldOf(operator), 2 * NODE_AMOUNT, "two held");
        vm.prank(operator);
        market.withdraw();
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        assertEq(market.balanceOf(operator), 2 * NODE_AMOUNT, "all matured");
    }

    function test_held_balance_library_edges() public {
        HeldHarness h = new HeldHarness();
        vm.expectRevert(abi.encodeWithSelector(HeldBalance.HeldUnderflow.selector, 1, 0));
        h.debit(0, 5, 1);
        vm.expectRevert(HeldBalance.HeldOverflow.selector);
        h.credit(0, 1, uint256(1) << 80);
        (uint256 w, uint256 m) = h.credit(0, 1, 10);
        (w, m) = h.credit(w, 2, 20); // epoch 1 shifts to the older bucket
        assertEq(m, 0, "nothing spilled");
        (uint256 rest, uint256 matured) = h.release(w, 2);
        assertEq(matured, 0, "epoch 1 matures at 3");
        (w, m) = h.credit(w, 3, 30); // epoch 1 matures into the word
        assertEq(m, 0, "matured stays in the word");
        (rest, matured) = h.release(w, 3);
        assertEq(matured, 10, "epoch 1 matured at 3");
        assertEq(h.total(rest), 50, "epochs 2 and 3 held");
        (rest, matured) = h.release(w, 4);
        assertEq(matured, 30, "epoch 2 matured at 4");
        assertEq(h.total(rest), 30, "epoch 3 held");
        (rest, matured) = h.release(w, 5);
        assertEq(matured, 60, "all matured at 5");
        assertEq(rest, 0, "empty word");
        // Disputes take amounts back from the bucket of their epoch only.
        uint256 d = h.debit(w, 3, 30);
        assertEq(h.total(d), 20, "newest debited");
        d = h.debit(w, 2, 20);
        assertEq(h.total(d), 30, "older debited");
        vm.expectRevert(abi.encodeWithSelector(HeldBalance.HeldUnderflow.selector, 31, 30));
        h.debit(w, 3, 31);
        vm.expectRevert(abi.encodeWithSelector(HeldBalance.HeldUnderflow.selector, 10, 0));
        h.debit(w, 1, 10); // epoch 1 has matured: no longer disputable
        // A matured amount too large for the word spills to the caller.
        (w,) = h.credit(0, 1, uint256(1) << 70);
        (w, m) = h.credit(w, 3, 1);
        assertEq(m, uint256(1) << 70, "spilled");
        (, matured) = h.release(w, 3);
        assertEq(matured, 0, "nothing left matured in the word");
    }
}

contract HeldHarness {
    function credit(uint256 w, uint256 e, uint256 a) external pure returns (uint256, uint256) {
        return HeldBalance.credit(w, e, a);
    }

    function debit(uint256 w, uint256 e, uint256 a) external pure returns (uint256) {
        return HeldBalance.debit(w, e, a);
    }

    function release(uint256 w, uint256 e) external pure returns (uint256, uint256) {
        return HeldBalance.release(w, e);
    }

    function total(uint256 w) external pure returns (uint256) {
        return HeldBalance.total(w);
    }
}
