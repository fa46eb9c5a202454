// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";

/// @notice The gas of one job's lifecycle (submitJob + claimJob + submitResult with a 256-byte output) in the
///         steady state: a first job has already run, so counters and pull balances are non-zero.
contract GasLifecycleTest is Fixture {
    /// @dev Regression ceiling for the three calls measured as separate transactions, which is what
    ///      `forge test --isolate` does (scripts/gas-report.sh runs it so): cold storage, 21,000 intrinsic gas
    ///      and calldata included, as in an Anvil receipt. Without --isolate the calls share one transaction and
    ///      warm storage, so the numbers are lower and the ceiling is loose; the isolated run is the real check.
    uint256 internal constant LIFECYCLE_CEILING = 260_000;

    function test_lifecycle_gas_steady_state() public {
        bytes memory output = _output(256);
        uint256 first = _submit();
        _claim(first);
        _complete(first, output);

        uint64 deadline = uint64(block.timestamp + 1 hours);
        bytes32 inputHash = keccak256(input);
        bytes memory sig;

        vm.prank(submitter);
        uint256 jobId = market.submitJob{value: PRICE}(adapterId, input, MAX_TOKENS, deadline);
        uint256 submitGas = vm.lastCallGas().gasTotalUsed;

        vm.prank(operator);
        market.claimJob(jobId);
        uint256 claimGas = vm.lastCallGas().gasTotalUsed;

        sig = _signDigest(SIGNER_KEY, market.resultDigest(jobId, inputHash, CONTENT_HASH, keccak256(output)));
        vm.prank(operator);
        market.submitResult(jobId, output, sig);
        uint256 resultGas = vm.lastCallGas().gasTotalUsed;

        emit log_named_uint("submitJob", submitGas);
        emit log_named_uint("claimJob", claimGas);
        emit log_named_uint("submitResult", resultGas);
        emit log_named_uint("lifecycle total", submitGas + claimGas + resultGas);
        assertLe(submitGas + claimGas + resultGas, LIFECYCLE_CEILING, "lifecycle gas regressed");
    }
}
