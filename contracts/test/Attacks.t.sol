// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {MarketBase} from "../src/market/MarketBase.sol";
import {ClaimKey, JobStatus, ResultItem, Terms} from "../src/lib/JobTypes.sol";

/// @notice The attacks protocol v2 was built against (issue 15), each played out and shown to fail.
contract AttacksTest is Fixture {
    uint256 internal constant SIGNER2_KEY = 0xb0b2;
    address internal operator2 = makeAddr("operator2");
    uint256 internal constant STAKE = PRICE * CLAIM_STAKE_BPS / 10_000;
    uint256 internal constant COMP = PRICE * COMPENSATION_BPS / 10_000;

    function setUp() public override {
        super.setUp();
        _registerNode(operator2, SIGNER2_KEY, 5 ether);
    }

    /// @dev What the submitter can take out of the market (pull balance), plus what it already took.
    function _submitterTake() internal view returns (uint256) {
        return market.balanceOf(submitter);
    }

    // ---------------------------------------------------------------- unservable-job slash farm

    /// A submitter posts a job no node can serve (garbage input); the claimant gives it back. v1 paid the
    /// submitter half the claim stake; v2 pays nothing for a release, and a cancel returns exactly the escrow.
    function test_attack_slash_farm_release_pays_the_submitter_nothing() public {
        uint256 start = submitter.balance;
        Terms memory t = _submit();
        for (uint256 i; i < 5; ++i) {
            _claim(t);
            vm.prank(operator);
            market.releaseJob(t);
        }
        assertEq(_submitterTake(), 0, "no income from releases");
        vm.prank(submitter);
        market.cancel(t);
        vm.prank(submitter);
        market.withdraw();
        assertEq(submitter.balance, start, "submitter ends exactly where it started");
        assertEq(market.balanceOf(treasury), 5 * RELEASE_PENALTY, "penalties went to the treasury");
    }

    /// The claimant stays silent and is reclaimed, again and again: the submitter is compensated once, at most
    /// compensationBps (10 %) of the price, however many slashes its job causes; the rest goes to the treasury.
    function test_attack_slash_farm_reclaims_compensate_once_and_bounded() public {
        uint256 start = submitter.balance;
        Terms memory t = _submit();
        uint256 slashedTotal;
        for (uint256 i; i < 4; ++i) {
            address op = i % 2 == 0 ? operator : operator2;
            vm.prank(op);
            market.claimJob(_key(t));
            vm.warp(block.timestamp + SERVICE_WINDOW);
            vm.prank(submitter); // the submitter itself reclaims
            market.reclaim(t);
            slashedTotal += STAKE;
        }
        vm.warp(t.deadline);
        vm.prank(submitter);
        market.expire(t);
        vm.prank(submitter);
        market.withdraw();
        uint256 gain = submitter.balance - start;
        assertEq(gain, COMP, "gain = the bounded compensation, once");
        assertLe(gain, PRICE / 10, "never above 10 % of the price");
        assertEq(market.balanceOf(treasury), slashedTotal - COMP, "the rest of every slash to the treasury");
    }

    /// The submitter runs its own node to farm its own job: every round costs it the claim stake minus at most
    /// the compensation, so the pair only loses.
    function test_attack_slash_farm_with_own_node_loses() public {
        address self = makeAddr("self-node");
        _registerNode(self, 0x5e1f, 2 ether);
        uint256 before = submitter.balance + self.balance + nodes.getNode(self).stake;
        Terms memory t = _submit();
        for (uint256 i; i < 3; ++i) {
            vm.prank(self);
            market.claimJob(_key(t));
            vm.warp(block.timestamp + SERVICE_WINDOW);
            market.reclaim(t);
        }
        vm.prank(submitter);
        market.cancel(t);
        vm.prank(submitter);
        market.withdraw();
        uint256 afterAll = submitter.balance + self.balance + nodes.getNode(self).stake;
        assertEq(before - afterAll, 3 * STAKE - COMP, "the pair loses every slash but the compensation");
    }

    /// The slash is bounded by the claim stake too: with expire after a silent claim the submitter gets its
    /// escrow plus the compensation, no more.
    function test_attack_slash_farm_expire_bounded() public {
        Terms memory t = _submitAs(submitter, 2 ether, uint64(block.timestamp + 1 hours));
        vm.prank(operator);
        market.claimJob(_key(t));
        vm.warp(t.deadline);
        market.expire(t);
        assertEq(_submitterTake(), 2 ether + 0.2 ether, "escrow + 10 %");
        assertEq(market.balanceOf(treasury), 3 ether - 0.2 ether, "rest of the 1.5x stake to the treasury");
    }

    // ---------------------------------------------------------------- fee front-run

    /// The publisher sees a submitJob in the mempool and raises its fee in front of it: the submission reverts
    /// instead of leaving the node 1 wei.
    function test_attack_fee_front_run_reverts_submission() public {
        vm.prank(publisher);
        adapters.setFee(adapterId, uint96(PRICE - 1));
        uint64 d = uint64(block.timestamp + 1 hours);
        vm.expectRevert(
            abi.encodeWithSelector(MarketBase.AdapterFeeAboveMax.selector, adapterId, PRICE - 1, ADAPTER_FEE)
        );
        vm.prank(submitter);
        market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, d);
        assertEq(market.jobCount(), 0, "no job");
        assertEq(address(market).balance, 0, "no escrow taken");
    }

    /// A fee raised after submission changes nothing for jobs already submitted.
    function test_attack_fee_raise_after_submission_is_ignored() public {
        Terms memory t = _submit();
        vm.prank(publisher);
        adapters.setFee(adapterId, uint96(PRICE - 1));
        _claim(t);
        _complete(t, "x");
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        market.withdrawAdapterFees(adapterId);
        assertEq(market.balanceOf(publisher), ADAPTER_FEE, "the fee of the terms");
        assertEq(market.balanceOf(operator), PRICE - ADAPTER_FEE - PRICE / 100, "node keeps its share");
    }

    // ---------------------------------------------------------------- 30-day squat

    /// A node claims a 30-day job and goes silent. After the service window anyone reclaims: the squatter is
    /// slashed, the job reopens, and another node serves it long before the deadline.
    function test_attack_30_day_squat() public {
        Terms memory t = _submitAs(submitter, PRICE, uint64(block.timestamp + 30 days));
        _claim(t);
        vm.warp(block.timestamp + SERVICE_WINDOW - 1);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.ServiceWindowOpen.selector, t.jobId, block.timestamp + 1));
        market.reclaim(t);
        vm.warp(block.timestamp + 1);
        uint256 stakeBefore = nodes.getNode(operator).stake;
        vm.prank(stranger);
        market.reclaim(t);
        assertEq(nodes.getNode(operator).stake, stakeBefore - STAKE, "squatter slashed");
        assertEq(_status(t.jobId), uint256(JobStatus.Open), "reopened");
        vm.prank(operator2);
        market.claimJob(_key(t));
        ResultItem[] memory items = _items(_one(t), "served");
        bytes memory sig = _signBatch(SIGNER2_KEY, items);
        vm.prank(operator2);
        market.submitResult(_entry(items[0]), sig);
        assertEq(_status(t.jobId), uint256(JobStatus.Resulted), "served by another node");
        assertLe(block.timestamp, t.submittedAt + 1 hours, "within the hour, not 30 days");
        // The squatter's late answer is refused.
        bytes memory lateSig = _signBatch(SIGNER_KEY, items);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Resulted));
        vm.prank(operator);
        market.submitResult(_entry(items[0]), lateSig);
    }

    /// The submitter cannot cancel a claimed job, but the squat can be broken without it.
    function test_attack_squat_submitter_gets_the_job_back_or_served() public {
        Terms memory t = _submitAs(submitter, PRICE, uint64(block.timestamp + 30 days));
        _claim(t);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Claimed));
        vm.prank(submitter);
        market.cancel(t);
        vm.warp(block.timestamp + SERVICE_WINDOW);
        vm.prank(submitter);
        market.reclaim(t);
        vm.prank(submitter);
        market.cancel(t);
        assertEq(market.balanceOf(submitter), PRICE + COMP, "escrow back + compensation");
    }

    // ---------------------------------------------------------------- reorgs: replayed or reordered claims

    /// The bytes of a claim naming job A's terms claim job A or nothing: with A taken they revert rather than
    /// fall through to a look-alike job B, and pointing them at another job's id fails on the terms hash.
    function test_attack_claim_bytes_for_job_a_cannot_claim_job_b() public {
        Terms memory a = _submit();
        Terms memory b = _submitAs(submitter, PRICE * 2, a.deadline); // another job, other terms
        bytes memory claimA = abi.encodeCall(JobMarket.claimJob, (_key(a)));
        vm.prank(operator2);
        market.claimJob(_key(a)); // a rival takes A first
        vm.prank(operator);
        (bool ok, bytes memory ret) = address(market).call(claimA);
        assertFalse(ok, "claim of a taken job accepted");
        assertEq(ret, abi.encodeWithSelector(MarketBase.WrongStatus.selector, a.jobId, JobStatus.Claimed), "why");
        // Re-point the claim at job B by editing the jobId bits of the key's head word.
        ClaimKey memory k = _key(a);
        k.head = (uint256(b.jobId) << 192) | (k.head & type(uint192).max);
        bytes memory edited = abi.encodeCall(JobMarket.claimJob, (k));
        vm.prank(operator);
        (ok, ret) = address(market).call(edited);
        assertFalse(ok, "edited claim accepted");
        assertEq(ret, abi.encodeWithSelector(MarketBase.TermsMismatch.selector, b.jobId), "terms mismatch");
        assertEq(_status(b.jobId), uint256(JobStatus.Open), "job B untouched");
        assertEq(nodes.getNode(operator).locked, 0, "no stake locked");
    }

    /// After a reorg, job id N belongs to another submission. The node's claim, re-broadcast with the terms it
    /// checked before the reorg, reverts instead of claiming the job it never looked at.
    function test_attack_reorg_replayed_claim_names_the_old_terms() public {
        uint256 snap = vm.snapshotState();
        Terms memory checked = _submit(); // what the node saw: job 1, price PRICE
        bytes memory claimTx = abi.encodeCall(JobMarket.claimJob, (_key(checked)));
        vm.revertToState(snap);
        // The reorged chain: job 1 is someone else's, for a price of 1 wei over the fees (hostile to nodes).
        Terms memory other = _submitAs(stranger_(), 0.0012 ether, uint64(block.timestamp + 1 hours));
        assertEq(other.jobId, checked.jobId, "same id, other job");
        vm.prank(operator);
        (bool ok, bytes memory ret) = address(market).call(claimTx);
        assertFalse(ok, "replayed claim accepted");
        assertEq(ret, abi.encodeWithSelector(MarketBase.TermsMismatch.selector, other.jobId), "terms mismatch");
        // The same bytes in a batch are skipped, and a batch of only those reverts NothingClaimed.
        vm.expectRevert(MarketBase.NothingClaimed.selector);
        vm.prank(operator);
        market.claimJobs(_keys(_one(checked)));
    }

    function stranger_() internal returns (address s) {
        s = stranger;
        vm.deal(s, 10 ether);
    }

    /// A claim mined, then reclaimed and taken by another node; the first node's claim tx re-included (a reorg
    /// reorders them) finds the job held by the other node and reverts; a batch skips it.
    function test_attack_reorg_claim_reincluded_after_reclaim_and_reopen() public {
        Terms memory t = _submit();
        bytes memory claimTx = abi.encodeCall(JobMarket.claimJob, (_key(t)));
        vm.prank(operator);
        (bool ok,) = address(market).call(claimTx);
        assertTrue(ok, "first claim");
        vm.warp(block.timestamp + SERVICE_WINDOW);
        market.reclaim(t);
        vm.prank(operator2);
        market.claimJob(_key(t));
        vm.prank(operator);
        bytes memory ret;
        (ok, ret) = address(market).call(claimTx);
        assertFalse(ok, "re-included claim accepted");
        assertEq(ret, abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Claimed), "why");
        (, address holder,,) = market.jobState(t.jobId);
        assertEq(holder, operator2, "the other node keeps it");
        // Its old result (signed before the reclaim) cannot take the other node's payment either.
        ResultItem[] memory items = _items(_one(t), "old");
        bytes memory sig = _signBatch(SIGNER_KEY, items);
        vm.expectRevert(MarketBase.NothingSettled.selector);
        vm.prank(operator);
        market.submitResults(_entries(items), sig);
    }

    /// A claim re-included after its job was cancelled and the id reused cannot happen (ids are never reused),
    /// and one re-included after a cancel reverts on the status.
    function test_attack_reorg_claim_after_cancel() public {
        Terms memory t = _submit();
        bytes memory claimTx = abi.encodeCall(JobMarket.claimJob, (_key(t)));
        vm.prank(submitter);
        market.cancel(t);
        vm.prank(operator);
        (bool ok, bytes memory ret) = address(market).call(claimTx);
        assertFalse(ok, "claim of a cancelled job");
        assertEq(ret, abi.encodeWithSelector(MarketBase.WrongStatus.selector, t.jobId, JobStatus.Cancelled), "why");
        assertEq(nodes.getNode(operator).locked, 0, "no stake locked");
    }

    // ---------------------------------------------------------------- batch signature reuse

    function _claimedBatch(uint256 n) internal returns (Terms[] memory ts) {
        ts = new Terms[](n);
        for (uint256 i; i < n; ++i) {
            ts[i] = _submit();
        }
        vm.prank(operator);
        market.claimJobs(_keys(ts));
    }

    function _expectWrongSigner(ResultItem[] memory items, bytes memory sig) internal {
        vm.prank(operator);
        (bool ok, bytes memory ret) =
            address(market).call(abi.encodeCall(JobMarket.submitResults, (_entries(items), sig)));
        assertFalse(ok, "reused signature accepted");
        assertEq(bytes4(ret), MarketBase.WrongSigner.selector, "wrong signer");
    }

    function test_attack_batch_signature_reused_for_other_batches() public {
        Terms[] memory ts = _claimedBatch(4);
        Terms[] memory three = new Terms[](3);
        (three[0], three[1], three[2]) = (ts[0], ts[1], ts[2]);
        ResultItem[] memory signed = _items(three, "answer");
        bytes memory sig = _signBatch(SIGNER_KEY, signed);

        // Subset.
        ResultItem[] memory subset = new ResultItem[](2);
        (subset[0], subset[1]) = (signed[0], signed[1]);
        _expectWrongSigner(subset, sig);
        // Superset.
        ResultItem[] memory superset = _items(ts, "answer");
        _expectWrongSigner(superset, sig);
        // Reordered.
        ResultItem[] memory reordered = new ResultItem[](3);
        (reordered[0], reordered[1], reordered[2]) = (signed[1], signed[0], signed[2]);
        _expectWrongSigner(reordered, sig);
        // Other output for one item.
        ResultItem[] memory otherOut = _items(three, "answer");
        otherOut[2].output = "forged";
        _expectWrongSigner(otherOut, sig);
        // Other proof hash.
        ResultItem[] memory otherProof = _items(three, "answer");
        otherProof[0].proofHash = keccak256("forged proof");
        _expectWrongSigner(otherProof, sig);
        // The same output by CID instead of inline with another hash.
        ResultItem[] memory byCid = _items(three, "");
        for (uint256 i; i < 3; ++i) {
            byCid[i].outputCid = CID;
            byCid[i].outputHash = keccak256("something else");
        }
        _expectWrongSigner(byCid, sig);
        // Nothing settled by any of these.
        for (uint256 i; i < 4; ++i) {
            assertEq(_status(ts[i].jobId), uint256(JobStatus.Claimed), "still claimed");
        }
        // The signed batch itself goes through, once.
        vm.prank(operator);
        assertEq(market.submitResults(_entries(signed), sig), 3, "signed batch");
        vm.expectRevert(MarketBase.NothingSettled.selector);
        vm.prank(operator);
        market.submitResults(_entries(signed), sig);
    }

    /// A signature for job 1 in this market cannot post job 1's result in another market with the very same
    /// terms (same registry, submitter, time, input): the EIP-712 domain binds it to one contract.
    function test_attack_signature_reused_in_another_market() public {
        Terms memory t = _submit();
        _claim(t);
        ResultItem[] memory items = _items(_one(t), "x");
        bytes memory sig = _signBatch(SIGNER_KEY, items);

        JobMarket m2 = _newMarket(_config());
        vm.deal(operator, 10 ether);
        NodeRegistry r2 = m2.nodeRegistry();
        vm.prank(operator);
        r2.register{value: 2 ether}(signer, BASE_MODEL, PEER_ID);
        vm.prank(submitter);
        m2.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, t.deadline);
        assertTrue(m2.termsMatch(t), "identical terms in the other market");
        vm.prank(operator);
        m2.claimJob(_key(t));
        vm.prank(operator);
        (bool ok, bytes memory ret) = address(m2).call(abi.encodeCall(JobMarket.submitResult, (_entry(items[0]), sig)));
        assertFalse(ok, "cross-market replay accepted");
        assertEq(bytes4(ret), MarketBase.WrongSigner.selector, "wrong signer");
        vm.prank(operator);
        market.submitResult(_entry(items[0]), sig);
        assertEq(_status(t.jobId), uint256(JobStatus.Resulted), "valid where it was signed");
    }

    /// Another node cannot post a result for a job it did not claim, even with a valid signature of its own.
    function test_attack_result_for_someone_elses_claim() public {
        Terms memory t = _submit();
        _claim(t);
        ResultItem[] memory items = _items(_one(t), "stolen");
        bytes memory sig = _signBatch(SIGNER2_KEY, items);
        vm.expectRevert(MarketBase.NothingSettled.selector);
        vm.prank(operator2);
        market.submitResults(_entries(items), sig);
        // Nor with the claimant's signature.
        bytes memory sig1 = _signBatch(SIGNER_KEY, items);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotClaimant.selector, t.jobId, operator2));
        vm.prank(operator2);
        market.submitResult(_entry(items[0]), sig1);
    }

    // ---------------------------------------------------------------- disputes

    function _resulted() internal returns (Terms memory t) {
        t = _submit();
        _claim(t);
        _complete(t, "honest answer");
    }

    function test_attack_dispute_by_non_validator() public {
        Terms memory t = _resulted();
        vm.deal(stranger, 1 ether);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotValidator.selector, stranger));
        vm.prank(stranger);
        market.dispute{value: DISPUTE_BOND}(t, "bafyevidence");
        // Not even the submitter or the publisher.
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotValidator.selector, submitter));
        vm.prank(submitter);
        market.dispute{value: DISPUTE_BOND}(t, "bafyevidence");
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW);
        assertEq(market.balanceOf(operator), PRICE - ADAPTER_FEE - PRICE / 100, "honest node paid");
    }

    function test_attack_dispute_by_validator_removed_since() public {
        Terms memory t = _resulted();
        adapters.setValidator(validator, false);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.NotValidator.selector, validator));
        vm.prank(validator);
        market.dispute{value: DISPUTE_BOND}(t, "bafyevidence");
        // A removed validator cannot vote on someone else's dispute either.
        vm.prank(validator2);
        market.dispute{value: DISPUTE_BOND}(t, "bafyevidence");
        vm.expectRevert();
        vm.prank(validator);
        arbiter.vote(t.jobId, true);
        assertEq(market.getDispute(t.jobId).verdict, 0, "no verdict from a removed validator");
    }

    function test_attack_arbiter_rules_twice() public {
        Terms memory t = _resulted();
        vm.prank(validator);
        market.dispute{value: DISPUTE_BOND}(t, "bafyevidence");
        vm.prank(address(arbiter));
        market.rule(t.jobId, false);
        vm.expectRevert(abi.encodeWithSelector(MarketBase.AlreadyRuled.selector, t.jobId));
        vm.prank(address(arbiter));
        market.rule(t.jobId, true);
        market.settleDispute(t);
        assertEq(_status(t.jobId), uint256(JobStatus.Final), "the first ruling holds");
        assertEq(market.balanceOf(submitter), 0, "no refund from a second ruling");
    }

    function test_attack_non_arbiter_rules() public {
        Terms memory t = _resulted();
        vm.prank(validator);
        market.dispute{value: DISPUTE_BOND}(t, "bafyevidence");
        address[3] memory who = [submitter, validator, deployer];
        for (uint256 i; i < who.length; ++i) {
            vm.expectRevert(abi.encodeWithSelector(MarketBase.NotArbiter.selector, who[i]));
            vm.prank(who[i]);
            market.rule(t.jobId, true);
        }
        assertEq(market.getDispute(t.jobId).verdict, 0, "unruled");
    }

    /// Disputing to grief: a failed dispute costs the challenger its bond, which goes to the node.
    function test_attack_frivolous_dispute_pays_the_node() public {
        Terms memory t = _resulted();
        vm.prank(validator);
        market.dispute{value: DISPUTE_BOND}(t, "bafyevidence");
        vm.prank(validator2);
        arbiter.vote(t.jobId, false);
        market.settleDispute(t);
        assertEq(market.balanceOf(operator), PRICE - ADAPTER_FEE - PRICE / 100 + DISPUTE_BOND, "node + bond");
        assertEq(market.balanceOf(validator), 0, "challenger lost the bond");
    }
}
