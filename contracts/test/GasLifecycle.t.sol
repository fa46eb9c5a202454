// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {ResultItem, Terms} from "../src/lib/JobTypes.sol";

/// @notice Gas of one job's lifecycle and of a node's batched claims + results (each result with a 256-byte output
///         and a proof hash), in the steady state: three warm-up rounds two challenge windows apart have run, so
///         counters and pull balances are non-zero and both buckets of the node's and the adapter's held-earnings
///         words are in use; each measured result then matures an older bucket into the pull balances
///         ("finalization included": earnings mature without a transaction of their own, the next credit or the
///         withdrawal does it). scripts/gas-report.sh runs this with --isolate (each call its own transaction, as
///         Anvil receipts show) and on Anvil.
/// forge-config: default.isolate = true
contract GasLifecycleTest is Fixture {
    // Regression ceilings: the achieved figures plus a small margin (the goals of issue 15 are 160,000,
    // 40,000 and 30,000; scripts/gas-report.sh reports them as met or missed).
    uint256 internal constant LIFECYCLE_CEILING = 199_500;
    uint256 internal constant BATCH10_CEILING_PER_JOB = 38_000;
    uint256 internal constant BATCH100_CEILING_PER_JOB = 29_500;
    /// @dev Results carry a proof hash, as a node with [verify].prove on posts them.
    bytes32 internal constant PROOF = keccak256("TOPLOC evidence bundle");

    function test_lifecycle_gas_steady_state() public {
        bytes memory output = _output(256);
        for (uint256 i; i < 3; ++i) {
            Terms memory w = _submit();
            _claim(w);
            _complete(w, output);
            vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW + 1);
        }

        uint64 deadline = uint64(block.timestamp + 1 hours);
        vm.prank(submitter);
        uint256 jobId = market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, deadline);
        uint256 submitGas = vm.lastCallGas().gasTotalUsed;
        Terms memory t = _terms(submitter, jobId, PRICE, deadline);

        vm.prank(operator);
        market.claimJob(_key(t));
        uint256 claimGas = vm.lastCallGas().gasTotalUsed;

        ResultItem[] memory one = new ResultItem[](1);
        one[0] = _item(t, output);
        one[0].proofHash = PROOF;
        bytes memory sig = _signBatch(SIGNER_KEY, one);
        vm.prank(operator);
        market.submitResult(_entry(one[0]), sig);
        uint256 resultGas = vm.lastCallGas().gasTotalUsed;

        emit log_named_uint("submitJob", submitGas);
        emit log_named_uint("claimJob", claimGas);
        emit log_named_uint("submitResult", resultGas);
        emit log_named_uint("lifecycle total", submitGas + claimGas + resultGas);
        assertLe(submitGas + claimGas + resultGas, LIFECYCLE_CEILING, "lifecycle gas regressed");
    }

    function test_batch10_gas() public {
        _batchRound(10, BATCH10_CEILING_PER_JOB);
    }

    function test_batch100_gas() public {
        _batchRound(100, BATCH100_CEILING_PER_JOB);
    }

    function _batchRound(uint256 n, uint256 ceilingPerJob) internal {
        bytes memory output = _output(256);
        for (uint256 i; i < 3; ++i) {
            _round(n, output); // warm-up: words and balances become non-zero, both held buckets in use
            vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW + 1);
        }
        (uint256 claimGas, uint256 resultGas) = _round(n, output);
        emit log_named_uint("claimJobs", claimGas);
        emit log_named_uint("submitResults", resultGas);
        emit log_named_uint("node gas per job", (claimGas + resultGas) / n);
        assertLe((claimGas + resultGas) / n, ceilingPerJob, "node gas per job regressed");
    }

    function _round(uint256 n, bytes memory output) internal returns (uint256 claimGas, uint256 resultGas) {
        Terms[] memory ts = new Terms[](n);
        for (uint256 i; i < n; ++i) {
            ts[i] = _submit();
        }
        vm.prank(operator);
        market.claimJobs(_keys(ts));
        claimGas = vm.lastCallGas().gasTotalUsed;
        ResultItem[] memory items = new ResultItem[](n);
        for (uint256 i; i < n; ++i) {
            items[i] = _item(ts[i], output);
            items[i].proofHash = PROOF;
        }
        bytes memory sig = _signBatch(SIGNER_KEY, items);
        vm.prank(operator);
        market.submitResults(_entries(items), sig);
        resultGas = vm.lastCallGas().gasTotalUsed;
    }
}
