// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice One adapter of a job: which one, how strongly it is merged, and the fee its publisher gets.
struct AdapterTerm {
    uint32 id;
    /// @dev Merge weight in basis points (10000 = 1.0), as the engine's weighted merge takes it.
    uint16 weightBps;
    /// @dev The registry's fee at submission (at most what the submitter accepted), paid to the adapter.
    uint96 fee;
    /// @dev sha256 of the adapter file, copied from the registry at submission.
    bytes32 contentHash;
}

/// @notice Everything about a job, emitted once in JobSubmitted and re-supplied in calldata by every later
///         call; storage keeps only its hash (see JobSlot). `submittedAt`, `jobId` and the fees are set by the
///         market at submission, so the hash also pins what the market decided.
struct Terms {
    uint64 jobId;
    address submitter;
    uint96 price;
    uint40 submittedAt;
    uint40 deadline;
    uint32 serviceWindow;
    uint32 maxTokens;
    uint16 protocolFeeBps;
    bytes32 baseModel;
    bytes32 inputHash;
    AdapterTerm[] adapters;
}

/// @notice What a submitter asks for one adapter: its id, merge weight and the highest fee it accepts.
struct AdapterRequest {
    uint32 id;
    uint16 weightBps;
    uint96 maxFee;
}

/// @notice A job request for `submitRequest` (several adapters, input by CID, own service window).
struct JobRequest {
    AdapterRequest[] adapters;
    uint32 maxTokens;
    uint64 deadline;
    /// @dev Seconds a claimant has to post its result before anyone may reclaim the job; 0 = the default.
    uint32 serviceWindow;
}

/// @notice One result in a `submitResults` batch.
struct ResultItem {
    Terms terms;
    /// @dev The output bytes inline (at most MAX_INLINE_BYTES), or empty when `outputCid` is given.
    bytes output;
    string outputCid;
    /// @dev keccak256 of the output; computed by the market for inline outputs (the value given is ignored).
    bytes32 outputHash;
    /// @dev Hash of the verification proof the node built while generating (zero when it built none).
    bytes32 proofHash;
}

/// @notice Status of a job. "Final" after a result means the challenge window passed or a dispute failed.
enum JobStatus {
    None,
    Open,
    Claimed,
    Resulted,
    Disputed,
    Final,
    Cancelled,
    Expired,
    Refunded
}

/// @title JobSlot
/// @notice The one storage word a job keeps: bits 255..64 a 192-bit truncated keccak256 of its terms,
///         63..56 its status, 55..24 the claimant's NodeRegistry id, bit 23 set once the submitter has been
///         compensated for a slash (so it is never compensated twice), 22..0 a time offset in seconds from
///         `submittedAt` (the claim's time while Claimed, the result's while Resulted or Disputed).
library JobSlot {
    uint256 internal constant HASH_MASK = ~uint256(type(uint64).max);

    /// @dev keccak256 of the terms' canonical ABI encoding (the struct's own encoding, as abi.encode(t) writes
    ///      it after its leading offset word), hashed straight from calldata. A non-canonical encoding (another
    ///      array offset, dirty padding) hashes differently, so it can never match a stored hash.
    function hashOf(Terms calldata t) internal pure returns (bytes32 h) {
        uint256 n = t.adapters.length;
        assembly ("memory-safe") {
            let len := add(0x180, mul(n, 0x80))
            let ptr := mload(0x40)
            calldatacopy(ptr, t, len)
            h := keccak256(ptr, len)
        }
    }

    /// @dev The same hash for terms built in memory (at submission).
    function hashOfMemory(Terms memory t) internal pure returns (bytes32 h) {
        bytes memory enc = abi.encode(t);
        assembly ("memory-safe") {
            h := keccak256(add(enc, 0x40), sub(mload(enc), 0x20))
        }
    }

    uint256 internal constant COMPENSATED = 1 << 23;
    uint256 internal constant OFFSET_MASK = COMPENSATED - 1;

    /// @dev `flags` is the slot's previous value (only its COMPENSATED bit is kept). offset < 2^23 s (97 days)
    ///      holds because the market bounds MAX_JOB_DURATION + the challenge window below it.
    function pack(bytes32 termsHash, JobStatus status, uint32 nodeId, uint256 flags, uint256 offset)
        internal
        pure
        returns (uint256)
    {
        return (uint256(termsHash) & HASH_MASK) | (uint256(uint8(status)) << 56) | (uint256(nodeId) << 24)
            | (flags & COMPENSATED) | (offset & OFFSET_MASK);
    }

    function compensated(uint256 slot) internal pure returns (bool) {
        return slot & COMPENSATED != 0;
    }

    function matches(uint256 slot, bytes32 termsHash) internal pure returns (bool) {
        return slot & HASH_MASK == uint256(termsHash) & HASH_MASK;
    }

    function status(uint256 slot) internal pure returns (JobStatus) {
        return JobStatus(uint8(slot >> 56));
    }

    function nodeId(uint256 slot) internal pure returns (uint32) {
        return uint32(slot >> 24);
    }

    function offset(uint256 slot) internal pure returns (uint256) {
        return slot & OFFSET_MASK;
    }
}

/// @title TermsAt
/// @notice Fields of terms in calldata, read with one calldataload each at their offsets in the canonical ABI
///         encoding (the layout JobSlot.hashOf hashes). Only for terms whose hash matched the stored one: those
///         bytes are canonical, so each field is where this library reads it and carries no dirty bits.
library TermsAt {
    function _word(Terms calldata t, uint256 offset) private pure returns (uint256 v) {
        assembly ("memory-safe") {
            v := calldataload(add(t, offset))
        }
    }

    function jobId(Terms calldata t) internal pure returns (uint256) {
        return _word(t, 0x00);
    }

    function price(Terms calldata t) internal pure returns (uint256) {
        return _word(t, 0x40);
    }

    function submittedAt(Terms calldata t) internal pure returns (uint256) {
        return _word(t, 0x60);
    }

    function deadline(Terms calldata t) internal pure returns (uint256) {
        return _word(t, 0x80);
    }

    function protocolFeeBps(Terms calldata t) internal pure returns (uint256) {
        return _word(t, 0xe0);
    }

    function baseModel(Terms calldata t) internal pure returns (bytes32) {
        return bytes32(_word(t, 0x100));
    }

    /// @dev The adapters array: its length word at 0x160 (the offset word at 0x140 is 0x160), then 4 words each.
    function adapterCount(Terms calldata t) internal pure returns (uint256) {
        return _word(t, 0x160);
    }

    function adapterId(Terms calldata t, uint256 i) internal pure returns (uint256) {
        return _word(t, 0x180 + i * 0x80);
    }

    function adapterFee(Terms calldata t, uint256 i) internal pure returns (uint256) {
        return _word(t, 0x180 + i * 0x80 + 0x40);
    }
}
