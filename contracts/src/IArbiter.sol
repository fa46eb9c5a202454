// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IArbiter
/// @notice Decides disputed results for a JobMarket. The market calls `openCase` when a validator disputes a
///         result; the arbiter later calls `JobMarket.rule(jobId, fraud)` exactly once for that job.
interface IArbiter {
    /// @notice A result was disputed. `evidenceCid` names the challenger's evidence (e.g. a recomputed proof).
    function openCase(uint256 jobId, address challenger, string calldata evidenceCid) external;
}
