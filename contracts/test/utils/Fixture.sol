// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "./Test.sol";
import {AdapterRegistry} from "../../src/AdapterRegistry.sol";
import {NodeRegistry} from "../../src/NodeRegistry.sol";
import {JobMarket} from "../../src/JobMarket.sol";

/// @notice A deployed protocol with one adapter and one staked node, plus helpers for the job lifecycle.
abstract contract Fixture is Test {
    uint256 internal constant MIN_STAKE = 1 ether;
    uint64 internal constant UNSTAKE_DELAY = 1 hours;
    uint16 internal constant PROTOCOL_FEE_BPS = 100;
    uint256 internal constant CLAIM_STAKE = 0.1 ether;
    uint16 internal constant SLASH_TO_SUBMITTER_BPS = 5_000;
    uint96 internal constant ADAPTER_FEE = 0.001 ether;
    uint256 internal constant PRICE = 0.01 ether;
    uint32 internal constant MAX_TOKENS = 64;

    bytes32 internal constant BASE_MODEL = keccak256("tiny-llama");
    // A literal: sha256() is a precompile call, which would consume a pending vm.prank or vm.expectRevert.
    bytes32 internal constant CONTENT_HASH = 0x3dc34324562f4212c00a9347e3eea21acf5eb7263537971a538ee9f688f53654;
    string internal constant CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
    string internal constant PEER_ID = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    uint256 internal constant SIGNER_KEY = 0x5157e4;

    AdapterRegistry internal adapters;
    NodeRegistry internal nodes;
    JobMarket internal market;

    address internal deployer = address(this);
    address internal treasury = makeAddr("treasury");
    address internal publisher = makeAddr("publisher");
    address internal validator = makeAddr("validator");
    address internal submitter = makeAddr("submitter");
    address internal operator = makeAddr("operator");
    address internal stranger = makeAddr("stranger");
    address internal signer = vm.addr(SIGNER_KEY);

    uint256 internal adapterId;
    bytes internal input = bytes("Summarise: LoRA adapters are low-rank updates to a frozen base model.");

    function setUp() public virtual {
        adapters = new AdapterRegistry();
        nodes = new NodeRegistry(MIN_STAKE, UNSTAKE_DELAY);
        market = new JobMarket(
            address(adapters), address(nodes), treasury, PROTOCOL_FEE_BPS, CLAIM_STAKE, SLASH_TO_SUBMITTER_BPS
        );
        nodes.setMarket(address(market));

        vm.prank(publisher);
        adapterId = adapters.register(CID, CONTENT_HASH, BASE_MODEL, 8, 65_536, ADAPTER_FEE);

        vm.deal(operator, 10 ether);
        vm.prank(operator);
        nodes.register{value: 2 ether}(signer, BASE_MODEL, PEER_ID);

        vm.deal(submitter, 100 ether);
    }

    function _submit() internal returns (uint256 jobId) {
        return _submitAs(submitter, PRICE, uint64(block.timestamp + 1 hours));
    }

    function _submitAs(address who, uint256 price, uint64 deadline) internal returns (uint256 jobId) {
        vm.prank(who);
        jobId = market.submitJob{value: price}(adapterId, input, MAX_TOKENS, deadline);
    }

    function _claim(uint256 jobId) internal {
        vm.prank(operator);
        market.claimJob(jobId);
    }

    function _signResult(JobMarket m, uint256 key, uint256 jobId, bytes memory output)
        internal
        view
        returns (bytes memory)
    {
        return _signDigest(key, m.resultDigest(jobId, keccak256(input), CONTENT_HASH, keccak256(output)));
    }

    function _signDigest(uint256 key, bytes32 digest) internal pure returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, digest);
        return abi.encodePacked(r, s, v);
    }

    function _output(uint256 length) internal pure returns (bytes memory out) {
        out = new bytes(length);
        for (uint256 i; i < length; ++i) {
            // Exact: 0x41 + i % 26 <= 0x5a.
            // forge-lint: disable-next-line(unsafe-typecast)
            out[i] = bytes1(uint8(0x41 + i % 26));
        }
    }

    function _complete(uint256 jobId, bytes memory output) internal {
        bytes memory sig = _signResult(market, SIGNER_KEY, jobId, output);
        vm.prank(operator);
        market.submitResult(jobId, output, sig);
    }

    /// @dev Sum of every pull balance the tests know about.
    function _balancesOf(address[] memory accounts) internal view returns (uint256 sum) {
        for (uint256 i; i < accounts.length; ++i) {
            sum += market.balanceOf(accounts[i]);
        }
    }
}
