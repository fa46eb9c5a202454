// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Vm} from "../test/utils/Vm.sol";
import {AdapterRegistry} from "../src/AdapterRegistry.sol";
import {JobMarket} from "../src/JobMarket.sol";
import {ValidatorArbiter} from "../src/ValidatorArbiter.sol";
import {MarketBase} from "../src/market/MarketBase.sol";
import {MarketOps} from "../src/market/MarketOps.sol";

/// @title Deploy
/// @notice Deploys protocol v2 at deterministic addresses through the standard CREATE2 deployer
///         (0x4e59b44847b379578588920cA78FbF26c0B4956C, on Anvil by default and on most L2s), wires the arbiter
///         and the validators, and writes deployments/<chainId>.json. The same salts and parameters give the same
///         addresses on every chain. Re-running where the contracts exist deploys nothing and rewrites the JSON.
/// @dev Usage: scripts/deploy.sh --rpc-url URL --private-key KEY (see docs/deploy.md). Parameters come from the
///      environment with devnet defaults; OWNER is passed explicitly to the constructors because msg.sender of a
///      CREATE2 deployment is the deployer proxy, not the broadcaster.
contract Deploy {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    /// @notice The deterministic deployment proxy (Arachnid's), at the same address on every chain that has it.
    address public constant CREATE2_DEPLOYER = 0x4e59b44847b379578588920cA78FbF26c0B4956C;
    bytes32 public constant SALT_ADAPTER_REGISTRY = keccak256("openlora.v2.AdapterRegistry");
    bytes32 public constant SALT_MARKET_OPS = keccak256("openlora.v2.MarketOps");
    bytes32 public constant SALT_JOB_MARKET = keccak256("openlora.v2.JobMarket");
    bytes32 public constant SALT_ARBITER = keccak256("openlora.v2.ValidatorArbiter");

    /// @notice Everything a deployment depends on (the addresses are functions of these).
    struct Params {
        MarketBase.Config config;
        uint16 quorum;
        address[] validators;
    }

    /// @notice The deployed (or predicted) addresses.
    struct Addresses {
        address adapterRegistry;
        address nodeRegistry;
        address marketOps;
        address jobMarket;
        address arbiter;
    }

    error NoCreate2Deployer(address deployer);
    error Create2Failed(string what);
    error UnexpectedAddress(string what, address got, address expected);

    /// @notice Reads the parameters from the environment, deploys what is missing, wires it and writes the JSON.
    function run() external returns (Addresses memory a) {
        uint256 startBlock = block.number;
        vm.startBroadcast();
        (, address broadcaster,) = vm.readCallers();
        Params memory p = params(broadcaster);
        bool deployed;
        (a, deployed) = deploy(p);
        configure(a, p, broadcaster);
        vm.stopBroadcast();
        writeJson(a, deployed ? startBlock : _knownStartBlock(a));
    }

    /// @notice The parameters from the environment: OWNER (default: the broadcaster), TREASURY (default: OWNER),
    ///         PROTOCOL_FEE_BPS, MIN_CLAIM_STAKE, CLAIM_STAKE_BPS, COMPENSATION_BPS, RELEASE_PENALTY,
    ///         DEFAULT_SERVICE_WINDOW, MIN_SERVICE_WINDOW, CHALLENGE_WINDOW, DISPUTE_BOND, CHALLENGER_REWARD_BPS,
    ///         DISPUTE_TIMEOUT, MIN_STAKE, UNSTAKE_DELAY, ARBITER_QUORUM, VALIDATORS (comma-separated).
    function params(address broadcaster) public view returns (Params memory p) {
        address owner = vm.envOr("OWNER", broadcaster);
        MarketBase.Config memory c;
        c.owner = owner;
        c.treasury = vm.envOr("TREASURY", owner);
        c.protocolFeeBps = uint16(vm.envOr("PROTOCOL_FEE_BPS", uint256(100)));
        c.minClaimStake = uint96(vm.envOr("MIN_CLAIM_STAKE", uint256(0.01 ether)));
        c.claimStakeBps = uint16(vm.envOr("CLAIM_STAKE_BPS", uint256(15_000)));
        c.compensationBps = uint16(vm.envOr("COMPENSATION_BPS", uint256(1_000)));
        c.releasePenalty = uint96(vm.envOr("RELEASE_PENALTY", uint256(0.001 ether)));
        c.defaultServiceWindow = uint32(vm.envOr("DEFAULT_SERVICE_WINDOW", uint256(300)));
        c.minServiceWindow = uint32(vm.envOr("MIN_SERVICE_WINDOW", uint256(10)));
        c.challengeWindow = uint32(vm.envOr("CHALLENGE_WINDOW", uint256(60)));
        c.disputeBond = uint96(vm.envOr("DISPUTE_BOND", uint256(0.05 ether)));
        c.challengerRewardBps = uint16(vm.envOr("CHALLENGER_REWARD_BPS", uint256(5_000)));
        c.disputeTimeout = uint32(vm.envOr("DISPUTE_TIMEOUT", uint256(600)));
        c.minStake = uint96(vm.envOr("MIN_STAKE", uint256(1 ether)));
        c.unstakeDelay = uint64(vm.envOr("UNSTAKE_DELAY", uint256(3600)));
        p.quorum = uint16(vm.envOr("ARBITER_QUORUM", uint256(1)));
        p.validators = vm.envOr("VALIDATORS", ",", new address[](0));
        c.adapterRegistry = predictAdapterRegistry(owner);
        p.config = c;
    }

    // ---------------------------------------------------------------- addresses

    /// @notice CREATE2 address through the deterministic deployer.
    function create2Address(bytes32 salt, bytes memory initCode) public pure returns (address) {
        return address(
            uint160(uint256(keccak256(abi.encodePacked(bytes1(0xff), CREATE2_DEPLOYER, salt, keccak256(initCode)))))
        );
    }

    /// @notice The AdapterRegistry's init code (creation code + constructor arguments).
    function adapterRegistryInitCode(address owner) public pure returns (bytes memory) {
        return abi.encodePacked(type(AdapterRegistry).creationCode, abi.encode(owner));
    }

    /// @notice MarketOps' init code for this config (the market checks it was built with the same).
    function marketOpsInitCode(MarketBase.Config memory c) public pure returns (bytes memory) {
        return abi.encodePacked(type(MarketOps).creationCode, abi.encode(c));
    }

    /// @notice The JobMarket's init code for this config and its MarketOps.
    function jobMarketInitCode(MarketBase.Config memory c, address ops) public pure returns (bytes memory) {
        return abi.encodePacked(type(JobMarket).creationCode, abi.encode(c, ops));
    }

    /// @notice The ValidatorArbiter's init code.
    function arbiterInitCode(address market, address registry, uint16 quorum) public pure returns (bytes memory) {
        return abi.encodePacked(type(ValidatorArbiter).creationCode, abi.encode(market, registry, quorum));
    }

    /// @notice Where the AdapterRegistry of this owner is, on any chain.
    function predictAdapterRegistry(address owner) public pure returns (address) {
        return create2Address(SALT_ADAPTER_REGISTRY, adapterRegistryInitCode(owner));
    }

    /// @notice Every address a deployment with these parameters has, on any chain.
    function predict(Params memory p) public pure returns (Addresses memory a) {
        a.adapterRegistry = predictAdapterRegistry(p.config.owner);
        a.marketOps = create2Address(SALT_MARKET_OPS, marketOpsInitCode(p.config));
        a.jobMarket = create2Address(SALT_JOB_MARKET, jobMarketInitCode(p.config, a.marketOps));
        // The market's constructor creates its NodeRegistry (its first CREATE, nonce 1).
        a.nodeRegistry = _createAddress(a.jobMarket, 1);
        a.arbiter = create2Address(SALT_ARBITER, arbiterInitCode(a.jobMarket, a.adapterRegistry, p.quorum));
    }

    // ---------------------------------------------------------------- deployment

    /// @notice Deploys whichever contracts are not at their predicted addresses yet. `deployed` tells whether any
    ///         transaction was sent.
    function deploy(Params memory p) public returns (Addresses memory a, bool deployed) {
        if (CREATE2_DEPLOYER.code.length == 0) revert NoCreate2Deployer(CREATE2_DEPLOYER);
        a = predict(p);
        if (a.adapterRegistry != p.config.adapterRegistry) {
            revert UnexpectedAddress("adapterRegistry", p.config.adapterRegistry, a.adapterRegistry);
        }
        deployed = _ensure(
            "AdapterRegistry", SALT_ADAPTER_REGISTRY, adapterRegistryInitCode(p.config.owner), a.adapterRegistry
        );
        deployed = _ensure("MarketOps", SALT_MARKET_OPS, marketOpsInitCode(p.config), a.marketOps) || deployed;
        deployed =
            _ensure("JobMarket", SALT_JOB_MARKET, jobMarketInitCode(p.config, a.marketOps), a.jobMarket) || deployed;
        address registry = address(JobMarket(payable(a.jobMarket)).nodeRegistry());
        if (registry != a.nodeRegistry) revert UnexpectedAddress("nodeRegistry", registry, a.nodeRegistry);
        deployed = _ensure(
            "ValidatorArbiter", SALT_ARBITER, arbiterInitCode(a.jobMarket, a.adapterRegistry, p.quorum), a.arbiter
        ) || deployed;
    }

    /// @notice Points the market at the arbiter and allows the validators, where the broadcaster is the owner and
    ///         it is not done yet; otherwise prints the calls the owner must make.
    function configure(Addresses memory a, Params memory p, address broadcaster) public {
        JobMarket market = JobMarket(payable(a.jobMarket));
        AdapterRegistry registry = AdapterRegistry(a.adapterRegistry);
        bool isOwner = broadcaster == p.config.owner;
        if (address(market.arbiter()) != a.arbiter) {
            if (isOwner) market.setArbiter(a.arbiter);
            else _ownerMustCall("JobMarket", a.jobMarket, string.concat("setArbiter(", vm.toString(a.arbiter), ")"));
        }
        for (uint256 i; i < p.validators.length; ++i) {
            if (registry.isValidator(p.validators[i])) continue;
            if (isOwner) {
                registry.setValidator(p.validators[i], true);
            } else {
                _ownerMustCall(
                    "AdapterRegistry",
                    a.adapterRegistry,
                    string.concat("setValidator(", vm.toString(p.validators[i]), ",true)")
                );
            }
        }
    }

    /// @notice Writes deployments/<chainId>.json (repo root) with exactly the keys the node and SDK read.
    function writeJson(Addresses memory a, uint256 startBlock) public {
        string memory json = string.concat(
            "{\n",
            '  "chain_id": ',
            vm.toString(block.chainid),
            ",\n",
            '  "adapter_registry": "',
            vm.toString(a.adapterRegistry),
            '",\n',
            '  "node_registry": "',
            vm.toString(a.nodeRegistry),
            '",\n',
            '  "job_market": "',
            vm.toString(a.jobMarket),
            '",\n',
            '  "arbiter": "',
            vm.toString(a.arbiter),
            '",\n',
            '  "start_block": ',
            vm.toString(startBlock),
            "\n}\n"
        );
        if (!vm.exists(_dir())) vm.createDir(_dir(), true);
        vm.writeFile(_path(), json);
        _log(string.concat("wrote ", _path()));
        _log(json);
    }

    // ---------------------------------------------------------------- internals

    function _ensure(string memory name, bytes32 salt, bytes memory initCode, address expected)
        internal
        returns (bool deployed)
    {
        if (expected.code.length != 0) {
            _log(string.concat(name, " already deployed at ", vm.toString(expected), " (nothing sent)"));
            return false;
        }
        (bool ok, bytes memory ret) = CREATE2_DEPLOYER.call(abi.encodePacked(salt, initCode));
        if (!ok || ret.length != 20) revert Create2Failed(name);
        address got = address(bytes20(ret));
        if (got != expected) revert UnexpectedAddress(name, got, expected);
        _log(string.concat(name, " deployed at ", vm.toString(got)));
        return true;
    }

    /// @dev The start block of an earlier run (same addresses), else 0 (unknown: scan from genesis).
    function _knownStartBlock(Addresses memory a) internal view returns (uint256) {
        if (vm.exists(_path())) {
            string memory old = vm.readFile(_path());
            if (vm.parseJsonAddress(old, ".job_market") == a.jobMarket) return vm.parseJsonUint(old, ".start_block");
        }
        _log("contracts existed before this run and no earlier JSON names them: start_block = 0 (scan from genesis)");
        return 0;
    }

    function _ownerMustCall(string memory what, address at, string memory call) internal pure {
        _log(string.concat("NOT THE OWNER: the owner must call ", what, "(", vm.toString(at), ").", call));
    }

    function _dir() internal pure returns (string memory) {
        return "../deployments";
    }

    function _path() internal view returns (string memory) {
        return string.concat(_dir(), "/", vm.toString(block.chainid), ".json");
    }

    function _createAddress(address deployer, uint8 nonce) internal pure returns (address) {
        return address(uint160(uint256(keccak256(abi.encodePacked(bytes1(0xd6), bytes1(0x94), deployer, nonce)))));
    }

    /// @dev forge prints console.log calls; this is console.log(string) without forge-std.
    function _log(string memory s) internal pure {
        _sendLog(abi.encodeWithSignature("log(string)", s));
    }

    function _sendLog(bytes memory payload) private pure {
        function(bytes memory) internal view fnIn = _sendLogView;
        function(bytes memory) internal pure pureFn;
        assembly ("memory-safe") {
            pureFn := fnIn
        }
        pureFn(payload);
    }

    function _sendLogView(bytes memory payload) private view {
        address console = 0x000000000000000000636F6e736F6c652e6c6f67;
        assembly ("memory-safe") {
            pop(staticcall(gas(), console, add(payload, 0x20), mload(payload), 0, 0))
        }
    }
}
