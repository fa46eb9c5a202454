// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title HeldBalance
/// @notice Earnings that stay contestable for a challenge window, in one storage word per payee.
/// @dev Credits made at time t go to the bucket of epoch e = t / window and mature at (e + 2) * window, which is
///      always more than one window after t. A word holds two buckets (amount 96 bits, epoch 32 bits each): a
///      credit in a new epoch can always reuse the older bucket, because a bucket two epochs old has matured, so
///      maturing never needs a transaction of its own: the next credit or the withdrawal does it. A dispute made
///      within the window of a result finds that result's bucket still held and takes the amount back out.
library HeldBalance {
    uint256 private constant AMOUNT_MASK = (uint256(1) << 96) - 1;

    error HeldOverflow();
    error HeldUnderflow(uint256 amount, uint256 held);

    /// @dev Adds `amount` at epoch `epoch`; returns the new word and what matured out of it on the way.
    function credit(uint256 word, uint256 epoch, uint256 amount) internal pure returns (uint256, uint256 matured) {
        (uint256 a0, uint256 e0, uint256 a1, uint256 e1) = unpack(word);
        if (a0 != 0 && e0 == epoch) {
            a0 += amount;
        } else if (a1 != 0 && e1 == epoch) {
            a1 += amount;
        } else {
            // Reuse an empty bucket, else the older one (it is at least two epochs old, hence matured).
            if (a0 == 0 || (a1 != 0 && e0 < e1)) {
                matured = a0;
                (a0, e0) = (amount, epoch);
            } else {
                matured = a1;
                (a1, e1) = (amount, epoch);
            }
        }
        if (a0 > AMOUNT_MASK || a1 > AMOUNT_MASK) revert HeldOverflow();
        return (pack(a0, e0, a1, e1), matured);
    }

    /// @dev Takes `amount` back out of the bucket of `epoch` (a dispute within the window).
    function debit(uint256 word, uint256 epoch, uint256 amount) internal pure returns (uint256) {
        (uint256 a0, uint256 e0, uint256 a1, uint256 e1) = unpack(word);
        if (e0 == epoch && a0 >= amount && a0 != 0) {
            a0 -= amount;
        } else if (e1 == epoch && a1 >= amount && a1 != 0) {
            a1 -= amount;
        } else {
            revert HeldUnderflow(amount, e0 == epoch ? a0 : (e1 == epoch ? a1 : 0));
        }
        return pack(a0, e0, a1, e1);
    }

    /// @dev Splits a word into what has matured at epoch `nowEpoch` and the word that stays held.
    function release(uint256 word, uint256 nowEpoch) internal pure returns (uint256 rest, uint256 matured) {
        (uint256 a0, uint256 e0, uint256 a1, uint256 e1) = unpack(word);
        if (a0 != 0 && e0 + 2 <= nowEpoch) (matured, a0, e0) = (a0, 0, 0);
        if (a1 != 0 && e1 + 2 <= nowEpoch) (matured, a1, e1) = (matured + a1, 0, 0);
        rest = pack(a0, e0, a1, e1);
    }

    /// @dev Everything held in the word, matured or not.
    function total(uint256 word) internal pure returns (uint256) {
        (uint256 a0,, uint256 a1,) = unpack(word);
        return a0 + a1;
    }

    function unpack(uint256 word) internal pure returns (uint256 a0, uint256 e0, uint256 a1, uint256 e1) {
        a0 = word & AMOUNT_MASK;
        e0 = (word >> 96) & 0xFFFFFFFF;
        a1 = (word >> 128) & AMOUNT_MASK;
        e1 = word >> 224;
    }

    function pack(uint256 a0, uint256 e0, uint256 a1, uint256 e1) internal pure returns (uint256) {
        return a0 | (e0 << 96) | (a1 << 128) | (e1 << 224);
    }
}
