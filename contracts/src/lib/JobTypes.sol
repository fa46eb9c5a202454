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

/// @notice A result with its job's full terms: what tests and tools build before turning it into a ResultEntry.
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

/// @notice What `claimJob(s)` re-supplies for a job instead of its whole terms (see TermsHash): the head word, the
///         adapter words and the body hash. The base model is not given: the market uses the claiming node's, so a
///         job for another base model simply does not match.
struct ClaimKey {
    uint256 head;
    uint256[] adapters;
    bytes32 bodyHash;
}

/// @notice One result for `submitResult(s)`: the job's key (head word and adapter words, all a result pays out
///         with, and restHash = keccak256(baseModel, bodyHash) for everything else, see TermsHash), its output and
///         proof hash.
struct ResultEntry {
    uint256 head;
    uint256[] adapters;
    bytes32 restHash;
    /// @dev The output bytes inline (at most MAX_INLINE_BYTES) when outputHash is zero; otherwise the CID (at most
    ///      MAX_CID_LENGTH bytes) of an output kept off chain whose keccak256 is outputHash.
    bytes output;
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

/// @title JobHead
/// @notice The head word of a job's terms: everything claims and results read, in one word.
///         Bits 255..192 jobId, 191..96 price, 95..56 submittedAt, 55..16 deadline, 15..0 protocolFeeBps.
///         Adapter words: bits 127..96 the adapter id, 95..0 its fee (higher bits zero).
library JobHead {
    function pack(Terms memory t) internal pure returns (uint256) {
        return (uint256(t.jobId) << 192) | (uint256(t.price) << 96) | (uint256(t.submittedAt) << 56)
            | (uint256(t.deadline) << 16) | uint256(t.protocolFeeBps);
    }

    function jobId(uint256 head) internal pure returns (uint256) {
        return head >> 192;
    }

    function price(uint256 head) internal pure returns (uint256) {
        return (head >> 96) & type(uint96).max;
    }

    function submittedAt(uint256 head) internal pure returns (uint256) {
        return (head >> 56) & type(uint40).max;
    }

    function deadline(uint256 head) internal pure returns (uint256) {
        return (head >> 16) & type(uint40).max;
    }

    function protocolFeeBps(uint256 head) internal pure returns (uint256) {
        return head & type(uint16).max;
    }

    function adapterWord(AdapterTerm memory a) internal pure returns (uint256) {
        return (uint256(a.id) << 96) | uint256(a.fee);
    }

    function adapterId(uint256 word) internal pure returns (uint256) {
        return word >> 96;
    }

    function adapterFee(uint256 word) internal pure returns (uint256) {
        return word & type(uint96).max;
    }
}

/// @title TermsHash
/// @notice The hash of a job's terms, in two levels so that claims and results re-supply a few words, not the
///         whole terms:
///           bodyHash  = keccak256(submitter, serviceWindow, maxTokens, inputHash, then per adapter weightBps,
///                       contentHash), each a 32-byte word;
///           restHash  = keccak256(baseModel, bodyHash);
///           termsHash = keccak256(head, restHash, adapter words...)   (JobHead's words).
///         Every input is a whole word hashed as given, so there is no non-canonical encoding: any other word
///         gives another hash. The market stores termsHash's top 192 bits (JobSlot).
library TermsHash {
    function hash(Terms memory t) internal pure returns (bytes32) {
        return ofWords(JobHead.pack(t), rest(t.baseModel, bodyHash(t)), adapterWords(t));
    }

    /// @dev One JobHead adapter word per adapter, in order.
    function adapterWords(Terms memory t) internal pure returns (uint256[] memory words) {
        uint256 n = t.adapters.length;
        words = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            words[i] = JobHead.adapterWord(t.adapters[i]);
        }
    }

    function bodyHash(Terms memory t) internal pure returns (bytes32 h) {
        uint256 n = t.adapters.length;
        bytes32[] memory w = new bytes32[](4 + 2 * n);
        w[0] = bytes32(uint256(uint160(t.submitter)));
        w[1] = bytes32(uint256(t.serviceWindow));
        w[2] = bytes32(uint256(t.maxTokens));
        w[3] = t.inputHash;
        for (uint256 i; i < n; ++i) {
            w[4 + 2 * i] = bytes32(uint256(t.adapters[i].weightBps));
            w[5 + 2 * i] = t.adapters[i].contentHash;
        }
        assembly ("memory-safe") {
            h := keccak256(add(w, 0x20), mul(mload(w), 0x20))
        }
    }

    function rest(bytes32 baseModel, bytes32 bodyHash_) internal pure returns (bytes32 h) {
        assembly ("memory-safe") {
            mstore(0x00, baseModel)
            mstore(0x20, bodyHash_)
            h := keccak256(0x00, 0x40)
        }
    }

    /// @dev termsHash from a key in calldata (hashed in scratch memory past the free pointer: nothing allocated).
    function ofKey(uint256 head, bytes32 restHash, uint256[] calldata adapters) internal pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let m := mload(0x40)
            let len := mul(adapters.length, 0x20)
            mstore(m, head)
            mstore(add(m, 0x20), restHash)
            calldatacopy(add(m, 0x40), adapters.offset, len)
            h := keccak256(m, add(0x40, len))
        }
    }

    function ofWords(uint256 head, bytes32 restHash, uint256[] memory adapters) internal pure returns (bytes32 h) {
        assembly ("memory-safe") {
            let m := mload(0x40)
            let n := mload(adapters)
            mstore(m, head)
            mstore(add(m, 0x20), restHash)
            for { let i := 0 } lt(i, n) { i := add(i, 1) } {
                mstore(add(m, add(0x40, mul(i, 0x20))), mload(add(adapters, add(0x20, mul(i, 0x20)))))
            }
            h := keccak256(m, add(0x40, mul(n, 0x20)))
        }
    }
}
