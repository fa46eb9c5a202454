// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Fixture} from "./utils/Fixture.sol";
import {Test} from "./utils/Test.sol";
import {Keys} from "./utils/Keys.sol";
import {Vm} from "./utils/Vm.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";
import {NodeRegistry} from "../src/NodeRegistry.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {ValidatorArbiter} from "../src/ValidatorArbiter.sol";
import {MarketBase} from "../src/market/MarketBase.sol";
import {AdapterRequest, JobRequest, JobStatus, ResultItem, Terms} from "../src/lib/JobTypes.sol";

/// @notice Drives the whole protocol with random but mostly valid actions from a fixed cast of actors and keeps
///         ghost records for the invariants. Every action swallows the market's reverts (a rival got there first,
///         a window is still open, ...): the invariants only care about the state that results.
contract Handler is Test {
    JobMarket public immutable market;
    NodeRegistry public immutable nodes;
    AdapterRegistry public immutable adapters;
    ValidatorArbiter public immutable arbiter;
    address public immutable treasury;

    address[] public submitters;
    address[] public operators;
    uint256[] internal keys;
    address[] public validators;
    address[] public publishers;
    address[] public accounts; // everyone who can hold a pull balance
    uint256[] public adapterIds;

    bytes[] internal _terms; // abi.encode(Terms) of every job, index = jobId - 1

    mapping(uint256 jobId => uint256) public timesPaid;
    mapping(uint256 jobId => bool) public slashedWhileClaimed; // a reclaim or expire slashed its claimant
    mapping(address account => uint256) public withdrawn;
    mapping(bytes32 action => uint256) public calls;

    constructor(
        JobMarket market_,
        AdapterRegistry adapters_,
        ValidatorArbiter arbiter_,
        address treasury_,
        address operator0,
        uint256 key0,
        address publisher0,
        uint256 adapter0,
        address[2] memory validators_
    ) {
        market = market_;
        nodes = market_.nodeRegistry();
        adapters = adapters_;
        arbiter = arbiter_;
        treasury = treasury_;
        accounts.push(treasury_);
        validators.push(validators_[0]);
        validators.push(validators_[1]);
        accounts.push(validators_[0]);
        accounts.push(validators_[1]);

        operators.push(operator0);
        keys.push(key0);
        accounts.push(operator0);
        bytes32 base = keccak256("tiny-llama");
        for (uint256 i = 1; i < 3; ++i) {
            address op = makeAddr(string.concat("inv-operator-", vm.toString(i)));
            uint256 key = uint256(keccak256(abi.encode("inv-signer", i)));
            vm.deal(op, 100 ether);
            vm.prank(op);
            nodes.register{value: 20 ether}(vm.addr(key), base, "peer");
            operators.push(op);
            keys.push(key);
            accounts.push(op);
        }

        publishers.push(publisher0);
        accounts.push(publisher0);
        adapterIds.push(adapter0);
        address pub1 = makeAddr("inv-publisher-1");
        publishers.push(pub1);
        accounts.push(pub1);
        vm.prank(pub1);
        adapterIds.push(adapters.register("bafy-inv-1", keccak256("w1"), base, 4, 1, 0));
        address[] memory payees = new address[](2);
        (payees[0], payees[1]) = (makeAddr("inv-payee-0"), makeAddr("inv-payee-1"));
        uint16[] memory shares = new uint16[](2);
        (shares[0], shares[1]) = (3_000, 7_000);
        accounts.push(payees[0]);
        accounts.push(payees[1]);
        vm.prank(pub1);
        adapterIds.push(adapters.registerWithPayees("bafy-inv-2", keccak256("w2"), base, 4, 1, 777, payees, shares));
        publishers.push(pub1);

        for (uint256 i; i < 3; ++i) {
            address s = makeAddr(string.concat("inv-submitter-", vm.toString(i)));
            vm.deal(s, 10_000 ether);
            submitters.push(s);
            accounts.push(s);
        }
    }

    // ---------------------------------------------------------------- helpers for the invariants

    function jobCount() external view returns (uint256) {
        return _terms.length;
    }

    function termsOf(uint256 index) public view returns (Terms memory t) {
        t = abi.decode(_terms[index], (Terms));
    }

    function operatorCount() external view returns (uint256) {
        return operators.length;
    }

    function accountCount() external view returns (uint256) {
        return accounts.length;
    }

    function adapterCount() external view returns (uint256) {
        return adapterIds.length;
    }

    function submitterCount() external view returns (uint256) {
        return submitters.length;
    }

    function _pick(uint256 seed) internal view returns (bool ok, Terms memory t) {
        if (_terms.length == 0) return (false, t);
        return (true, termsOf(seed % _terms.length));
    }

    function _status(uint256 jobId) internal view returns (JobStatus s, address node) {
        (s, node,,) = market.jobState(jobId);
    }

    /// @dev A job in status `want`, searching from a random index (falls back to any job).
    function _find(uint256 seed, JobStatus want) internal view returns (bool ok, Terms memory t) {
        uint256 n = _terms.length;
        if (n == 0) return (false, t);
        uint256 start = seed % n;
        for (uint256 k; k < n && k < 64; ++k) {
            Terms memory c = termsOf((start + k) % n);
            (JobStatus s,) = _status(c.jobId);
            if (s == want) return (true, c);
        }
        return (true, termsOf(start));
    }

    // ---------------------------------------------------------------- actions

    function submit(uint256 who, uint256 adapterMask, uint256 price, uint256 duration, uint256 window) external {
        ++calls["submit"];
        uint256 n = adapterIds.length;
        JobRequest memory req;
        uint256 count;
        for (uint256 i; i < n; ++i) {
            if ((adapterMask >> i) & 1 == 1) ++count;
        }
        if (count == 0) {
            count = 1;
            adapterMask = 1 << (adapterMask % n);
        }
        req.adapters = new AdapterRequest[](count);
        uint256 fees;
        uint256 k;
        for (uint256 i; i < n; ++i) {
            if ((adapterMask >> i) & 1 == 0) continue;
            (,,,, uint96 fee) = adapters.marketTerms(adapterIds[i]);
            req.adapters[k++] = AdapterRequest({id: uint32(adapterIds[i]), weightBps: 5_000, maxFee: fee});
            fees += fee;
        }
        req.maxTokens = 16;
        req.deadline = uint64(block.timestamp + bound(duration, 60, 2 days));
        req.serviceWindow = uint32(bound(window, 30, 1 hours));
        price = bound(price, (fees + 1) * 10_000 / (10_000 - market.protocolFeeBps()) + 1, 1 ether);
        address s = submitters[who % submitters.length];
        vm.recordLogs();
        vm.prank(s);
        market.submitRequest{value: price}(req, "prompt", "", bytes32(0));
        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].topics[0] == MarketBase.JobSubmitted.selector) {
                (Terms memory t,,) = abi.decode(logs[i].data, (Terms, bytes, string));
                _terms.push(abi.encode(t));
            }
        }
    }

    function claim(uint256 jobSeed, uint256 opSeed) external {
        ++calls["claim"];
        (bool ok, Terms memory t) = _find(jobSeed, JobStatus.Open);
        if (!ok) return;
        vm.prank(operators[opSeed % operators.length]);
        try market.claimJob(Keys.claimKey(t)) {
            ++calls["ok:claim"];
        } catch {}
    }

    function claimJobs(uint256 start, uint256 nSeed, uint256 opSeed) external {
        ++calls["claimJobs"];
        if (_terms.length == 0) return;
        uint256 n = bound(nSeed, 1, 8);
        Terms[] memory ts = new Terms[](n);
        for (uint256 i; i < n; ++i) {
            ts[i] = termsOf((start % _terms.length + i) % _terms.length);
        }
        vm.prank(operators[opSeed % operators.length]);
        try market.claimJobs(Keys.claimKeys(ts)) {
            ++calls["ok:claimJobs"];
        } catch {}
    }

    function submitResults(uint256 start, uint256 nSeed, uint256 opSeed, bool byCid) external {
        ++calls["submitResults"];
        if (_terms.length == 0) return;
        uint256 n = bound(nSeed, 1, 8);
        uint256 o = opSeed % operators.length;
        (, Terms memory first) = _find(start, JobStatus.Claimed);
        (, address holder) = _status(first.jobId);
        for (uint256 i; i < operators.length; ++i) {
            if (operators[i] == holder && opSeed % 4 != 0) o = i; // mostly the claimant, sometimes anyone
        }
        start = first.jobId - 1;
        ResultItem[] memory items = new ResultItem[](n);
        bytes32[] memory leaves = new bytes32[](n);
        for (uint256 i; i < n; ++i) {
            Terms memory t = termsOf((start % _terms.length + i) % _terms.length);
            items[i].terms = t;
            if (byCid) {
                items[i].outputCid = "bafy-out";
                items[i].outputHash = keccak256(abi.encode(t.jobId));
            } else {
                items[i].output = abi.encodePacked("answer ", t.jobId);
            }
            bytes32 oh = byCid ? items[i].outputHash : keccak256(items[i].output);
            leaves[i] = keccak256(abi.encode(market.RESULT_TYPEHASH(), t.jobId, market.hashTerms(t), oh, bytes32(0)));
        }
        bytes32 digest = keccak256(
            abi.encodePacked(
                "\x19\x01",
                market.domainSeparator(),
                keccak256(abi.encode(market.BATCH_TYPEHASH(), keccak256(abi.encodePacked(leaves))))
            )
        );
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(keys[o], digest);
        vm.recordLogs();
        vm.prank(operators[o]);
        try market.submitResults(Keys.entries(items), abi.encodePacked(r, s, v)) {
            ++calls["ok:submitResults"];
        } catch {}
        Vm.Log[] memory logs = vm.getRecordedLogs();
        for (uint256 i; i < logs.length; ++i) {
            if (logs[i].emitter == address(market) && logs[i].topics[0] == MarketBase.ResultSubmitted.selector) {
                ++timesPaid[uint256(logs[i].topics[1])];
            }
        }
    }

    function release(uint256 jobSeed) external {
        ++calls["release"];
        (bool ok, Terms memory t) = _find(jobSeed, JobStatus.Claimed);
        if (!ok) return;
        (, address node) = _status(t.jobId);
        if (node == address(0)) return;
        vm.prank(node);
        try market.releaseJob(t) {
            ++calls["ok:release"];
        } catch {}
    }

    function reclaim(uint256 jobSeed) external {
        ++calls["reclaim"];
        (bool ok, Terms memory t) = _find(jobSeed, JobStatus.Claimed);
        if (!ok) return;
        (JobStatus st,, uint256 offset,) = market.jobState(t.jobId);
        uint256 at = uint256(t.submittedAt) + offset + t.serviceWindow;
        if (st == JobStatus.Claimed && jobSeed % 2 == 0 && at > block.timestamp) vm.warp(at);
        try market.reclaim(t) {
            ++calls["ok:reclaim"];
            slashedWhileClaimed[t.jobId] = true;
        } catch {}
    }

    function expire(uint256 jobSeed) external {
        ++calls["expire"];
        (bool ok, Terms memory t) = _find(jobSeed, jobSeed % 2 == 0 ? JobStatus.Claimed : JobStatus.Open);
        if (!ok) return;
        if (jobSeed % 3 == 0 && t.deadline > block.timestamp) vm.warp(t.deadline);
        (JobStatus before,) = _status(t.jobId);
        try market.expire(t) {
            ++calls["ok:expire"];
            if (before == JobStatus.Claimed) slashedWhileClaimed[t.jobId] = true;
        } catch {}
    }

    function cancel(uint256 jobSeed) external {
        ++calls["cancel"];
        (bool ok, Terms memory t) = _find(jobSeed, JobStatus.Open);
        if (!ok || jobSeed % 3 != 0) return; // submitters rarely cancel
        vm.prank(t.submitter);
        try market.cancel(t) {
            ++calls["ok:cancel"];
        } catch {}
    }

    function dispute(uint256 jobSeed, uint256 vSeed) external {
        ++calls["dispute"];
        (bool ok, Terms memory t) = _find(jobSeed, JobStatus.Resulted);
        if (!ok) return;
        address v = validators[vSeed % 2];
        uint256 bond = market.disputeBond();
        vm.deal(v, v.balance + bond);
        vm.prank(v);
        try market.dispute{value: bond}(t, "bafy-evidence") {
            ++calls["ok:dispute"];
        } catch {}
    }

    function vote(uint256 jobSeed, bool fraud) external {
        ++calls["vote"];
        (bool ok, Terms memory t) = _find(jobSeed, JobStatus.Disputed);
        if (!ok) return;
        address challenger = market.getDispute(t.jobId).challenger;
        if (challenger == address(0)) return;
        address v = challenger == validators[0] ? validators[1] : validators[0];
        vm.prank(v);
        try arbiter.vote(t.jobId, fraud) {
            ++calls["ok:vote"];
        } catch {}
    }

    function settle(uint256 jobSeed) external {
        ++calls["settle"];
        (bool ok, Terms memory t) = _find(jobSeed, JobStatus.Disputed);
        if (!ok) return;
        uint256 timeoutAt = uint256(market.getDispute(t.jobId).openedAt) + market.disputeTimeout();
        if (jobSeed % 3 == 0 && timeoutAt > block.timestamp) vm.warp(timeoutAt);
        try market.settleDispute(t) {
            ++calls["ok:settle"];
        } catch {}
    }

    function withdraw(uint256 who) external {
        ++calls["withdraw"];
        address a = accounts[who % accounts.length];
        uint256 before = a.balance;
        vm.prank(a);
        try market.withdraw() {
            ++calls["ok:withdraw"];
            withdrawn[a] += a.balance - before;
        } catch {}
    }

    function withdrawAdapterFees(uint256 adapterSeed) external {
        ++calls["withdrawAdapterFees"];
        try market.withdrawAdapterFees(adapterIds[adapterSeed % adapterIds.length]) {
            ++calls["ok:withdrawAdapterFees"];
        } catch {}
    }

    function setFee(uint256 adapterSeed, uint96 fee) external {
        ++calls["setFee"];
        uint256 i = adapterSeed % adapterIds.length;
        vm.prank(publishers[i]);
        adapters.setFee(adapterIds[i], uint96(bound(fee, 0, 0.002 ether)));
    }

    function unstake(uint256 opSeed, uint256 amount) external {
        ++calls["unstake"];
        address op = operators[opSeed % operators.length];
        uint256 free = nodes.freeStake(op);
        if (free == 0) return;
        vm.prank(op);
        nodes.requestUnstake(bound(amount, 1, free));
    }

    function withdrawUnstaked(uint256 opSeed) external {
        ++calls["withdrawUnstaked"];
        vm.prank(operators[opSeed % operators.length]);
        try nodes.withdrawUnstaked() {} catch {}
    }

    function addStake(uint256 opSeed, uint256 amount) external {
        ++calls["addStake"];
        address op = operators[opSeed % operators.length];
        amount = bound(amount, 1, 5 ether);
        vm.deal(op, op.balance + amount);
        vm.prank(op);
        nodes.addStake{value: amount}();
    }

    function warp(uint256 secs) external {
        ++calls["warp"];
        vm.warp(block.timestamp + bound(secs, 1, 2 hours));
    }

    // ---------------------------------------------------------------- end of a run: drain everything

    /// @dev Closes every job (expire, settle on timeout), lets every hold mature and withdraws everything.
    function drain() external {
        vm.warp(block.timestamp + 31 days);
        uint256 n = _terms.length;
        for (uint256 i; i < n; ++i) {
            Terms memory t = termsOf(i);
            (JobStatus s,) = _status(t.jobId);
            if (s == JobStatus.Open || s == JobStatus.Claimed) {
                market.expire(t);
                if (s == JobStatus.Claimed) slashedWhileClaimed[t.jobId] = true;
            } else if (s == JobStatus.Disputed) {
                market.settleDispute(t);
            }
        }
        vm.warp(block.timestamp + 2 * market.challengeWindow());
        for (uint256 i; i < adapterIds.length; ++i) {
            try market.withdrawAdapterFees(adapterIds[i]) {} catch {}
        }
        for (uint256 i; i < accounts.length; ++i) {
            address a = accounts[i];
            uint256 before = a.balance;
            vm.prank(a);
            try market.withdraw() {
                withdrawn[a] += a.balance - before;
            } catch {}
        }
    }
}

/// @notice The protocol's invariants under random action sequences (see Handler).
contract InvariantTest is Fixture {
    Handler internal handler;

    struct FuzzSelector {
        address addr;
        bytes4[] selectors;
    }

    function setUp() public override {
        super.setUp();
        handler = new Handler(
            market, adapters, arbiter, treasury, operator, SIGNER_KEY, publisher, adapterId, [validator, validator2]
        );
    }

    function targetContracts() public view returns (address[] memory t) {
        t = new address[](1);
        t[0] = address(handler);
    }

    function targetSelectors() public view returns (FuzzSelector[] memory s) {
        // Weighted: the paths that move money come up more often than the ones that only refuse.
        bytes4[26] memory w = [
            Handler.submit.selector,
            Handler.submit.selector,
            Handler.submit.selector,
            Handler.claim.selector,
            Handler.claim.selector,
            Handler.claimJobs.selector,
            Handler.claimJobs.selector,
            Handler.submitResults.selector,
            Handler.submitResults.selector,
            Handler.submitResults.selector,
            Handler.release.selector,
            Handler.reclaim.selector,
            Handler.expire.selector,
            Handler.cancel.selector,
            Handler.dispute.selector,
            Handler.dispute.selector,
            Handler.vote.selector,
            Handler.vote.selector,
            Handler.settle.selector,
            Handler.withdraw.selector,
            Handler.withdrawAdapterFees.selector,
            Handler.setFee.selector,
            Handler.unstake.selector,
            Handler.withdrawUnstaked.selector,
            Handler.addStake.selector,
            Handler.warp.selector
        ];
        bytes4[] memory sel = new bytes4[](w.length);
        for (uint256 i; i < w.length; ++i) {
            sel[i] = w[i];
        }
        s = new FuzzSelector[](1);
        s[0] = FuzzSelector({addr: address(handler), selectors: sel});
    }

    /// @dev Money the market owes or holds for open business, from the jobs' states.
    function _owed() internal view returns (uint256 escrow, uint256 disputed) {
        uint256 n = handler.jobCount();
        for (uint256 i; i < n; ++i) {
            Terms memory t = handler.termsOf(i);
            (JobStatus s,,,) = market.jobState(t.jobId);
            if (s == JobStatus.Open || s == JobStatus.Claimed) {
                escrow += t.price;
            } else if (s == JobStatus.Disputed) {
                // The node's amount and the adapter fees were taken out of the held balances; plus the bond.
                disputed += t.price - uint256(t.price) * t.protocolFeeBps / 10_000 + market.getDispute(t.jobId).bond;
            }
        }
    }

    function _claimable() internal view returns (uint256 total) {
        uint256 n = handler.accountCount();
        for (uint256 i; i < n; ++i) {
            total += market.balanceOf(handler.accounts(i));
        }
        n = handler.operatorCount();
        for (uint256 i; i < n; ++i) {
            total += market.heldOf(handler.operators(i));
        }
        n = handler.adapterCount();
        for (uint256 i; i < n; ++i) {
            (uint256 w, uint256 h) = market.adapterFees(handler.adapterIds(i));
            total += w + h;
        }
    }

    /// ETH held by the market == open escrow + disputed amounts and bonds + held earnings + withdrawable; the
    /// registry holds exactly the stakes (bonded + waiting to be unstaked).
    function invariant_solvency() public view {
        (uint256 escrow, uint256 disputed) = _owed();
        assertEq(address(market).balance, escrow + disputed + _claimable(), "market balance");
        uint256 stakes;
        uint256 n = handler.operatorCount();
        for (uint256 i; i < n; ++i) {
            NodeRegistry.Node memory node = nodes.getNode(handler.operators(i));
            stakes += node.stake + node.pendingUnstake;
            assertLe(node.locked, node.stake, "locked within stake");
        }
        assertEq(address(nodes).balance, stakes, "registry balance");
    }

    /// No job is paid twice, and a job was paid iff its status says a result was accepted.
    function invariant_no_job_paid_twice() public view {
        uint256 n = handler.jobCount();
        for (uint256 i; i < n; ++i) {
            Terms memory t = handler.termsOf(i);
            uint256 paid = handler.timesPaid(t.jobId);
            assertLe(paid, 1, "paid twice");
            (JobStatus s,,,) = market.jobState(t.jobId);
            bool resulted =
                s == JobStatus.Resulted || s == JobStatus.Disputed || s == JobStatus.Final || s == JobStatus.Refunded;
            assertEq(paid == 1, resulted, "paid iff resulted");
        }
    }

    /// Every job is in a known state: open (new or reopened), claimed, paid (resulted/disputed/final) or
    /// refunded (cancelled/expired/refunded after fraud); a claimed one names a registered node.
    function invariant_job_states() public view {
        uint256 n = handler.jobCount();
        assertEq(market.jobCount(), n, "every job tracked");
        for (uint256 i; i < n; ++i) {
            Terms memory t = handler.termsOf(i);
            assertTrue(market.termsMatch(t), "terms still match");
            (JobStatus s, address node,,) = market.jobState(t.jobId);
            assertTrue(s != JobStatus.None, "known");
            if (s == JobStatus.Open || s == JobStatus.Cancelled || s == JobStatus.Expired) {
                assertEq(node, address(0), "no claimant");
            } else {
                assertTrue(node != address(0), "claimant named");
            }
        }
    }

    /// No submitter ever receives more than its escrow back plus the bounded compensation (<= 10 % of the
    /// price, once per job), and every refunded job was refunded.
    function invariant_submitter_bounded() public view {
        _checkSubmitters();
    }

    function _checkSubmitters() internal view {
        uint256 ns = handler.submitterCount();
        uint256 n = handler.jobCount();
        for (uint256 k; k < ns; ++k) {
            address s = handler.submitters(k);
            uint256 upper;
            uint256 lower;
            for (uint256 i; i < n; ++i) {
                Terms memory t = handler.termsOf(i);
                if (t.submitter != s) continue;
                (JobStatus st,,,) = market.jobState(t.jobId);
                if (st == JobStatus.Cancelled || st == JobStatus.Expired) {
                    upper += t.price;
                    lower += t.price;
                } else if (st == JobStatus.Refunded) {
                    upper += t.price;
                    lower += t.price - uint256(t.price) * t.protocolFeeBps / 10_000;
                }
                if (handler.slashedWhileClaimed(t.jobId)) {
                    uint256 comp = uint256(t.price) * COMPENSATION_BPS / 10_000;
                    assertLe(comp, t.price / 10, "compensation within 10 %");
                    upper += comp;
                }
            }
            uint256 received = handler.withdrawn(s) + market.balanceOf(s);
            assertLe(received, upper, "submitter got more than escrow + compensation");
            assertGe(received, lower, "submitter short of its refunds");
        }
    }

    /// At the end of every run: close every job, let everything mature, withdraw everything. The market ends
    /// empty, every job is paid or refunded, and the submitter bounds still hold.
    function afterInvariant() public {
        handler.drain();
        assertEq(address(market).balance, 0, "market drained");
        uint256 n = handler.jobCount();
        for (uint256 i; i < n; ++i) {
            (JobStatus s,,,) = market.jobState(handler.termsOf(i).jobId);
            assertTrue(
                s == JobStatus.Resulted || s == JobStatus.Final || s == JobStatus.Cancelled || s == JobStatus.Expired
                    || s == JobStatus.Refunded,
                "every job ends paid or refunded"
            );
        }
        _checkSubmitters();
    }
}
