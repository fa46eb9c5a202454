// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Test} from "./utils/Test.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";

contract AdapterRegistryTest is Test {
    bytes32 internal constant BASE = keccak256("tiny-llama");
    // A literal: sha256() is a precompile call, which would consume a pending vm.prank or vm.expectRevert.
    bytes32 internal constant HASH = 0x6c6f726120616461707465722077656967687473207368613235362068617368;
    string internal constant CID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";

    AdapterRegistry internal reg;
    address internal publisher = makeAddr("publisher");
    address internal validator = makeAddr("validator");
    address internal other = makeAddr("other");

    function setUp() public {
        reg = new AdapterRegistry(address(this));
    }

    function _register() internal returns (uint256) {
        vm.prank(publisher);
        return reg.register(CID, HASH, BASE, 16, 1_000_000, 5 gwei);
    }

    // ---------------------------------------------------------------- register

    function test_register_stores_adapter_and_emits() public {
        vm.expectEmit(true, true, true, true, address(reg));
        emit AdapterRegistry.AdapterRegistered(1, publisher, BASE, CID, HASH, 16, 1_000_000, 5 gwei);
        uint256 id = _register();
        assertEq(id, 1, "first id");
        assertEq(reg.adapterCount(), 1, "count");
        AdapterRegistry.Adapter memory a = reg.getAdapter(id);
        assertEq(a.publisher, publisher, "publisher");
        assertEq(a.contentHash, HASH, "hash");
        assertEq(a.baseModel, BASE, "base");
        assertEq(a.rank, 16, "rank");
        assertEq(a.size, 1_000_000, "size");
        assertEq(a.feePerJob, 5 gwei, "fee");
        assertFalse(a.retired, "retired");
        assertEq(a.cid, CID, "cid");
        assertEq(_register(), 2, "second id");
    }

    function test_register_reverts_on_bad_cid() public {
        vm.expectRevert(AdapterRegistry.InvalidCid.selector);
        reg.register("", HASH, BASE, 16, 1, 0);
        bytes memory long = new bytes(129);
        vm.expectRevert(AdapterRegistry.InvalidCid.selector);
        reg.register(string(long), HASH, BASE, 16, 1, 0);
    }

    function test_register_reverts_on_zero_hash_or_base() public {
        vm.expectRevert(AdapterRegistry.ZeroContentHash.selector);
        reg.register(CID, bytes32(0), BASE, 16, 1, 0);
        vm.expectRevert(AdapterRegistry.ZeroBaseModel.selector);
        reg.register(CID, HASH, bytes32(0), 16, 1, 0);
    }

    function test_register_reverts_on_bad_shape() public {
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.InvalidShape.selector, uint16(0), uint64(1)));
        reg.register(CID, HASH, BASE, 0, 1, 0);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.InvalidShape.selector, uint16(8), uint64(0)));
        reg.register(CID, HASH, BASE, 8, 0, 0);
    }

    function test_register_reverts_on_fee_above_maximum() public {
        uint96 fee = uint96(type(uint80).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.FeeTooHigh.selector, fee, reg.MAX_FEE_PER_JOB()));
        reg.register(CID, HASH, BASE, 8, 1, fee);
    }

    // ---------------------------------------------------------------- payees

    function test_registerWithPayees_stores_split() public {
        address[] memory payees = new address[](2);
        payees[0] = publisher;
        payees[1] = other;
        uint16[] memory shares = new uint16[](2);
        shares[0] = 7_000;
        shares[1] = 3_000;
        vm.prank(publisher);
        uint256 id = reg.registerWithPayees(CID, HASH, BASE, 8, 1, 1 gwei, payees, shares);
        (address[] memory p, uint16[] memory s) = reg.payeesOf(id);
        assertEq(p.length, 2, "payees");
        assertEq(p[1], other, "payee 1");
        assertEq(s[0], 7_000, "share 0");
        (bytes32 h, address pub, address[] memory p2, uint16[] memory s2) = reg.settlementTerms(id);
        assertEq(h, HASH, "settlement hash");
        assertEq(pub, publisher, "settlement publisher");
        assertEq(p2.length, 2, "settlement payees");
        assertEq(s2[1], 3_000, "settlement share");
    }

    function test_payeesOf_is_empty_without_split_and_reverts_for_unknown() public {
        uint256 id = _register();
        (address[] memory p, uint16[] memory s) = reg.payeesOf(id);
        assertEq(p.length + s.length, 0, "no payees");
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, 9));
        reg.payeesOf(9);
    }

    function test_registerWithPayees_reverts_on_bad_arrays() public {
        address[] memory none = new address[](0);
        uint16[] memory noShares = new uint16[](0);
        vm.expectRevert(AdapterRegistry.InvalidPayees.selector);
        reg.registerWithPayees(CID, HASH, BASE, 8, 1, 0, none, noShares);

        address[] memory two = new address[](2);
        two[0] = publisher;
        two[1] = other;
        uint16[] memory one = new uint16[](1);
        one[0] = 10_000;
        vm.expectRevert(AdapterRegistry.InvalidPayees.selector);
        reg.registerWithPayees(CID, HASH, BASE, 8, 1, 0, two, one);

        address[] memory many = new address[](17);
        uint16[] memory manyShares = new uint16[](17);
        vm.expectRevert(AdapterRegistry.InvalidPayees.selector);
        reg.registerWithPayees(CID, HASH, BASE, 8, 1, 0, many, manyShares);
    }

    function test_registerWithPayees_reverts_on_bad_payee_or_sum() public {
        address[] memory two = new address[](2);
        two[0] = publisher;
        uint16[] memory shares = new uint16[](2);
        shares[0] = 5_000;
        shares[1] = 5_000;
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.InvalidPayee.selector, 1));
        reg.registerWithPayees(CID, HASH, BASE, 8, 1, 0, two, shares);

        two[1] = other;
        shares[1] = 0;
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.InvalidPayee.selector, 1));
        reg.registerWithPayees(CID, HASH, BASE, 8, 1, 0, two, shares);

        shares[1] = 4_999;
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.SharesDoNotSumToWhole.selector, 9_999));
        reg.registerWithPayees(CID, HASH, BASE, 8, 1, 0, two, shares);
    }

    // ---------------------------------------------------------------- fee, retire

    function test_setFee_by_publisher() public {
        uint256 id = _register();
        vm.expectEmit(true, false, false, true, address(reg));
        emit AdapterRegistry.AdapterFeeUpdated(id, 7 gwei);
        vm.prank(publisher);
        reg.setFee(id, 7 gwei);
        assertEq(reg.getAdapter(id).feePerJob, 7 gwei, "fee");
    }

    function test_setFee_reverts_for_others_unknown_retired_and_too_high() public {
        uint256 id = _register();
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotPublisher.selector, id, other));
        vm.prank(other);
        reg.setFee(id, 1);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, 5));
        reg.setFee(5, 1);
        uint96 fee = uint96(type(uint80).max) + 1;
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.FeeTooHigh.selector, fee, reg.MAX_FEE_PER_JOB()));
        vm.prank(publisher);
        reg.setFee(id, fee);
        vm.prank(publisher);
        reg.retire(id);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterIsRetired.selector, id));
        vm.prank(publisher);
        reg.setFee(id, 1);
    }

    function test_retire_by_publisher_once() public {
        uint256 id = _register();
        vm.expectEmit(true, false, false, true, address(reg));
        emit AdapterRegistry.AdapterRetired(id);
        vm.prank(publisher);
        reg.retire(id);
        assertTrue(reg.getAdapter(id).retired, "retired");
        (, bool retired,,) = reg.jobTerms(id);
        assertTrue(retired, "jobTerms retired");
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterIsRetired.selector, id));
        vm.prank(publisher);
        reg.retire(id);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotPublisher.selector, id, other));
        vm.prank(other);
        reg.retire(id);
    }

    // ---------------------------------------------------------------- validators

    function test_setValidator_owner_only() public {
        vm.expectEmit(true, false, false, true, address(reg));
        emit AdapterRegistry.ValidatorSet(validator, true);
        reg.setValidator(validator, true);
        assertTrue(reg.isValidator(validator), "allowed");
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, other));
        vm.prank(other);
        reg.setValidator(other, true);
        vm.expectRevert(AdapterRegistry.ZeroValidator.selector);
        reg.setValidator(address(0), true);
    }

    function test_attest_and_revoke() public {
        uint256 id = _register();
        reg.setValidator(validator, true);
        vm.expectEmit(true, true, false, true, address(reg));
        emit AdapterRegistry.AdapterAttested(id, validator);
        vm.prank(validator);
        reg.attest(id);
        assertEq(reg.attestationCount(id), 1, "count after attest");
        assertTrue(reg.hasAttested(id, validator), "attested");

        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AlreadyAttested.selector, id, validator));
        vm.prank(validator);
        reg.attest(id);

        // A validator removed by the owner may still withdraw its own attestation.
        reg.setValidator(validator, false);
        vm.expectEmit(true, true, false, true, address(reg));
        emit AdapterRegistry.AdapterAttestationRevoked(id, validator);
        vm.prank(validator);
        reg.revoke(id);
        assertEq(reg.attestationCount(id), 0, "count after revoke");
        assertFalse(reg.hasAttested(id, validator), "revoked");
    }

    function test_attest_reverts_for_non_validator_unknown_and_retired() public {
        uint256 id = _register();
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotValidator.selector, other));
        vm.prank(other);
        reg.attest(id);
        reg.setValidator(validator, true);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, 42));
        vm.prank(validator);
        reg.attest(42);
        vm.prank(publisher);
        reg.retire(id);
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.AdapterIsRetired.selector, id));
        vm.prank(validator);
        reg.attest(id);
    }

    function test_revoke_reverts_without_attestation() public {
        uint256 id = _register();
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.NotAttested.selector, id, validator));
        vm.prank(validator);
        reg.revoke(id);
    }

    // ---------------------------------------------------------------- views

    function test_views_for_market() public {
        uint256 id = _register();
        (bool exists, bool retired, bytes32 h, uint96 fee) = reg.jobTerms(id);
        assertTrue(exists && !retired, "terms flags");
        assertEq(h, HASH, "terms hash");
        assertEq(fee, 5 gwei, "terms fee");
        assertEq(reg.baseModelOf(id), BASE, "base");
        assertEq(reg.contentHashOf(id), HASH, "hash");
        (exists,,,) = reg.jobTerms(id + 1);
        assertFalse(exists, "unknown id");
        (, address pub, address[] memory p,) = reg.settlementTerms(id);
        assertEq(pub, publisher, "publisher");
        assertEq(p.length, 0, "no payees");
    }

    function test_getAdapter_reverts_for_unknown() public {
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.UnknownAdapter.selector, 0));
        reg.getAdapter(0);
    }

    // ---------------------------------------------------------------- v2: validator list, market terms, owner

    function test_constructor_sets_owner() public {
        assertEq(reg.owner(), address(this), "owner");
        AdapterRegistry r2 = new AdapterRegistry(other);
        assertEq(r2.owner(), other, "explicit owner, not the deployer");
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableInvalidOwner.selector, address(0)));
        new AdapterRegistry(address(0));
    }

    function test_validators_list_add_remove_and_noop() public {
        address v2 = makeAddr("v2");
        address v3 = makeAddr("v3");
        reg.setValidator(validator, true);
        reg.setValidator(v2, true);
        reg.setValidator(v3, true);
        reg.setValidator(v2, true); // no-op: not listed twice
        address[] memory vs = reg.validators();
        assertEq(vs.length, 3, "three");
        reg.setValidator(validator, false);
        vs = reg.validators();
        assertEq(vs.length, 2, "two left");
        assertTrue((vs[0] == v3 && vs[1] == v2) || (vs[0] == v2 && vs[1] == v3), "the others remain");
        assertFalse(reg.isValidator(validator), "removed");
        reg.setValidator(validator, false); // no-op
        assertEq(reg.validators().length, 2, "still two");
    }

    function test_validators_capped() public {
        for (uint256 i; i < reg.MAX_VALIDATORS(); ++i) {
            reg.setValidator(address(uint160(0x1000 + i)), true);
        }
        vm.expectRevert(abi.encodeWithSelector(AdapterRegistry.TooManyValidators.selector, 64));
        reg.setValidator(address(0xdead), true);
        reg.setValidator(address(uint160(0x1000)), false);
        reg.setValidator(address(0xdead), true);
        assertEq(reg.validators().length, 64, "full again");
    }

    function test_attestations_of_removed_validator_stop_counting() public {
        uint256 id = _register();
        address v2 = makeAddr("v2");
        reg.setValidator(validator, true);
        reg.setValidator(v2, true);
        vm.prank(validator);
        reg.attest(id);
        vm.prank(v2);
        reg.attest(id);
        assertEq(reg.attestationCount(id), 2, "two");
        reg.setValidator(validator, false);
        assertEq(reg.attestationCount(id), 1, "removed validator no longer counts");
        assertTrue(reg.hasAttested(id, validator), "the record itself stays");
        reg.setValidator(validator, true);
        assertEq(reg.attestationCount(id), 2, "counts again once re-allowed");
    }

    function test_marketTerms() public {
        uint256 id = _register();
        (bool exists, bool retired, bytes32 h, bytes32 base, uint96 fee) = reg.marketTerms(id);
        assertTrue(exists, "exists");
        assertFalse(retired, "live");
        assertEq(h, HASH, "hash");
        assertEq(base, BASE, "base");
        assertEq(fee, 5 gwei, "fee");
        vm.prank(publisher);
        reg.retire(id);
        (, retired,,,) = reg.marketTerms(id);
        assertTrue(retired, "retired");
        (exists,,,,) = reg.marketTerms(id + 1);
        assertFalse(exists, "unknown");
    }

    function test_settlementTerms_with_payees() public {
        address[] memory payees = new address[](2);
        payees[0] = makeAddr("a");
        payees[1] = makeAddr("b");
        uint16[] memory shares = new uint16[](2);
        shares[0] = 4_000;
        shares[1] = 6_000;
        vm.prank(publisher);
        uint256 id = reg.registerWithPayees(CID, HASH, BASE, 8, 1, 1, payees, shares);
        (bytes32 h, address pub, address[] memory p, uint16[] memory sh) = reg.settlementTerms(id);
        assertEq(h, HASH, "hash");
        assertEq(pub, publisher, "publisher");
        assertEq(p.length, 2, "payees");
        assertEq(p[1], payees[1], "payee 1");
        assertEq(sh[0], 4_000, "share 0");
    }

    function test_ownership_two_step() public {
        reg.transferOwnership(other);
        assertEq(reg.pendingOwner(), other, "pending");
        reg.setValidator(validator, true); // still the owner until accepted
        vm.prank(other);
        reg.acceptOwnership();
        assertEq(reg.owner(), other, "new owner");
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, address(this)));
        reg.setValidator(validator, false);
    }
}
