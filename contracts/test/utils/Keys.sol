// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ClaimKey, JobHead, ResultEntry, ResultItem, Terms, TermsHash} from "../../src/lib/JobTypes.sol";

/// @notice Builds the compact keys and entries claimJobs / submitResults take from full terms, as a node does.
library Keys {
    /// @notice The compact keys claimJobs takes, as a node builds them from the terms it read.
    function claimKeys(Terms[] memory ts) internal pure returns (ClaimKey[] memory keys) {
        keys = new ClaimKey[](ts.length);
        for (uint256 i; i < ts.length; ++i) {
            keys[i] = claimKey(ts[i]);
        }
    }

    /// @dev The submitResults entries for full-terms items (a CID output becomes output = CID, outputHash given).
    function entries(ResultItem[] memory items) internal pure returns (ResultEntry[] memory es) {
        es = new ResultEntry[](items.length);
        for (uint256 i; i < items.length; ++i) {
            es[i] = entry(items[i]);
        }
    }

    function claimKey(Terms memory t) internal pure returns (ClaimKey memory) {
        return ClaimKey({head: JobHead.pack(t), adapters: TermsHash.adapterWords(t), bodyHash: TermsHash.bodyHash(t)});
    }

    function entry(ResultItem memory it) internal pure returns (ResultEntry memory) {
        bool byCid = it.output.length == 0;
        return ResultEntry({
            head: JobHead.pack(it.terms),
            adapters: TermsHash.adapterWords(it.terms),
            restHash: TermsHash.rest(it.terms.baseModel, TermsHash.bodyHash(it.terms)),
            output: byCid ? bytes(it.outputCid) : it.output,
            outputHash: byCid ? it.outputHash : bytes32(0),
            proofHash: it.proofHash
        });
    }
}
