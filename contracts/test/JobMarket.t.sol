// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Fixture} from "./utils/Fixture.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";

contract JobMarketTest is Fixture {
    string internal constant INPUT_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    bytes32 internal constant INPUT_HASH = keccak256("large input");

    // ---------------------------------------------------------------- constructor and owner

    function test_constructor_sets_parameters() public view {
        assertEq(address(market.adapterRegistry()), address(adapters), "adapters");
        assertEq(address(market.nodeRegistry()), address(nodes), "nodes");
        assertEq(market.treasury(), treasury, "treasury");
        assertEq(market.protocolFeeBps(), PROTOCOL_FEE_BPS, "fee");
        assertEq(market.claimStake(), CLAIM_STAKE, "claim stake");
        assertEq(market.slashToSubmitterBps(), SLASH_TO_SUBMITTER_BPS, "slash share");
        assertEq(market.owner(), deployer, "owner");
    }

    function test_constructor_reverts_on_bad_parameters() public {
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        new JobMarket(address(0), address(nodes), treasury, 0, 0, 0);
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        new JobMarket(address(adapters), address(0), treasury, 0, 0, 0);
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        new JobMarket(address(adapters), address(nodes), address(0), 0, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ProtocolFeeTooHigh.selector, uint16(1_001), uint16(1_000)));
        new JobMarket(address(adapters), address(nodes), treasury, 1_001, 0, 0);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.SlashShareTooHigh.selector, uint16(10_001)));
        new JobMarket(address(adapters), address(nodes), treasury, 0, 0, 10_001);
    }

    function test_setProtocolFee() public {
        vm.expectEmit(false, false, false, true, address(market));
        emit JobMarket.ProtocolFeeUpdated(250);
        market.setProtocolFee(250);
        assertEq(market.protocolFeeBps(), 250, "fee");
        vm.expectRevert(abi.encodeWithSelector(JobMarket.ProtocolFeeTooHigh.selector, uint16(1_001), uint16(1_000)));
        market.setProtocolFee(1_001);
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        market.setProtocolFee(0);
    }

    function test_setTreasury() public {
        vm.expectEmit(true, false, false, true, address(market));
        emit JobMarket.TreasuryUpdated(stranger);
        market.setTreasury(stranger);
        assertEq(market.treasury(), stranger, "treasury");
        vm.expectRevert(JobMarket.ZeroAddress.selector);
        market.setTreasury(address(0));
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, stranger));
        vm.prank(stranger);
        market.setTreasury(stranger);
    }

    function test_protocol_fee_change_does_not_touch_submitted_jobs() public {
        uint256 jobId = _submit();
        market.setProtocolFee(1_000);
        _claim(jobId);
        _complete(jobId, _output(8));
        assertEq(market.balanceOf(treasury), PRICE * PROTOCOL_FEE_BPS / 10_000, "snapshotted fee");
    }

    // ---------------------------------------------------------------- submit

    function test_submitJob_escrows_and_emits() public {
        uint64 deadline = uint64(block.timestamp + 1 hours);
        vm.expectEmit(true, true, true, true, address(market));
        emit JobMarket.JobSubmitted(
            1, submitter, adapterId, CONTENT_HASH, keccak256(input), input, "", MAX_TOKENS, deadline, PRICE
        );
        uint256 jobId = _submit();
        assertEq(jobId, 1, "first id");
        assertEq(market.jobCount(), 1, "count");
        assertEq(address(market).balance, PRICE, "escrow");
        JobMarket.Job memory j = market.getJob(jobId);
        assertEq(j.submitter, submitter, "submitter");
        assertEq(j.node, address(0), "node");
        assertEq(j.adapterId, adapterId, "adapter");
        assertEq(j.adapterHash, CONTENT_HASH, "adapter hash");
        assertEq(j.inputHash, keccak256(input), "input hash");
        assertEq(j.price, PRICE, "price");
        assertEq(j.adapterFee, ADAPTER_FEE, "adapter fee");
        assertEq(j.protocolFeeBps, PROTOCOL_FEE_BPS, "protocol fee");
        assertEq(j.maxTokens, MAX_TOKENS, "max tokens");
        assertEq(j.deadline, deadline, "deadline");
        assertTrue(j.status == JobMarket.JobStatus.Open, "open");
        assertEq(_submit(), 2, "second id");
    }

    function test_submitJob_snapshots_adapter_fee() public {
        uint256 jobId = _submit();
        vm.prank(publisher);
        adapters.setFee(adapterId, 0.005 ether);
        _claim(jobId);
        _complete(jobId, _output(4));
        assertEq(market.balanceOf(publisher), ADAPTER_FEE, "fee at submission");
    }

    function test_submitJob_reverts_on_bad_input() public {
        uint64 deadline = uint64(block.timestamp + 1 hours);
        vm.startPrank(submitter);
        vm.expectRevert(JobMarket.EmptyInput.selector);
        market.submitJob{value: PRICE}(adapterId, "", MAX_TOKENS, deadline);
        bytes memory big = new bytes(16 * 1024 + 1);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.PayloadTooLarge.selector, big.length, 16 * 1024));
        market.submitJob{value: PRICE}(adapterId, big, MAX_TOKENS, deadline);
        vm.expectRevert(JobMarket.ZeroMaxTokens.selector);
        market.submitJob{value: PRICE}(adapterId, input, 0, deadline);
        vm.stopPrank();
    }

    function test_submitJob_reverts_on_bad_deadline() public {
        vm.warp(10_000);
        vm.startPrank(submitter);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlineInPast.selector, uint64(10_000), 10_000));
        market.submitJob{value: PRICE}(adapterId, input, MAX_TOKENS, 10_000);
        uint64 far = uint64(10_000 + 30 days + 1);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlineTooFar.selector, far, 10_000 + 30 days));
        market.submitJob{value: PRICE}(adapterId, input, MAX_TOKENS, far);
        vm.stopPrank();
    }

    function test_submitJob_reverts_on_bad_adapter() public {
        uint64 deadline = uint64(block.timestamp + 1 hours);
        vm.startPrank(submitter);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownAdapter.selector, 99));
        market.submitJob{value: PRICE}(99, input, MAX_TOKENS, deadline);
        uint256 tooBig = uint256(type(uint32).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownAdapter.selector, tooBig));
        market.submitJob{value: PRICE}(tooBig, input, MAX_TOKENS, deadline);
        vm.stopPrank();
        vm.prank(publisher);
        adapters.retire(adapterId);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.AdapterRetired.selector, adapterId));
        vm.prank(submitter);
        market.submitJob{value: PRICE}(adapterId, input, MAX_TOKENS, deadline);
    }

    function test_submitJob_reverts_on_bad_price() public {
        uint64 deadline = uint64(block.timestamp + 1 hours);
        // A price that exactly covers the adapter fee and the protocol fee leaves nothing for the node.
        uint256 bare = ADAPTER_FEE + (ADAPTER_FEE * PROTOCOL_FEE_BPS) / (10_000 - PROTOCOL_FEE_BPS);
        vm.startPrank(submitter);
        vm.expectRevert(
            abi.encodeWithSelector(JobMarket.PriceTooLow.selector, bare, ADAPTER_FEE, bare * PROTOCOL_FEE_BPS / 10_000)
        );
        market.submitJob{value: bare}(adapterId, input, MAX_TOKENS, deadline);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.PriceTooLow.selector, 0, ADAPTER_FEE, 0));
        market.submitJob{value: 0}(adapterId, input, MAX_TOKENS, deadline);
        uint256 huge = uint256(type(uint96).max) + 1;
        vm.deal(submitter, huge);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.PriceTooHigh.selector, huge));
        market.submitJob{value: huge}(adapterId, input, MAX_TOKENS, deadline);
        vm.stopPrank();
    }

    function test_minPrice_is_enough_and_tight() public {
        uint256 p = market.minPrice(adapterId);
        _submitAs(submitter, p, uint64(block.timestamp + 1 hours));
        uint256 protocolAmount = (p - 1) * PROTOCOL_FEE_BPS / 10_000;
        assertLe(p - 1, ADAPTER_FEE + protocolAmount + 1, "one wei less is at most one wei above the floor");
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownAdapter.selector, 99));
        market.minPrice(99);
    }

    function test_submitJobByCid() public {
        uint64 deadline = uint64(block.timestamp + 1 hours);
        vm.expectEmit(true, true, true, true, address(market));
        emit JobMarket.JobSubmitted(
            1, submitter, adapterId, CONTENT_HASH, INPUT_HASH, "", INPUT_CID, MAX_TOKENS, deadline, PRICE
        );
        vm.prank(submitter);
        uint256 jobId = market.submitJobByCid{value: PRICE}(adapterId, INPUT_CID, INPUT_HASH, MAX_TOKENS, deadline);
        assertEq(market.getJob(jobId).inputHash, INPUT_HASH, "input hash");
    }

    function test_submitJobByCid_reverts() public {
        uint64 deadline = uint64(block.timestamp + 1 hours);
        vm.startPrank(submitter);
        vm.expectRevert(JobMarket.InvalidCid.selector);
        market.submitJobByCid{value: PRICE}(adapterId, "", INPUT_HASH, MAX_TOKENS, deadline);
        vm.expectRevert(JobMarket.InvalidCid.selector);
        market.submitJobByCid{value: PRICE}(adapterId, string(new bytes(129)), INPUT_HASH, MAX_TOKENS, deadline);
        vm.expectRevert(JobMarket.ZeroHash.selector);
        market.submitJobByCid{value: PRICE}(adapterId, INPUT_CID, bytes32(0), MAX_TOKENS, deadline);
        vm.stopPrank();
    }

    // ---------------------------------------------------------------- cancel

    function test_cancel_refunds_to_pull_balance() public {
        uint256 jobId = _submit();
        vm.expectEmit(true, false, false, true, address(market));
        emit JobMarket.JobCancelled(jobId);
        vm.prank(submitter);
        market.cancel(jobId);
        assertTrue(market.getJob(jobId).status == JobMarket.JobStatus.Cancelled, "cancelled");
        assertEq(market.balanceOf(submitter), PRICE, "refund");
    }

    function test_cancel_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownJob.selector, 7));
        market.cancel(7);
        uint256 jobId = _submit();
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotSubmitter.selector, jobId, stranger));
        vm.prank(stranger);
        market.cancel(jobId);
        _claim(jobId);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.WrongStatus.selector, jobId, JobMarket.JobStatus.Claimed));
        vm.prank(submitter);
        market.cancel(jobId);
    }

    // ---------------------------------------------------------------- claim

    function test_claimJob_locks_stake() public {
        uint256 jobId = _submit();
        vm.expectEmit(true, true, false, true, address(market));
        emit JobMarket.JobClaimed(jobId, operator);
        _claim(jobId);
        JobMarket.Job memory j = market.getJob(jobId);
        assertTrue(j.status == JobMarket.JobStatus.Claimed, "claimed");
        assertEq(j.node, operator, "node");
        assertEq(nodes.getNode(operator).locked, CLAIM_STAKE, "locked");
    }

    function test_claimJob_reverts_on_status_and_deadline() public {
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownJob.selector, 1));
        _claim(1);
        uint256 jobId = _submit();
        _claim(jobId);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.WrongStatus.selector, jobId, JobMarket.JobStatus.Claimed));
        _claim(jobId);
        uint256 late = _submit();
        uint64 deadline = market.getJob(late).deadline;
        vm.warp(deadline);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlinePassed.selector, late, deadline));
        _claim(late);
    }

    function test_claimJob_reverts_for_ineligible_nodes() public {
        uint256 jobId = _submit();
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NodeNotEligible.selector, stranger));
        vm.prank(stranger);
        market.claimJob(jobId);

        // Serving another base model.
        vm.prank(operator);
        nodes.update(signer, keccak256("other-model"), PEER_ID);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NodeNotEligible.selector, operator));
        _claim(jobId);
        vm.prank(operator);
        nodes.update(signer, BASE_MODEL, PEER_ID);

        // Not enough free stake: unstake all but 0.05 ether (also drops below the minimum).
        vm.prank(operator);
        nodes.requestUnstake(2 ether - 0.05 ether);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NodeNotEligible.selector, operator));
        _claim(jobId);
    }

    // ---------------------------------------------------------------- result

    function test_submitResult_pays_out() public {
        uint256 jobId = _submit();
        _claim(jobId);
        bytes memory output = _output(256);
        uint256 protocolAmount = PRICE * PROTOCOL_FEE_BPS / 10_000;
        uint256 nodeAmount = PRICE - ADAPTER_FEE - protocolAmount;
        vm.expectEmit(true, true, false, true, address(market));
        emit JobMarket.ResultSubmitted(
            jobId, operator, keccak256(output), output, "", nodeAmount, ADAPTER_FEE, protocolAmount
        );
        _complete(jobId, output);
        assertTrue(market.getJob(jobId).status == JobMarket.JobStatus.Completed, "completed");
        assertEq(market.balanceOf(operator), nodeAmount, "node");
        assertEq(market.balanceOf(publisher), ADAPTER_FEE, "publisher");
        assertEq(market.balanceOf(treasury), protocolAmount, "treasury");
        assertEq(nodes.getNode(operator).locked, 0, "unlocked");
        assertEq(address(market).balance, PRICE, "escrow became balances");
    }

    function test_submitResult_splits_adapter_fee_among_payees() public {
        address a = makeAddr("payee-a");
        address b = makeAddr("payee-b");
        address c = makeAddr("payee-c");
        address[] memory payees = new address[](3);
        (payees[0], payees[1], payees[2]) = (a, b, c);
        uint16[] memory shares = new uint16[](3);
        (shares[0], shares[1], shares[2]) = (3_333, 3_333, 3_334);
        vm.prank(publisher);
        adapterId = adapters.registerWithPayees(CID, CONTENT_HASH, BASE_MODEL, 8, 1, 1_000_001, payees, shares);
        uint256 jobId = _submit();
        _claim(jobId);
        _complete(jobId, _output(16));
        uint256 pa = market.balanceOf(a);
        uint256 pb = market.balanceOf(b);
        uint256 pc = market.balanceOf(c);
        assertEq(pa, uint256(1_000_001) * 3_333 / 10_000, "a");
        assertEq(pb, uint256(1_000_001) * 3_333 / 10_000, "b");
        assertEq(pa + pb + pc, 1_000_001, "whole fee paid, dust to the last payee");
        assertEq(market.balanceOf(publisher), 0, "publisher gets nothing directly");
    }

    function test_submitResult_with_zero_adapter_and_protocol_fee() public {
        market.setProtocolFee(0);
        vm.prank(publisher);
        adapters.setFee(adapterId, 0);
        uint256 jobId = _submitAs(submitter, 1, uint64(block.timestamp + 1 hours));
        _claim(jobId);
        _complete(jobId, "");
        assertEq(market.balanceOf(operator), 1, "node gets all");
        assertEq(market.balanceOf(treasury), 0, "no protocol fee");
    }

    function test_submitResult_accepts_separate_signer_and_rotated_signer() public {
        uint256 jobId = _submit();
        _claim(jobId);
        uint256 newKey = 0xBEEF;
        vm.prank(operator);
        nodes.update(vm.addr(newKey), BASE_MODEL, PEER_ID);
        bytes memory output = _output(8);
        bytes memory oldSig = _signResult(market, SIGNER_KEY, jobId, output);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.WrongSigner.selector, signer, vm.addr(newKey)));
        vm.prank(operator);
        market.submitResult(jobId, output, oldSig);
        bytes memory newSig = _signResult(market, newKey, jobId, output);
        vm.prank(operator);
        market.submitResult(jobId, output, newSig);
    }

    function test_submitResult_reverts_on_status_caller_deadline() public {
        bytes memory output = _output(8);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownJob.selector, 1));
        vm.prank(operator);
        market.submitResult(1, output, "");
        uint256 jobId = _submit();
        vm.expectRevert(abi.encodeWithSelector(JobMarket.WrongStatus.selector, jobId, JobMarket.JobStatus.Open));
        vm.prank(operator);
        market.submitResult(jobId, output, "");
        _claim(jobId);
        bytes memory sig = _signResult(market, SIGNER_KEY, jobId, output);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.NotClaimant.selector, jobId, stranger));
        vm.prank(stranger);
        market.submitResult(jobId, output, sig);
        uint64 deadline = market.getJob(jobId).deadline;
        vm.warp(deadline);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlinePassed.selector, jobId, deadline));
        vm.prank(operator);
        market.submitResult(jobId, output, sig);
    }

    function test_submitResult_reverts_on_bad_signature_or_payload() public {
        uint256 jobId = _submit();
        _claim(jobId);
        bytes memory output = _output(8);
        vm.startPrank(operator);
        vm.expectRevert(JobMarket.MalformedSignature.selector);
        market.submitResult(jobId, output, hex"1234");
        // Signed by another key.
        bytes memory wrong = _signResult(market, 0xBAD, jobId, output);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.WrongSigner.selector, vm.addr(0xBAD), signer));
        market.submitResult(jobId, output, wrong);
        // Signature over a different output.
        bytes memory sig = _signResult(market, SIGNER_KEY, jobId, output);
        vm.expectRevert();
        market.submitResult(jobId, _output(9), sig);
        bytes memory big = new bytes(16 * 1024 + 1);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.PayloadTooLarge.selector, big.length, 16 * 1024));
        market.submitResult(jobId, big, sig);
        // A high-s (malleated) copy of a valid signature is rejected.
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(SIGNER_KEY, market.resultDigest(jobId, keccak256(input), CONTENT_HASH, keccak256(output)));
        uint256 n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
        bytes memory malleated = abi.encodePacked(r, bytes32(n - uint256(s)), v == 27 ? uint8(28) : uint8(27));
        vm.expectRevert(JobMarket.MalformedSignature.selector);
        market.submitResult(jobId, output, malleated);
        vm.stopPrank();
    }

    function test_submitResultByCid() public {
        uint256 jobId = _submit();
        _claim(jobId);
        bytes32 outputHash = keccak256("large output");
        bytes memory sig =
            _signDigest(SIGNER_KEY, market.resultDigest(jobId, keccak256(input), CONTENT_HASH, outputHash));
        uint256 protocolAmount = PRICE * PROTOCOL_FEE_BPS / 10_000;
        vm.expectEmit(true, true, false, true, address(market));
        emit JobMarket.ResultSubmitted(
            jobId,
            operator,
            outputHash,
            "",
            INPUT_CID,
            PRICE - ADAPTER_FEE - protocolAmount,
            ADAPTER_FEE,
            protocolAmount
        );
        vm.prank(operator);
        market.submitResultByCid(jobId, INPUT_CID, outputHash, sig);
        assertTrue(market.getJob(jobId).status == JobMarket.JobStatus.Completed, "completed");
    }

    function test_submitResultByCid_reverts() public {
        uint256 jobId = _submit();
        _claim(jobId);
        vm.startPrank(operator);
        vm.expectRevert(JobMarket.InvalidCid.selector);
        market.submitResultByCid(jobId, "", keccak256("x"), "");
        vm.expectRevert(JobMarket.ZeroHash.selector);
        market.submitResultByCid(jobId, INPUT_CID, bytes32(0), "");
        vm.stopPrank();
    }

    function test_completed_job_cannot_be_paid_twice() public {
        uint256 jobId = _submit();
        _claim(jobId);
        bytes memory output = _output(32);
        bytes memory sig = _signResult(market, SIGNER_KEY, jobId, output);
        vm.prank(operator);
        market.submitResult(jobId, output, sig);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.WrongStatus.selector, jobId, JobMarket.JobStatus.Completed));
        vm.prank(operator);
        market.submitResult(jobId, output, sig);
        vm.warp(block.timestamp + 2 hours);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.WrongStatus.selector, jobId, JobMarket.JobStatus.Completed));
        market.expire(jobId);
    }

    // ---------------------------------------------------------------- expire

    function test_expire_open_job_refunds() public {
        uint256 jobId = _submit();
        vm.warp(block.timestamp + 1 hours);
        vm.expectEmit(true, false, false, true, address(market));
        emit JobMarket.JobExpired(jobId, PRICE, 0);
        vm.prank(stranger);
        market.expire(jobId);
        assertEq(market.balanceOf(submitter), PRICE, "refund");
        assertTrue(market.getJob(jobId).status == JobMarket.JobStatus.Expired, "expired");
    }

    function test_expire_claimed_job_slashes_claimant() public {
        uint256 jobId = _submit();
        _claim(jobId);
        vm.warp(block.timestamp + 1 hours);
        uint256 toSubmitter = CLAIM_STAKE * SLASH_TO_SUBMITTER_BPS / 10_000;
        vm.expectEmit(true, false, false, true, address(market));
        emit JobMarket.JobExpired(jobId, PRICE + toSubmitter, CLAIM_STAKE);
        market.expire(jobId);
        assertEq(market.balanceOf(submitter), PRICE + toSubmitter, "refund + slash share");
        assertEq(market.balanceOf(treasury), CLAIM_STAKE - toSubmitter, "treasury share");
        assertEq(nodes.getNode(operator).stake, 2 ether - CLAIM_STAKE, "stake slashed");
        assertEq(nodes.getNode(operator).locked, 0, "lock released");
        assertEq(address(market).balance, PRICE + CLAIM_STAKE, "market holds refund + slash");
    }

    function test_expire_reverts() public {
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownJob.selector, 3));
        market.expire(3);
        uint256 jobId = _submit();
        uint64 deadline = market.getJob(jobId).deadline;
        vm.expectRevert(abi.encodeWithSelector(JobMarket.DeadlineNotReached.selector, jobId, deadline));
        market.expire(jobId);
        vm.prank(submitter);
        market.cancel(jobId);
        vm.warp(deadline);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.WrongStatus.selector, jobId, JobMarket.JobStatus.Cancelled));
        market.expire(jobId);
    }

    // ---------------------------------------------------------------- withdraw, receive

    function test_withdraw_pays_balance_once() public {
        uint256 jobId = _submit();
        vm.prank(submitter);
        market.cancel(jobId);
        uint256 before = submitter.balance;
        vm.expectEmit(true, false, false, true, address(market));
        emit JobMarket.Withdrawn(submitter, PRICE);
        vm.prank(submitter);
        market.withdraw();
        assertEq(submitter.balance - before, PRICE, "paid");
        assertEq(market.balanceOf(submitter), 0, "zeroed");
        vm.expectRevert(JobMarket.NothingToWithdraw.selector);
        vm.prank(submitter);
        market.withdraw();
    }

    function test_withdraw_reverts_when_receiver_rejects() public {
        RejectingSubmitter r = new RejectingSubmitter(market);
        vm.deal(address(r), 1 ether);
        uint256 jobId = r.submit(adapterId, input, PRICE);
        r.cancel(jobId);
        vm.expectRevert(abi.encodeWithSelector(JobMarket.TransferFailed.selector, address(r), PRICE));
        r.withdraw();
    }

    function test_treasury_income_is_withdrawable_and_follows_setTreasury() public {
        uint256 jobId = _submit();
        _claim(jobId);
        _complete(jobId, _output(8));
        uint256 fee = PRICE * PROTOCOL_FEE_BPS / 10_000;
        assertEq(market.balanceOf(treasury), fee, "accrued");

        // A new treasury gets future income; what the old one earned stays withdrawable by it.
        market.setTreasury(stranger);
        assertEq(market.balanceOf(treasury), fee, "old treasury keeps its income");
        assertEq(market.balanceOf(stranger), 0, "new treasury starts empty");
        jobId = _submit();
        _claim(jobId);
        _complete(jobId, _output(8));
        assertEq(market.balanceOf(stranger), fee, "new treasury earns");

        uint256 before = treasury.balance;
        vm.prank(treasury);
        market.withdraw();
        assertEq(treasury.balance - before, fee, "old treasury withdrew");
        before = stranger.balance;
        vm.prank(stranger);
        market.withdraw();
        assertEq(stranger.balance - before, fee, "new treasury withdrew");
        assertEq(market.balanceOf(stranger), 0, "accrual cleared");
        vm.expectRevert(JobMarket.NothingToWithdraw.selector);
        vm.prank(stranger);
        market.withdraw();
    }

    function test_treasury_income_beyond_96_bits_is_not_lost() public {
        market.setProtocolFee(1_000);
        uint256 price = type(uint96).max;
        uint256 fee = price * 1_000 / 10_000;
        vm.deal(submitter, price * 11);
        for (uint256 i; i < 11; ++i) {
            uint256 jobId = _submitAs(submitter, price, uint64(block.timestamp + 1 hours));
            _claim(jobId);
            _complete(jobId, _output(1));
        }
        assertEq(market.balanceOf(treasury), fee * 11, "all protocol income counted");
        vm.prank(treasury);
        market.withdraw();
        assertEq(treasury.balance, fee * 11, "all protocol income paid");
    }

    function test_receive_only_from_node_registry() public {
        vm.deal(stranger, 1 ether);
        vm.prank(stranger);
        (bool ok, bytes memory err) = address(market).call{value: 1}("");
        assertFalse(ok, "plain transfer rejected");
        assertEq(err, abi.encodeWithSelector(JobMarket.UnexpectedPayment.selector, stranger), "error");
    }

    // ---------------------------------------------------------------- views

    function test_resultDigest_is_eip712() public view {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("OpenLoRA"),
                keccak256("1"),
                block.chainid,
                address(market)
            )
        );
        assertEq(market.domainSeparator(), domain, "domain separator");
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Result(uint256 jobId,bytes32 inputHash,bytes32 adapterHash,bytes32 outputHash)"),
                uint256(7),
                bytes32(uint256(1)),
                bytes32(uint256(2)),
                bytes32(uint256(3))
            )
        );
        bytes32 expected = keccak256(abi.encodePacked("\x19\x01", domain, structHash));
        assertEq(
            market.resultDigest(7, bytes32(uint256(1)), bytes32(uint256(2)), bytes32(uint256(3))), expected, "digest"
        );
        assertEq(
            market.RESULT_TYPEHASH(),
            keccak256("Result(uint256 jobId,bytes32 inputHash,bytes32 adapterHash,bytes32 outputHash)"),
            "typehash"
        );
    }

    function test_getJob_unknown_is_empty() public view {
        JobMarket.Job memory j = market.getJob(42);
        assertTrue(j.status == JobMarket.JobStatus.None, "none");
        assertEq(j.submitter, address(0), "submitter");
        assertEq(j.adapterHash, bytes32(0), "hash");
    }

    function test_adapter_registry_errors_are_not_needed_to_decode_market_errors() public {
        // The market reports adapter problems with its own errors (so clients need only its ABI).
        vm.expectRevert(abi.encodeWithSelector(JobMarket.UnknownAdapter.selector, 0));
        vm.prank(submitter);
        market.submitJob{value: PRICE}(0, input, MAX_TOKENS, uint64(block.timestamp + 60));
        AdapterRegistry.Adapter memory a = adapters.getAdapter(adapterId);
        assertEq(a.contentHash, CONTENT_HASH, "registry still answers");
    }
}

/// @dev A submitter contract without a receive function: its withdrawals must fail loudly, not silently.
contract RejectingSubmitter {
    JobMarket internal immutable market;

    constructor(JobMarket market_) {
        market = market_;
    }

    function submit(uint256 adapterId, bytes calldata input, uint256 price) external returns (uint256) {
        return market.submitJob{value: price}(adapterId, input, 8, uint64(block.timestamp + 1 hours));
    }

    function cancel(uint256 jobId) external {
        market.cancel(jobId);
    }

    function withdraw() external {
        market.withdraw();
    }
}
