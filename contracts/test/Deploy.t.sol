// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Test} from "./utils/Test.sol";
import {Deploy} from "../script/Deploy.s.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {ValidatorArbiter} from "../src/ValidatorArbiter.sol";

/// @notice A stand-in that answers MarketOps' configHash for any config: what a rogue deployer would pass.
contract RogueOps {
    bytes32 public immutable configHash;

    constructor(bytes32 h) {
        configHash = h;
    }
}

/// @notice The deployment script's CREATE2 path, on the real deterministic deployer's runtime code.
contract DeployTest is Test {
    /// @dev Runtime code of Arachnid's deterministic deployment proxy (as Anvil and most chains have it).
    bytes internal constant PROXY_CODE =
        hex"7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffe03601600081602082378035828234f58015156039578182fd5b8082525050506014600cf3";

    Deploy internal script;
    address internal constant V1 = address(0xA11CE);
    address internal constant V2 = address(0xB0B);

    function setUp() public {
        script = new Deploy();
        vm.etch(script.CREATE2_DEPLOYER(), PROXY_CODE);
    }

    function _params(address owner) internal view returns (Deploy.Params memory p) {
        p = script.params(owner);
        p.validators = new address[](2);
        p.validators[0] = V1;
        p.validators[1] = V2;
    }

    function test_defaults_are_the_devnet_values() public view {
        Deploy.Params memory p = script.params(address(this));
        assertEq(p.config.owner, address(this), "owner = broadcaster");
        assertEq(p.config.treasury, address(this), "treasury = owner");
        assertEq(p.config.protocolFeeBps, 100, "fee");
        assertEq(p.config.minClaimStake, 0.01 ether, "min claim stake");
        assertEq(p.config.claimStakeBps, 15_000, "claim stake bps");
        assertEq(p.config.compensationBps, 1_000, "compensation");
        assertEq(p.config.releasePenalty, 0.001 ether, "release penalty");
        assertEq(p.config.defaultServiceWindow, 300, "service window");
        assertEq(p.config.minServiceWindow, 10, "min service window");
        assertEq(p.config.challengeWindow, 60, "challenge window");
        assertEq(p.config.disputeBond, 0.05 ether, "bond");
        assertEq(p.config.challengerRewardBps, 5_000, "reward");
        assertEq(p.config.disputeTimeout, 600, "timeout");
        assertEq(p.config.minStake, 1 ether, "min stake");
        assertEq(p.config.unstakeDelay, 3600, "unstake delay");
        assertEq(p.quorum, 1, "quorum");
        assertEq(p.validators.length, 0, "no validators");
        assertEq(p.config.adapterRegistry, script.predictAdapterRegistry(address(this)), "registry predicted");
    }

    function test_deploys_at_predicted_addresses_and_configures() public {
        Deploy.Params memory p = _params(address(script));
        Deploy.Addresses memory want = script.predict(p);
        (Deploy.Addresses memory got, bool deployed) = script.deploy(p);
        assertTrue(deployed, "deployed");
        assertEq(got.adapterRegistry, want.adapterRegistry, "registry");
        assertEq(got.jobMarket, want.jobMarket, "market");
        assertEq(got.nodeRegistry, want.nodeRegistry, "node registry");
        assertEq(got.arbiter, want.arbiter, "arbiter");
        script.configure(got, p, address(script));
        JobMarket market = JobMarket(payable(got.jobMarket));
        assertEq(address(market.arbiter()), got.arbiter, "arbiter wired");
        assertEq(address(market.nodeRegistry()), got.nodeRegistry, "node registry");
        assertEq(address(market.adapterRegistry()), got.adapterRegistry, "adapter registry");
        assertEq(market.owner(), address(script), "owner passed explicitly, not the proxy");
        assertEq(AdapterRegistry(got.adapterRegistry).owner(), address(script), "registry owner");
        assertTrue(AdapterRegistry(got.adapterRegistry).isValidator(V1), "validator 1");
        assertTrue(AdapterRegistry(got.adapterRegistry).isValidator(V2), "validator 2");
        ValidatorArbiter arb = ValidatorArbiter(got.arbiter);
        assertEq(address(arb.market()), got.jobMarket, "arbiter's market");
        assertEq(arb.quorum(), 1, "quorum");

        // A second run deploys nothing and changes nothing.
        (Deploy.Addresses memory again, bool deployedAgain) = script.deploy(p);
        assertFalse(deployedAgain, "nothing deployed twice");
        assertEq(again.jobMarket, got.jobMarket, "same market");
        script.configure(again, p, address(script));
        assertEq(AdapterRegistry(got.adapterRegistry).validators().length, 2, "validators not duplicated");
    }

    function test_addresses_depend_only_on_salts_and_parameters() public {
        Deploy.Params memory p = _params(address(0xC0FFEE));
        Deploy.Addresses memory a = script.predict(p);
        // Another deployer contract, other nonces: the same addresses.
        Deploy other = new Deploy();
        vm.setNonce(address(other), 77);
        Deploy.Addresses memory b = other.predict(p);
        assertEq(a.jobMarket, b.jobMarket, "market");
        assertEq(a.arbiter, b.arbiter, "arbiter");
        (Deploy.Addresses memory got,) = other.deploy(p);
        assertEq(got.jobMarket, a.jobMarket, "deployed where predicted");
        // Any other parameter moves every address that depends on it.
        Deploy.Params memory q = _params(address(0xC0FFEE));
        q.config.challengeWindow = 3600;
        Deploy.Addresses memory c = script.predict(q);
        assertEq(c.adapterRegistry, a.adapterRegistry, "registry depends on the owner only");
        assertTrue(c.jobMarket != a.jobMarket, "market depends on its config");
        assertTrue(c.arbiter != a.arbiter, "arbiter depends on the market");
        q.config.owner = address(0xBEEF);
        assertTrue(script.predictAdapterRegistry(address(0xBEEF)) != a.adapterRegistry, "owner moves the registry");
    }

    function test_not_owner_deploys_but_does_not_configure() public {
        Deploy.Params memory p = _params(address(0xC0FFEE));
        (Deploy.Addresses memory a,) = script.deploy(p);
        script.configure(a, p, address(script)); // prints what the owner must call
        assertEq(address(JobMarket(payable(a.jobMarket)).arbiter()), address(0), "left to the owner");
        assertFalse(AdapterRegistry(a.adapterRegistry).isValidator(V1), "left to the owner");
    }

    function test_reverts_without_create2_deployer() public {
        vm.etch(script.CREATE2_DEPLOYER(), "");
        Deploy.Params memory p = _params(address(script));
        vm.expectRevert(abi.encodeWithSelector(Deploy.NoCreate2Deployer.selector, script.CREATE2_DEPLOYER()));
        script.deploy(p);
    }

    /// The market trusts the MarketOps its deployer names (it only checks configHash), so a rogue one that
    /// spoofs the hash is accepted on chain, but the market then sits at another address than the parameters
    /// predict: the operator's address check (docs/deploy.md) is what catches it.
    function test_a_rogue_market_ops_moves_the_market_off_its_predicted_address() public {
        Deploy.Params memory p = _params(address(script));
        Deploy.Addresses memory want = script.predict(p);
        address rogue = address(new RogueOps(keccak256(abi.encode(p.config))));
        JobMarket accepted = new JobMarket(p.config, rogue);
        assertEq(accepted.marketOps(), rogue, "the constructor cannot tell a spoofed configHash");
        bytes memory init = script.jobMarketInitCode(p.config, rogue);
        address at = script.create2Address(script.SALT_JOB_MARKET(), init);
        assertTrue(at != want.jobMarket, "a market on a rogue MarketOps has another address");
        assertEq(
            script.create2Address(script.SALT_JOB_MARKET(), script.jobMarketInitCode(p.config, want.marketOps)),
            want.jobMarket,
            "the genuine MarketOps gives the predicted address"
        );
    }
}
