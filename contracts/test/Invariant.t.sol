// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "./utils/Test.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {JobMarket} from "../src/JobMarket.sol";

/// @notice Drives the protocol with random but mostly valid actions from a fixed cast of actors, and keeps
///         ghost records the invariants compare against.
contract Handler is Test {
    AdapterRegistry public immutable adapters;
    NodeRegistry public immutable nodes;
    JobMarket public immutable market;

    bytes32 internal constant BASE = keccak256("tiny-llama");
    bytes32 internal constant CONTENT_HASH = keccak256("adapter file");

    address[] public submitters;
    address[] public operators;
    uint256[] internal signerKeys;
    address[] public accounts; // everyone who can hold a pull balance in the market
    uint256[] public adapterIds;
    uint256[] public jobIds;
    bytes internal input = "prompt";

    mapping(uint256 jobId => uint256) public timesPaid;
    uint256 public completed;
    uint256 public ghostDeposited; // prices paid into escrow + slashed stake received
    uint256 public ghostWithdrawn;
    mapping(bytes4 => uint256) public calls;

    constructor(AdapterRegistry adapters_, NodeRegistry nodes_, JobMarket market_, address treasury) {
        adapters = adapters_;
        nodes = nodes_;
        market = market_;
        accounts.push(treasury);

        address publisher = makeAddr("inv-publisher");
        accounts.push(publisher);
        vm.prank(publisher);
        adapterIds.push(adapters.register("bafy-adapter-1", CONTENT_HASH, BASE, 8, 1, 0.001 ether));
        address[] memory payees = new address[](2);
        (payees[0], payees[1]) = (makeAddr("inv-payee-0"), makeAddr("inv-payee-1"));
        uint16[] memory shares = new uint16[](2);
        (shares[0], shares[1]) = (2_500, 7_500);
        accounts.push(payees[0]);
        accounts.push(payees[1]);
        vm.prank(publisher);
        adapterIds.push(adapters.registerWithPayees("bafy-adapter-2", CONTENT_HASH, BASE, 4, 1, 3, payees, shares));

        for (uint256 i; i < 3; ++i) {
            address s = makeAddr(string.concat("inv-submitter-", _digit(i)));
            vm.deal(s, 1_000 ether);
            submitters.push(s);
            accounts.push(s);

            address op = makeAddr(string.concat("inv-operator-", _digit(i)));
            uint256 key = uint256(keccak256(abi.encode("inv-signer", i)));
            vm.deal(op, 100 ether);
            vm.prank(op);
            // The third node serves another model and can never claim.
            nodes.register{value: 2 ether}(vm.addr(key), i == 2 ? keccak256("other") : BASE, "peer");
            operators.push(op);
            signerKeys.push(key);
            accounts.push(op);
        }
    }

    // ---------------------------------------------------------------- actions

    function submit(uint256 who, uint256 adapterSeed, uint256 price, uint256 duration) external {
        address s = submitters[who % submitters.length];
        uint256 adapterId = adapterIds[adapterSeed % adapterIds.length];
        price = bound(price, market.minPrice(adapterId), 5 ether);
        duration = bound(duration, 1, 2 days);
        vm.prank(s);
        // Exact: duration <= 2 days.
        // forge-lint: disable-next-line(unsafe-typecast)
        jobIds.push(market.submitJob{value: price}(adapterId, input, 16, uint64(block.timestamp + duration)));
        ghostDeposited += price;
        ++calls[this.submit.selector];
    }

    function cancel(uint256 jobSeed) external {
        if (jobIds.length == 0) return;
        uint256 jobId = jobIds[jobSeed % jobIds.length];
        JobMarket.Job memory j = market.getJob(jobId);
        vm.prank(j.submitter);
        try market.cancel(jobId) {
            ++calls[this.cancel.selector];
        } catch {}
    }

    function claim(uint256 jobSeed, uint256 nodeSeed) external {
        if (jobIds.length == 0) return;
        uint256 jobId = _recent(jobSeed);
        vm.prank(operators[nodeSeed % operators.length]);
        try market.claimJob(jobId) {
            ++calls[this.claim.selector];
        } catch {}
    }

    function result(uint256 jobSeed, uint256 outputLength, bool byCid) external {
        if (jobIds.length == 0) return;
        uint256 jobId = _recent(jobSeed);
        JobMarket.Job memory j = market.getJob(jobId);
        if (j.node == address(0)) return;
        uint256 key = _keyOf(j.node);
        bytes memory output = new bytes(bound(outputLength, 0, 300));
        bytes32 outputHash = keccak256(output);
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(key, market.resultDigest(jobId, j.inputHash, j.adapterHash, outputHash));
        bytes memory sig = abi.encodePacked(r, s, v);
        vm.prank(j.node);
        if (byCid) {
            try market.submitResultByCid(jobId, "bafy-output", outputHash, sig) {
                _paid(jobId);
            } catch {}
        } else {
            try market.submitResult(jobId, output, sig) {
                _paid(jobId);
            } catch {}
        }
    }

    function expire(uint256 jobSeed) external {
        if (jobIds.length == 0) return;
        uint256 jobId = jobIds[jobSeed % jobIds.length];
        bool claimed = market.getJob(jobId).status == JobMarket.JobStatus.Claimed;
        try market.expire(jobId) {
            if (claimed) ghostDeposited += market.claimStake();
            ++calls[this.expire.selector];
        } catch {}
    }

    function withdraw(uint256 who) external {
        address a = accounts[who % accounts.length];
        uint256 amount = market.balanceOf(a);
        vm.prank(a);
        try market.withdraw() {
            ghostWithdrawn += amount;
            ++calls[this.withdraw.selector];
        } catch {}
    }

    function warp(uint256 seconds_) external {
        vm.warp(block.timestamp + bound(seconds_, 1, 1 days));
    }

    function addStake(uint256 who, uint256 amount) external {
        address op = operators[who % operators.length];
        amount = bound(amount, 1, 1 ether);
        vm.prank(op);
        nodes.addStake{value: amount}();
    }

    function requestUnstake(uint256 who, uint256 amount) external {
        address op = operators[who % operators.length];
        uint256 free = nodes.freeStake(op);
        if (free == 0) return;
        vm.prank(op);
        nodes.requestUnstake(bound(amount, 1, free));
    }

    function withdrawUnstaked(uint256 who) external {
        address op = operators[who % operators.length];
        vm.prank(op);
        try nodes.withdrawUnstaked() {} catch {}
    }

    /// @dev A replay attempt: resubmit the result of an already completed job. Must never succeed.
    function replayResult(uint256 jobSeed) external {
        if (jobIds.length == 0) return;
        uint256 jobId = jobIds[jobSeed % jobIds.length];
        JobMarket.Job memory j = market.getJob(jobId);
        if (j.status != JobMarket.JobStatus.Completed) return;
        bytes memory output = "";
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(_keyOf(j.node), market.resultDigest(jobId, j.inputHash, j.adapterHash, keccak256(output)));
        vm.prank(j.node);
        try market.submitResult(jobId, output, abi.encodePacked(r, s, v)) {
            _paid(jobId);
        } catch {}
    }

    // ---------------------------------------------------------------- views for the invariants

    function jobCount() external view returns (uint256) {
        return jobIds.length;
    }

    function accountCount() external view returns (uint256) {
        return accounts.length;
    }

    function operatorCount() external view returns (uint256) {
        return operators.length;
    }

    // ---------------------------------------------------------------- internals

    /// @dev One of the last three jobs: claims and results then mostly find a job in the right state.
    function _recent(uint256 seed) private view returns (uint256) {
        uint256 n = jobIds.length < 3 ? jobIds.length : 3;
        return jobIds[jobIds.length - 1 - seed % n];
    }

    function _paid(uint256 jobId) private {
        ++timesPaid[jobId];
        ++completed;
        ++calls[this.result.selector];
    }

    function _keyOf(address operator) private view returns (uint256) {
        for (uint256 i; i < operators.length; ++i) {
            if (operators[i] == operator) return signerKeys[i];
        }
        revert("unknown operator");
    }

    function _digit(uint256 i) private pure returns (string memory) {
        bytes memory b = new bytes(1);
        // Exact: i < 3.
        // forge-lint: disable-next-line(unsafe-typecast)
        b[0] = bytes1(uint8(48 + i));
        return string(b);
    }
}

/// @notice Invariants over random action sequences: the contracts hold exactly what they owe, and no job is
///         paid twice.
contract InvariantTest is Test {
    /// @dev Forge's selector filter for invariant runs (same shape as forge-std's).
    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    AdapterRegistry internal adapters;
    NodeRegistry internal nodes;
    JobMarket internal market;
    Handler internal handler;

    function setUp() public {
        adapters = new AdapterRegistry();
        nodes = new NodeRegistry(1 ether, 1 hours);
        market = new JobMarket(address(adapters), address(nodes), makeAddr("inv-treasury"), 150, 0.2 ether, 4_000);
        nodes.setMarket(address(market));
        handler = new Handler(adapters, nodes, market, makeAddr("inv-treasury"));
    }

    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    /// @dev Only the actions: the handler's public getters would waste runs.
    function targetSelectors() public view returns (FuzzSelector[] memory selectors) {
        bytes4[] memory actions = new bytes4[](11);
        actions[0] = Handler.submit.selector;
        actions[1] = Handler.cancel.selector;
        actions[2] = Handler.claim.selector;
        actions[3] = Handler.result.selector;
        actions[4] = Handler.expire.selector;
        actions[5] = Handler.withdraw.selector;
        actions[6] = Handler.warp.selector;
        actions[7] = Handler.addStake.selector;
        actions[8] = Handler.requestUnstake.selector;
        actions[9] = Handler.withdrawUnstaked.selector;
        actions[10] = Handler.replayResult.selector;
        selectors = new FuzzSelector[](1);
        selectors[0] = FuzzSelector(address(handler), actions);
    }

    /// The handler's actions really complete jobs (so the invariants are not checked over a handler that
    /// silently does nothing), and a replayed result is refused.
    function test_handler_drives_the_whole_lifecycle() public {
        handler.submit(0, 0, 1 ether, 1_000);
        handler.submit(1, 1, 1 ether, 1_000);
        handler.claim(0, 0);
        handler.claim(1, 1);
        handler.result(0, 10, false);
        handler.result(1, 10, true);
        handler.replayResult(0);
        handler.withdraw(0);
        assertEq(handler.calls(Handler.claim.selector), 2, "claims");
        assertEq(handler.calls(Handler.result.selector), 2, "results, replay refused");
        assertEq(handler.calls(Handler.withdraw.selector), 1, "treasury withdrew");
        invariant_no_job_paid_twice();
        invariant_market_balance_equals_escrow_plus_withdrawable();
        invariant_locked_stake_matches_claims();
    }

    /// The market's balance is exactly the escrow of jobs still open or claimed plus every pull balance.
    function invariant_market_balance_equals_escrow_plus_withdrawable() public view {
        uint256 escrow;
        for (uint256 i; i < handler.jobCount(); ++i) {
            JobMarket.Job memory j = market.getJob(handler.jobIds(i));
            if (j.status == JobMarket.JobStatus.Open || j.status == JobMarket.JobStatus.Claimed) escrow += j.price;
        }
        uint256 withdrawable;
        for (uint256 i; i < handler.accountCount(); ++i) {
            withdrawable += market.balanceOf(handler.accounts(i));
        }
        assertEq(address(market).balance, escrow + withdrawable, "market balance != escrow + withdrawable");
        assertEq(handler.ghostDeposited() - handler.ghostWithdrawn(), address(market).balance, "market ledger");
    }

    /// The registry's balance is exactly bonded stake plus stake pending withdrawal; locks never exceed stake.
    function invariant_registry_balance_equals_stakes() public view {
        uint256 total;
        for (uint256 i; i < handler.operatorCount(); ++i) {
            NodeRegistry.Node memory n = nodes.getNode(handler.operators(i));
            assertLe(n.locked, n.stake, "locked > stake");
            total += n.stake + n.pendingUnstake;
        }
        assertEq(address(nodes).balance, total, "registry balance != stakes");
    }

    /// Every job is paid at most once, and only completed jobs are paid.
    function invariant_no_job_paid_twice() public view {
        uint256 completedJobs;
        for (uint256 i; i < handler.jobCount(); ++i) {
            uint256 jobId = handler.jobIds(i);
            uint256 paid = handler.timesPaid(jobId);
            assertLe(paid, 1, "job paid twice");
            bool done = market.getJob(jobId).status == JobMarket.JobStatus.Completed;
            assertEq(paid == 1, done, "paid iff completed");
            if (done) ++completedJobs;
        }
        assertEq(handler.completed(), completedJobs, "payments == completed jobs");
    }

    /// Locked stake equals claimStake times the number of jobs currently claimed.
    function invariant_locked_stake_matches_claims() public view {
        uint256 claimed;
        for (uint256 i; i < handler.jobCount(); ++i) {
            if (market.getJob(handler.jobIds(i)).status == JobMarket.JobStatus.Claimed) ++claimed;
        }
        uint256 locked;
        for (uint256 i; i < handler.operatorCount(); ++i) {
            locked += nodes.getNode(handler.operators(i)).locked;
        }
        assertEq(locked, claimed * market.claimStake(), "locked stake != claims");
    }
}
