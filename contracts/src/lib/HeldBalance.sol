// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title HeldBalance
/// @notice Earnings that stay contestable for a challenge window, in one storage word per payee, with what has
///         matured kept in the same word (so maturing never writes another slot).
/// @dev Credits made at time t go to the bucket of epoch e = t / window and mature at (e + 2) * window, which is
///      always more than one window after t. The word holds the epoch E of its newest bucket, that bucket
///      (credits of epoch E), an older bucket (credits of epoch E - 1, or empty) and a matured amount:
///        bits 0..79 newest bucket, 80..159 older bucket, 160..191 E, 192..255 matured.
///      A credit in epoch E adds to the newest bucket; in E + 1 it moves the older bucket (epoch E - 1, matured
///      at E + 1) to matured and shifts; in E + 2 or later both buckets have matured. Maturing thus needs no
///      transaction of its own and no other storage: the next credit or the withdrawal does it. Only when the
///      matured amount would not fit its 64 bits does `credit` hand it to the caller (to a pull balance).
///      A dispute made within the window of a result finds that result's bucket still held (its epoch is E or
///      E - 1) and takes the amount back out.
library HeldBalance {
    uint256 private constant BUCKET_MASK = (uint256(1) << 80) - 1;
    uint256 private constant EPOCH_MASK = (uint256(1) << 32) - 1;
    uint256 private constant MATURED_MAX = (uint256(1) << 64) - 1;

    /// @notice More than 2^80 - 1 wei (about 1.2 million ether) credited to one payee in one epoch.
    error HeldOverflow();
    error HeldUnderflow(uint256 amount, uint256 held);

    /// @dev Adds `amount` at epoch `epoch` (never before the word's newest epoch: credits use the block time).
    ///      Returns the new word and what matured and did not fit the word (0 almost always).
    function credit(uint256 word, uint256 epoch, uint256 amount) internal pure returns (uint256, uint256 spilled) {
        (uint256 newest, uint256 older, uint256 e, uint256 matured) = unpack(word);
        if (word == 0 || epoch > e + 1) {
            // An empty word, or both buckets at least two epochs old: everything held has matured.
            matured += newest + older;
            (newest, older) = (amount, 0);
        } else if (epoch == e + 1) {
            matured += older; // epoch e - 1: matures at e + 1
            (newest, older) = (amount, newest);
        } else {
            newest += amount;
        }
        if (newest > BUCKET_MASK) revert HeldOverflow();
        if (matured > MATURED_MAX) (spilled, matured) = (matured, 0);
        return (pack(newest, older, epoch > e || word == 0 ? epoch : e, matured), spilled);
    }

    /// @dev Takes `amount` back out of the bucket of `epoch` (a dispute within the window).
    function debit(uint256 word, uint256 epoch, uint256 amount) internal pure returns (uint256) {
        (uint256 newest, uint256 older, uint256 e, uint256 matured) = unpack(word);
        if (epoch == e && newest >= amount) {
            newest -= amount;
        } else if (epoch + 1 == e && older >= amount) {
            older -= amount;
        } else {
            revert HeldUnderflow(amount, epoch == e ? newest : (epoch + 1 == e ? older : 0));
        }
        return pack(newest, older, e, matured);
    }

    /// @dev Splits a word into what has matured at epoch `nowEpoch` (the matured amount and any bucket at least
    ///      two epochs old) and the word that stays held.
    function release(uint256 word, uint256 nowEpoch) internal pure returns (uint256 rest, uint256 matured) {
        (uint256 newest, uint256 older, uint256 e, uint256 m) = unpack(word);
        matured = m;
        if (older != 0 && nowEpoch >= e + 1) (matured, older) = (matured + older, 0);
        if (newest != 0 && nowEpoch >= e + 2) (matured, newest) = (matured + newest, 0);
        rest = newest == 0 && older == 0 ? 0 : pack(newest, older, e, 0);
    }

    /// @dev Everything held in the word's buckets (not the matured amount).
    function total(uint256 word) internal pure returns (uint256) {
        (uint256 newest, uint256 older,,) = unpack(word);
        return newest + older;
    }

    function unpack(uint256 word)
        internal
        pure
        returns (uint256 newest, uint256 older, uint256 epoch, uint256 matured)
    {
        newest = word & BUCKET_MASK;
        older = (word >> 80) & BUCKET_MASK;
        epoch = (word >> 160) & EPOCH_MASK;
        matured = word >> 192;
    }

    function pack(uint256 newest, uint256 older, uint256 epoch, uint256 matured) internal pure returns (uint256) {
        return newest | (older << 80) | (epoch << 160) | (matured << 192);
    }
}
