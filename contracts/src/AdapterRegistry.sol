// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";

/// @title AdapterRegistry
/// @notice Registry of LoRA adapters: where to fetch each one (a UnixFS directory CID), the sha256 of its
///         `adapter_model.safetensors`, the base model it applies to, its shape, and the fee its publisher
///         earns per job. Validators allowed by the owner attest that an adapter is safe to load.
/// @dev The content hash, base model, CID and payees of an adapter never change after registration, so a
///      job that names an adapter id refers to exactly one file forever; only the fee and the retired flag move.
contract AdapterRegistry is Ownable2Step {
    /// @notice The public view of one adapter (the ABI struct returned by `getAdapter`).
    struct Adapter {
        address publisher;
        bytes32 contentHash;
        bytes32 baseModel;
        uint16 rank;
        uint64 size;
        uint96 feePerJob;
        bool retired;
        string cid;
    }

    /// @dev Storage layout, packed so that the job market's hot reads touch as few slots as possible:
    ///      submitting a job reads slots 0 and 1, claiming reads slot 2, settling reads slots 0 and 1.
    struct AdapterRecord {
        address publisher; // slot 0
        uint80 feePerJob; // slot 0
        bool retired; // slot 0
        bool hasPayees; // slot 0
        bytes32 contentHash; // slot 1
        bytes32 baseModel; // slot 2
        uint16 rank; // slot 3
        uint64 size; // slot 3
        string cid; // slot 4..
    }

    struct Payee {
        address account;
        uint16 shareBps;
    }

    /// @notice Basis points in one whole; payee shares must add up to this.
    uint16 public constant BPS = 10_000;
    /// @notice Most payees one adapter may split its fee among (bounds the gas of every payout).
    uint256 public constant MAX_PAYEES = 16;
    /// @notice Longest CID string accepted, in bytes.
    uint256 public constant MAX_CID_LENGTH = 128;
    /// @notice Highest fee per job (2^80 - 1 wei, about 1.2 million ether); the fee is stored in 80 bits.
    uint96 public constant MAX_FEE_PER_JOB = type(uint80).max;
    /// @notice Most validators allowed at once (bounds attestationCount's loop).
    uint256 public constant MAX_VALIDATORS = 64;

    uint256 private _count;
    mapping(uint256 adapterId => AdapterRecord) private _adapters;
    mapping(uint256 adapterId => Payee[]) private _payees;
    mapping(address validator => bool) public isValidator;
    /// @dev The validators allowed now (at most MAX_VALIDATORS); attestations count only theirs.
    address[] private _validators;
    mapping(uint256 adapterId => mapping(address validator => bool)) private _attested;

    event AdapterRegistered(
        uint256 indexed adapterId,
        address indexed publisher,
        bytes32 indexed baseModel,
        string cid,
        bytes32 contentHash,
        uint16 rank,
        uint64 size,
        uint96 feePerJob
    );
    event AdapterFeeUpdated(uint256 indexed adapterId, uint96 feePerJob);
    event AdapterRetired(uint256 indexed adapterId);
    event ValidatorSet(address indexed validator, bool allowed);
    event AdapterAttested(uint256 indexed adapterId, address indexed validator);
    event AdapterAttestationRevoked(uint256 indexed adapterId, address indexed validator);
    /// @notice Emitted by `registerWithPayees` right after `AdapterRegistered`.
    event AdapterPayeesSet(uint256 indexed adapterId, address[] payees, uint16[] sharesBps);

    /// @notice The CID is empty or longer than MAX_CID_LENGTH bytes.
    error InvalidCid();
    /// @notice The content hash is zero: pass the sha256 of adapter_model.safetensors.
    error ZeroContentHash();
    /// @notice The base model id is zero: pass keccak256 of the base model name.
    error ZeroBaseModel();
    /// @notice The fee per job is above MAX_FEE_PER_JOB.
    error FeeTooHigh(uint96 feePerJob, uint96 maximum);
    /// @notice Rank and size must both be positive.
    error InvalidShape(uint16 rank, uint64 size);
    /// @notice No adapter has this id (ids start at 1).
    error UnknownAdapter(uint256 adapterId);
    /// @notice Only the adapter's publisher may do this.
    error NotPublisher(uint256 adapterId, address caller);
    /// @notice The adapter is retired; register a new one instead.
    error AdapterIsRetired(uint256 adapterId);
    /// @notice Payee and share arrays differ in length, are empty, or have more than MAX_PAYEES entries.
    error InvalidPayees();
    /// @notice A payee is the zero address or has a zero share.
    error InvalidPayee(uint256 index);
    /// @notice Shares must add up to exactly 10000 basis points.
    error SharesDoNotSumToWhole(uint256 sum);
    /// @notice The validator address is zero.
    error ZeroValidator();
    /// @notice MAX_VALIDATORS are allowed already: disallow one first.
    error TooManyValidators(uint256 maximum);
    /// @notice Only a validator allowed by the owner may attest.
    error NotValidator(address caller);
    /// @notice This validator already attests this adapter.
    error AlreadyAttested(uint256 adapterId, address validator);
    /// @notice This validator has no attestation on this adapter to revoke.
    error NotAttested(uint256 adapterId, address validator);

    /// @notice The deployer becomes the owner, who allows and disallows validators.
    /// @param owner_ The account that allows validators (two-step ownership transfer).
    constructor(address owner_) Ownable(owner_) {}

    // ------------------------------------------------------------------ publishers

    /// @notice Register an adapter whose whole fee goes to the caller.
    /// @param cid UnixFS directory CID holding adapter_config.json and adapter_model.safetensors.
    /// @param contentHash sha256 of adapter_model.safetensors.
    /// @param baseModel keccak256 of the base model name the adapter was trained on.
    /// @param rank LoRA rank r.
    /// @param size Size of adapter_model.safetensors in bytes.
    /// @param feePerJob Wei paid to the publisher for every completed job that uses the adapter.
    /// @return adapterId The new adapter's id (ids start at 1).
    function register(
        string calldata cid,
        bytes32 contentHash,
        bytes32 baseModel,
        uint16 rank,
        uint64 size,
        uint96 feePerJob
    ) external returns (uint256 adapterId) {
        adapterId = _register(cid, contentHash, baseModel, rank, size, feePerJob, false);
    }

    /// @notice Register an adapter whose fee is split among contributors by basis points.
    /// @dev Rounding dust of each split goes to the last payee, so the whole fee is always paid out.
    /// @param payees Accounts credited with a share of every adapter fee.
    /// @param sharesBps Their shares in basis points; positive, adding up to 10000.
    /// @return adapterId The new adapter's id.
    function registerWithPayees(
        string calldata cid,
        bytes32 contentHash,
        bytes32 baseModel,
        uint16 rank,
        uint64 size,
        uint96 feePerJob,
        address[] calldata payees,
        uint16[] calldata sharesBps
    ) external returns (uint256 adapterId) {
        uint256 n = payees.length;
        if (n == 0 || n > MAX_PAYEES || n != sharesBps.length) revert InvalidPayees();
        uint256 sum;
        for (uint256 i; i < n; ++i) {
            if (payees[i] == address(0) || sharesBps[i] == 0) revert InvalidPayee(i);
            sum += sharesBps[i];
        }
        if (sum != BPS) revert SharesDoNotSumToWhole(sum);
        adapterId = _register(cid, contentHash, baseModel, rank, size, feePerJob, true);
        Payee[] storage list = _payees[adapterId];
        for (uint256 i; i < n; ++i) {
            list.push(Payee(payees[i], sharesBps[i]));
        }
        emit AdapterPayeesSet(adapterId, payees, sharesBps);
    }

    /// @notice Change the fee of future jobs; jobs already submitted keep the fee they were priced with.
    function setFee(uint256 adapterId, uint96 feePerJob) external {
        AdapterRecord storage a = _publisherRecord(adapterId);
        if (a.retired) revert AdapterIsRetired(adapterId);
        if (feePerJob > MAX_FEE_PER_JOB) revert FeeTooHigh(feePerJob, MAX_FEE_PER_JOB);
        // Exact: feePerJob <= MAX_FEE_PER_JOB = type(uint80).max is checked above.
        // forge-lint: disable-next-line(unsafe-typecast)
        a.feePerJob = uint80(feePerJob);
        emit AdapterFeeUpdated(adapterId, feePerJob);
    }

    /// @notice Stop new jobs from using the adapter. Jobs already submitted still settle. Irreversible.
    function retire(uint256 adapterId) external {
        AdapterRecord storage a = _publisherRecord(adapterId);
        if (a.retired) revert AdapterIsRetired(adapterId);
        a.retired = true;
        emit AdapterRetired(adapterId);
    }

    // ------------------------------------------------------------------ validators

    /// @notice Allow or disallow a validator. Only validators allowed now count in attestationCount and may
    ///         dispute results in the market; a disallowed validator's attestations stop counting at once.
    function setValidator(address validator, bool allowed) external onlyOwner {
        if (validator == address(0)) revert ZeroValidator();
        if (isValidator[validator] == allowed) return;
        isValidator[validator] = allowed;
        if (allowed) {
            if (_validators.length >= MAX_VALIDATORS) revert TooManyValidators(MAX_VALIDATORS);
            _validators.push(validator);
        } else {
            uint256 n = _validators.length;
            for (uint256 i; i < n; ++i) {
                if (_validators[i] == validator) {
                    _validators[i] = _validators[n - 1];
                    _validators.pop();
                    break;
                }
            }
        }
        emit ValidatorSet(validator, allowed);
    }

    /// @notice The validators allowed now.
    function validators() external view returns (address[] memory) {
        return _validators;
    }

    /// @notice Attest, as an allowed validator, that the adapter is safe to load.
    function attest(uint256 adapterId) external {
        if (!isValidator[msg.sender]) revert NotValidator(msg.sender);
        AdapterRecord storage a = _record(adapterId);
        if (a.retired) revert AdapterIsRetired(adapterId);
        if (_attested[adapterId][msg.sender]) revert AlreadyAttested(adapterId, msg.sender);
        _attested[adapterId][msg.sender] = true;
        emit AdapterAttested(adapterId, msg.sender);
    }

    /// @notice Withdraw the caller's attestation. A validator the owner has since disallowed may still
    ///         revoke its own attestations, so a removed validator can clean up after itself.
    function revoke(uint256 adapterId) external {
        if (!_attested[adapterId][msg.sender]) revert NotAttested(adapterId, msg.sender);
        _attested[adapterId][msg.sender] = false;
        emit AdapterAttestationRevoked(adapterId, msg.sender);
    }

    // ------------------------------------------------------------------ views

    /// @notice How many validators allowed now attest the adapter.
    function attestationCount(uint256 adapterId) external view returns (uint256 count) {
        uint256 n = _validators.length;
        for (uint256 i; i < n; ++i) {
            if (_attested[adapterId][_validators[i]]) ++count;
        }
    }

    /// @notice Whether `validator` attests the adapter.
    function hasAttested(uint256 adapterId, address validator) external view returns (bool) {
        return _attested[adapterId][validator];
    }

    /// @notice Everything about one adapter. Reverts UnknownAdapter for an id that was never registered.
    function getAdapter(uint256 adapterId) external view returns (Adapter memory) {
        AdapterRecord storage a = _record(adapterId);
        return Adapter({
            publisher: a.publisher,
            contentHash: a.contentHash,
            baseModel: a.baseModel,
            rank: a.rank,
            size: a.size,
            feePerJob: a.feePerJob,
            retired: a.retired,
            cid: a.cid
        });
    }

    /// @notice The fee split of an adapter; empty arrays when the publisher takes the whole fee.
    function payeesOf(uint256 adapterId) external view returns (address[] memory payees, uint16[] memory sharesBps) {
        _record(adapterId);
        Payee[] storage list = _payees[adapterId];
        uint256 n = list.length;
        payees = new address[](n);
        sharesBps = new uint16[](n);
        for (uint256 i; i < n; ++i) {
            payees[i] = list[i].account;
            sharesBps[i] = list[i].shareBps;
        }
    }

    /// @notice Number of adapters registered so far (also the highest id).
    function adapterCount() external view returns (uint256) {
        return _count;
    }

    /// @notice What the job market snapshots when a job is submitted, in one cheap call.
    /// @return exists Whether the id was registered.
    /// @return retired Whether the adapter is retired.
    /// @return contentHash sha256 of the adapter file.
    /// @return feePerJob Current fee per job.
    function jobTerms(uint256 adapterId)
        external
        view
        returns (bool exists, bool retired, bytes32 contentHash, uint96 feePerJob)
    {
        AdapterRecord storage a = _adapters[adapterId];
        exists = a.publisher != address(0);
        return (exists, a.retired, a.contentHash, a.feePerJob);
    }

    /// @notice What the job market snapshots into a job's terms, in one call.
    /// @return exists Whether the id was registered.
    /// @return retired Whether the adapter is retired.
    /// @return contentHash sha256 of the adapter file.
    /// @return baseModel The base model it applies to.
    /// @return feePerJob Current fee per job.
    function marketTerms(uint256 adapterId)
        external
        view
        returns (bool exists, bool retired, bytes32 contentHash, bytes32 baseModel, uint96 feePerJob)
    {
        AdapterRecord storage a = _adapters[adapterId];
        return (a.publisher != address(0), a.retired, a.contentHash, a.baseModel, a.feePerJob);
    }

    /// @notice The base model id of an adapter (zero for an unknown id).
    function baseModelOf(uint256 adapterId) external view returns (bytes32) {
        return _adapters[adapterId].baseModel;
    }

    /// @notice The content hash of an adapter (zero for an unknown id).
    function contentHashOf(uint256 adapterId) external view returns (bytes32) {
        return _adapters[adapterId].contentHash;
    }

    /// @notice What the job market needs to pay out a job, in one call: the content hash the result
    ///         signature covers, and who receives the adapter fee.
    /// @return contentHash sha256 of the adapter file.
    /// @return publisher The publisher, paid the whole fee when `payees` is empty.
    /// @return payees Fee split recipients (empty when none were set).
    /// @return sharesBps Their shares in basis points.
    function settlementTerms(uint256 adapterId)
        external
        view
        returns (bytes32 contentHash, address publisher, address[] memory payees, uint16[] memory sharesBps)
    {
        AdapterRecord storage a = _adapters[adapterId];
        contentHash = a.contentHash;
        publisher = a.publisher;
        if (a.hasPayees) {
            Payee[] storage list = _payees[adapterId];
            uint256 n = list.length;
            payees = new address[](n);
            sharesBps = new uint16[](n);
            for (uint256 i; i < n; ++i) {
                payees[i] = list[i].account;
                sharesBps[i] = list[i].shareBps;
            }
        }
    }

    // ------------------------------------------------------------------ internals

    function _register(
        string calldata cid,
        bytes32 contentHash,
        bytes32 baseModel,
        uint16 rank,
        uint64 size,
        uint96 feePerJob,
        bool hasPayees
    ) private returns (uint256 adapterId) {
        if (bytes(cid).length == 0 || bytes(cid).length > MAX_CID_LENGTH) revert InvalidCid();
        if (contentHash == bytes32(0)) revert ZeroContentHash();
        if (baseModel == bytes32(0)) revert ZeroBaseModel();
        if (rank == 0 || size == 0) revert InvalidShape(rank, size);
        if (feePerJob > MAX_FEE_PER_JOB) revert FeeTooHigh(feePerJob, MAX_FEE_PER_JOB);
        adapterId = ++_count;
        _adapters[adapterId] = AdapterRecord({
            publisher: msg.sender,
            // Exact: feePerJob <= MAX_FEE_PER_JOB = type(uint80).max is checked above.
            // forge-lint: disable-next-line(unsafe-typecast)
            feePerJob: uint80(feePerJob),
            contentHash: contentHash,
            baseModel: baseModel,
            rank: rank,
            size: size,
            retired: false,
            hasPayees: hasPayees,
            cid: cid
        });
        emit AdapterRegistered(adapterId, msg.sender, baseModel, cid, contentHash, rank, size, feePerJob);
    }

    function _record(uint256 adapterId) private view returns (AdapterRecord storage a) {
        a = _adapters[adapterId];
        if (a.publisher == address(0)) revert UnknownAdapter(adapterId);
    }

    function _publisherRecord(uint256 adapterId) private view returns (AdapterRecord storage a) {
        a = _record(adapterId);
        if (a.publisher != msg.sender) revert NotPublisher(adapterId, msg.sender);
    }
}
