// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AdapterRegistry} from "./AdapterRegistry.sol";
import {IArbiter} from "./IArbiter.sol";

/// @notice The one market function the arbiter calls.
interface IRuledMarket {
    /// @notice Report the ruling on a disputed job (JobMarket.rule).
    function rule(uint256 jobId, bool fraud) external;
}

/// @title ValidatorArbiter
/// @notice The default arbiter: validators allowed now in the AdapterRegistry vote on a disputed result, each
///         after re-checking it itself; the first side to reach `quorum` votes wins and is reported to the market.
///         The challenger does not vote on its own dispute.
contract ValidatorArbiter is IArbiter {
    struct Case {
        address challenger;
        uint16 fraudVotes;
        uint16 honestVotes;
        bool open;
        bool decided;
    }

    IRuledMarket public immutable market;
    AdapterRegistry public immutable adapterRegistry;
    /// @notice Votes one side needs (k of the n validators).
    uint16 public immutable quorum;

    mapping(uint256 jobId => Case) private _cases;
    mapping(uint256 jobId => mapping(address validator => bool)) public hasVoted;

    event CaseOpened(uint256 indexed jobId, address indexed challenger, string evidenceCid);
    event Voted(uint256 indexed jobId, address indexed validator, bool fraud);
    event CaseDecided(uint256 indexed jobId, bool fraud);

    error NotMarket(address caller);
    error NotValidator(address caller);
    error NoOpenCase(uint256 jobId);
    error AlreadyVoted(uint256 jobId, address validator);
    error ChallengerCannotVote(uint256 jobId);
    error ZeroQuorum();

    /// @param market_ The JobMarket whose disputes this arbiter decides.
    /// @param adapterRegistry_ Where the allowed validators are listed.
    /// @param quorum_ Votes one side needs to win.
    constructor(address market_, address adapterRegistry_, uint16 quorum_) {
        if (quorum_ == 0) revert ZeroQuorum();
        market = IRuledMarket(market_);
        adapterRegistry = AdapterRegistry(adapterRegistry_);
        quorum = quorum_;
    }

    /// @inheritdoc IArbiter
    function openCase(uint256 jobId, address challenger, string calldata evidenceCid) external {
        if (msg.sender != address(market)) revert NotMarket(msg.sender);
        _cases[jobId] = Case({challenger: challenger, fraudVotes: 0, honestVotes: 0, open: true, decided: false});
        emit CaseOpened(jobId, challenger, evidenceCid);
    }

    /// @notice Vote on a disputed job as a validator allowed now: `fraud` when your own re-check of the result
    ///         fails. The vote that brings one side to `quorum` rules in the market.
    function vote(uint256 jobId, bool fraud) external {
        if (!adapterRegistry.isValidator(msg.sender)) revert NotValidator(msg.sender);
        Case storage c = _cases[jobId];
        if (!c.open || c.decided) revert NoOpenCase(jobId);
        if (msg.sender == c.challenger) revert ChallengerCannotVote(jobId);
        if (hasVoted[jobId][msg.sender]) revert AlreadyVoted(jobId, msg.sender);
        hasVoted[jobId][msg.sender] = true;
        if (fraud) ++c.fraudVotes;
        else ++c.honestVotes;
        emit Voted(jobId, msg.sender, fraud);
        if (c.fraudVotes >= quorum || c.honestVotes >= quorum) {
            c.decided = true;
            bool verdict = c.fraudVotes >= quorum;
            emit CaseDecided(jobId, verdict);
            market.rule(jobId, verdict);
        }
    }

    /// @notice A case's tally.
    function getCase(uint256 jobId) external view returns (Case memory) {
        return _cases[jobId];
    }
}
