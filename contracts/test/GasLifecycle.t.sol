// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {ResultItem, Terms} from "../src/lib/JobTypes.sol";

/// @notice Gas of one job's lifecycle and of a node's batched claims + results, in the steady state (a first
///         round has run, so counters, balances and held-earnings words are non-zero). scripts/gas-report.sh runs
///         this with --isolate (each call its own transaction, as Anvil receipts show) and on Anvil.
contract GasLifecycleTest is Fixture {
    uint256 internal constant LIFECYCLE_CEILING = 160_000;

    function test_lifecycle_gas_steady_state() public {
        bytes memory output = _output(256);
        Terms memory first = _submit();
        _claim(first);
        _complete(first, output);
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW + 1);

        uint64 deadline = uint64(block.timestamp + 1 hours);
        vm.prank(submitter);
        uint256 jobId = market.submitJob{value: PRICE}(adapterId, ADAPTER_FEE, input, MAX_TOKENS, deadline);
        uint256 submitGas = vm.lastCallGas().gasTotalUsed;
        Terms memory t = _terms(submitter, jobId, PRICE, deadline);

        vm.prank(operator);
        market.claimJob(t);
        uint256 claimGas = vm.lastCallGas().gasTotalUsed;

        ResultItem[] memory one = new ResultItem[](1);
        one[0] = _item(t, output);
        bytes memory sig = _signBatch(SIGNER_KEY, one);
        vm.prank(operator);
        market.submitResult(one[0], sig);
        uint256 resultGas = vm.lastCallGas().gasTotalUsed;

        emit log_named_uint("submitJob", submitGas);
        emit log_named_uint("claimJob", claimGas);
        emit log_named_uint("submitResult", resultGas);
        emit log_named_uint("lifecycle total", submitGas + claimGas + resultGas);
        assertLe(submitGas + claimGas + resultGas, LIFECYCLE_CEILING, "lifecycle gas regressed");
    }

    function test_batch10_gas() public {
        _batchRound(10, 40_000);
    }

    function test_batch100_gas() public {
        _batchRound(100, 30_000);
    }

    function _batchRound(uint256 n, uint256 ceilingPerJob) internal {
        bytes memory output = _output(256);
        _round(n, output); // warm-up: words and balances become non-zero
        vm.warp(block.timestamp + 2 * CHALLENGE_WINDOW + 1);
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
        market.claimJobs(ts);
        claimGas = vm.lastCallGas().gasTotalUsed;
        ResultItem[] memory items = new ResultItem[](n);
        for (uint256 i; i < n; ++i) {
            items[i] = _item(ts[i], output);
        }
        bytes memory sig = _signBatch(SIGNER_KEY, items);
        vm.prank(operator);
        market.submitResults(items, sig);
        resultGas = vm.lastCallGas().gasTotalUsed;
    }
}
