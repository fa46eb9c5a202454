// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title NodeRegistry
/// @notice Compute nodes stake native tokens here, name the key that signs their results, the base model they
///         serve and their libp2p peer id. The job market locks part of a node's stake while it holds a claim
///         and slashes it when the node misses a service window or a dispute finds a result fraudulent. Leaving
///         takes an unstake request and a delay longer than the market's challenge window and dispute timeout.
///         The registry is created by its JobMarket, so the market allowed to lock and slash is fixed at
///         deployment: nobody can point it at another market later.
/// @dev Stake accounting: `stake` is bonded stake (slashable) and includes `locked`; `pendingUnstake` has left
///      the bond and waits for its delay. This contract's balance always equals the sum of stake + pending.
contract NodeRegistry is ReentrancyGuardTransient {
    /// @notice The public view of one node (the ABI struct returned by `getNode`).
    struct Node {
        address signer;
        bytes32 baseModel;
        uint256 stake;
        uint256 locked;
        uint256 pendingUnstake;
        uint64 unstakeAvailableAt;
        bool active;
        string peerId;
    }

    /// @dev Storage layout: a claim reads slots 1-2 and writes slot 1; a result reads slot 0 and writes slot 1.
    ///      Each node gets a 32-bit id at registration so that a job can name its claimant in 32 bits.
    struct NodeRecord {
        address signer; // slot 0
        uint64 unstakeAvailableAt; // slot 0
        uint104 stake; // slot 1
        uint104 locked; // slot 1
        bool active; // slot 1
        uint32 nodeId; // slot 1
        bytes32 baseModel; // slot 2
        uint256 pendingUnstake; // slot 3
        string peerId; // slot 4..
    }

    /// @notice Longest libp2p peer id string accepted, in bytes.
    uint256 public constant MAX_PEER_ID_LENGTH = 128;

    /// @notice Least bonded stake for a node to be active, in wei.
    uint256 public immutable minStake;
    /// @notice Seconds between an unstake request and the withdrawal it allows.
    uint64 public immutable unstakeDelay;
    /// @notice The JobMarket allowed to lock, unlock and slash stake: the contract that created this one.
    address public immutable market;

    /// @notice Number of nodes ever registered (also the highest node id; ids start at 1).
    uint32 public nodeCount;

    mapping(address operator => NodeRecord) private _nodes;
    mapping(uint32 nodeId => address operator) private _operators;

    event NodeRegistered(
        address indexed operator, address indexed signer, bytes32 indexed baseModel, string peerId, uint256 stake
    );
    event NodeUpdated(address indexed operator, address indexed signer, bytes32 indexed baseModel, string peerId);
    event StakeAdded(address indexed operator, uint256 amount);
    event UnstakeRequested(address indexed operator, uint256 amount, uint64 availableAt);
    event StakeWithdrawn(address indexed operator, uint256 amount);
    event NodeSlashed(address indexed operator, uint256 amount);
    /// @notice Emitted once, when the owner wires the registry to its job market.

    /// @notice Only the job market may lock, unlock or slash stake.
    error NotMarket(address caller);
    /// @notice This operator already has a node; use update() or addStake().
    error NodeAlreadyRegistered(address operator);
    /// @notice This operator has no node; call register() first.
    error NodeNotRegistered(address operator);
    /// @notice The signer address is zero.
    error ZeroSigner();
    /// @notice The base model id is zero: pass keccak256 of the base model name.
    error ZeroBaseModel();
    /// @notice The peer id is empty or longer than MAX_PEER_ID_LENGTH bytes.
    error InvalidPeerId();
    /// @notice Registration must send at least minStake wei.
    error StakeBelowMinimum(uint256 sent, uint256 minimum);
    /// @notice The amount must be positive.
    error ZeroAmount();
    /// @notice Not enough stake that is neither locked by a claim nor pending withdrawal.
    error InsufficientFreeStake(uint256 requested, uint256 free);
    /// @notice Nothing is pending withdrawal; call requestUnstake() first.
    error NothingToWithdraw();
    /// @notice The unstake delay has not passed yet.
    error UnstakeNotReady(uint64 availableAt);
    /// @notice The native-token transfer failed (the receiver reverted).
    error TransferFailed(address to, uint256 amount);
    /// @notice The stake would not fit the 104-bit accounting fields (about 2e13 ether).
    error StakeOverflow();

    /// @param minStake_ Least stake, in wei, to register and stay active.
    /// @param unstakeDelay_ Seconds an unstake request waits before it can be withdrawn.
    constructor(uint256 minStake_, uint64 unstakeDelay_) {
        minStake = minStake_;
        unstakeDelay = unstakeDelay_;
        market = msg.sender;
    }

    modifier onlyMarket() {
        if (msg.sender != market) revert NotMarket(msg.sender);
        _;
    }

    // ------------------------------------------------------------------ operators

    /// @notice Register the caller as a node operator, staking msg.value (at least minStake).
    /// @param signer Key that signs results (may differ from the operator key that sends transactions).
    /// @param baseModel keccak256 of the base model name the node serves.
    /// @param peerId libp2p peer id of the node.
    function register(address signer, bytes32 baseModel, string calldata peerId) external payable {
        NodeRecord storage n = _nodes[msg.sender];
        if (n.nodeId != 0) revert NodeAlreadyRegistered(msg.sender);
        _checkProfile(signer, baseModel, peerId);
        if (msg.value < minStake) revert StakeBelowMinimum(msg.value, minStake);
        if (msg.value > type(uint104).max) revert StakeOverflow();
        uint32 nodeId = ++nodeCount;
        _operators[nodeId] = msg.sender;
        n.signer = signer;
        n.nodeId = nodeId;
        n.active = true;
        n.stake = uint104(msg.value);
        n.baseModel = baseModel;
        n.peerId = peerId;
        emit NodeRegistered(msg.sender, signer, baseModel, peerId, msg.value);
    }

    /// @notice Change the signer key, served base model or peer id. Claims already held keep running; their
    ///         results must be signed by the signer registered when the result is submitted.
    function update(address signer, bytes32 baseModel, string calldata peerId) external {
        NodeRecord storage n = _registered(msg.sender);
        _checkProfile(signer, baseModel, peerId);
        n.signer = signer;
        n.baseModel = baseModel;
        n.peerId = peerId;
        emit NodeUpdated(msg.sender, signer, baseModel, peerId);
    }

    /// @notice Add msg.value to the caller's bonded stake; reactivates a node whose stake reaches minStake.
    function addStake() external payable {
        NodeRecord storage n = _registered(msg.sender);
        if (msg.value == 0) revert ZeroAmount();
        uint256 stake = uint256(n.stake) + msg.value;
        if (stake > type(uint104).max) revert StakeOverflow();
        // Exact: stake <= type(uint104).max is checked above.
        // forge-lint: disable-next-line(unsafe-typecast)
        n.stake = uint104(stake);
        if (stake >= minStake) n.active = true;
        emit StakeAdded(msg.sender, msg.value);
    }

    /// @notice Move `amount` of free stake out of the bond; withdraw it with withdrawUnstaked() after
    ///         unstakeDelay. A new request restarts the delay for everything pending. A node whose bonded
    ///         stake falls below minStake becomes inactive (it can no longer claim jobs).
    function requestUnstake(uint256 amount) external {
        NodeRecord storage n = _registered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        uint256 free = uint256(n.stake) - n.locked;
        if (amount > free) revert InsufficientFreeStake(amount, free);
        // amount <= free <= stake < 2^120, so the cast is exact.
        // forge-lint: disable-next-line(unsafe-typecast)
        n.stake -= uint104(amount);
        n.pendingUnstake += amount;
        uint64 availableAt = uint64(block.timestamp) + unstakeDelay;
        n.unstakeAvailableAt = availableAt;
        if (n.stake < minStake) n.active = false;
        emit UnstakeRequested(msg.sender, amount, availableAt);
    }

    /// @notice Send the caller all stake whose unstake delay has passed.
    function withdrawUnstaked() external nonReentrant {
        NodeRecord storage n = _nodes[msg.sender];
        uint256 amount = n.pendingUnstake;
        if (amount == 0) revert NothingToWithdraw();
        if (block.timestamp < n.unstakeAvailableAt) revert UnstakeNotReady(n.unstakeAvailableAt);
        n.pendingUnstake = 0;
        emit StakeWithdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ------------------------------------------------------------------ market hooks

    /// @notice Lock `amount` of the operator's free stake for a claim. Job market only.
    function lockStake(address operator, uint256 amount) external onlyMarket {
        NodeRecord storage n = _nodes[operator];
        uint256 free = uint256(n.stake) - n.locked;
        if (amount > free) revert InsufficientFreeStake(amount, free);
        // amount <= free < 2^120.
        // forge-lint: disable-next-line(unsafe-typecast)
        n.locked += uint104(amount);
    }

    /// @notice Release up to `amount` of the operator's locked stake after a claim ends. Job market only.
    function unlockStake(address operator, uint256 amount) external onlyMarket {
        NodeRecord storage n = _nodes[operator];
        // forge-lint: disable-next-line(unsafe-typecast)
        n.locked = amount >= n.locked ? 0 : n.locked - uint104(amount);
    }

    /// @notice Take up to `amount` of the operator's locked stake (a claim it did not serve in time) and send it
    ///         to the job market. Returns what was taken. Job market only.
    function slashLocked(address operator, uint256 amount) external onlyMarket nonReentrant returns (uint256 taken) {
        NodeRecord storage n = _nodes[operator];
        taken = amount > n.locked ? n.locked : amount;
        // taken <= locked <= stake < 2^104.
        // forge-lint: disable-next-line(unsafe-typecast)
        n.locked -= uint104(taken);
        // forge-lint: disable-next-line(unsafe-typecast)
        n.stake -= uint104(taken);
        _afterSlash(operator, n, taken);
    }

    /// @notice Take up to `amount` of the operator's stake wherever it is (free, waiting to be unstaked, then
    ///         locked) for a fraudulent result, and send it to the job market. Returns what was taken.
    function slashAny(address operator, uint256 amount) external onlyMarket nonReentrant returns (uint256 taken) {
        NodeRecord storage n = _nodes[operator];
        uint256 left = amount;
        uint256 free = uint256(n.stake) - n.locked;
        uint256 part = left > free ? free : left;
        // forge-lint: disable-next-line(unsafe-typecast)
        n.stake -= uint104(part);
        left -= part;
        part = left > n.pendingUnstake ? n.pendingUnstake : left;
        n.pendingUnstake -= part;
        left -= part;
        part = left > n.locked ? n.locked : left;
        // forge-lint: disable-next-line(unsafe-typecast)
        n.locked -= uint104(part);
        // forge-lint: disable-next-line(unsafe-typecast)
        n.stake -= uint104(part);
        left -= part;
        taken = amount - left;
        _afterSlash(operator, n, taken);
    }

    // ------------------------------------------------------------------ views

    /// @notice Everything about one node (all zero for an unknown operator).
    function getNode(address operator) external view returns (Node memory) {
        NodeRecord storage n = _nodes[operator];
        return Node({
            signer: n.signer,
            baseModel: n.baseModel,
            stake: n.stake,
            locked: n.locked,
            pendingUnstake: n.pendingUnstake,
            unstakeAvailableAt: n.unstakeAvailableAt,
            active: n.active,
            peerId: n.peerId
        });
    }

    /// @notice Bonded stake that no claim has locked.
    function freeStake(address operator) public view returns (uint256) {
        NodeRecord storage n = _nodes[operator];
        return uint256(n.stake) - n.locked;
    }

    /// @notice Whether the operator's node is active, serves `baseModel` and has `amount` of free stake.
    function isEligible(address operator, bytes32 baseModel, uint256 amount) external view returns (bool) {
        NodeRecord storage n = _nodes[operator];
        return n.active && n.baseModel == baseModel && uint256(n.stake) - n.locked >= amount;
    }

    /// @notice The key whose EIP-712 signature the market accepts for the operator's results.
    function signerOf(address operator) external view returns (address) {
        return _nodes[operator].signer;
    }

    /// @notice The operator's node id (0 when not registered).
    function nodeIdOf(address operator) external view returns (uint32) {
        return _nodes[operator].nodeId;
    }

    /// @notice The operator of a node id (zero address for an unknown id).
    function operatorOf(uint32 nodeId) external view returns (address) {
        return _operators[nodeId];
    }

    /// @notice Operator and current signer of a node id.
    function claimantOf(uint32 nodeId) external view returns (address operator, address signer) {
        operator = _operators[nodeId];
        signer = _nodes[operator].signer;
    }

    /// @notice For the market's claim path: the operator's node id (0 unless active) and its base model.
    function claimer(address operator) external view returns (uint32 nodeId, bytes32 baseModel) {
        NodeRecord storage n = _nodes[operator];
        if (!n.active) return (0, bytes32(0));
        return (n.nodeId, n.baseModel);
    }

    /// @notice For the market's result path: the operator's node id and the signer its results must carry.
    function claimantInfo(address operator) external view returns (uint32 nodeId, address signer) {
        NodeRecord storage n = _nodes[operator];
        return (n.nodeId, n.signer);
    }

    // ------------------------------------------------------------------ internals

    function _registered(address operator) private view returns (NodeRecord storage n) {
        n = _nodes[operator];
        if (n.nodeId == 0) revert NodeNotRegistered(operator);
    }

    function _checkProfile(address signer, bytes32 baseModel, string calldata peerId) private pure {
        if (signer == address(0)) revert ZeroSigner();
        if (baseModel == bytes32(0)) revert ZeroBaseModel();
        if (bytes(peerId).length == 0 || bytes(peerId).length > MAX_PEER_ID_LENGTH) revert InvalidPeerId();
    }

    function _afterSlash(address operator, NodeRecord storage n, uint256 taken) private {
        if (n.stake < minStake) n.active = false;
        if (taken == 0) return;
        emit NodeSlashed(operator, taken);
        _send(msg.sender, taken);
    }

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }
}
