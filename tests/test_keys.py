import os
from pathlib import Path

import pytest
from eth_account import Account

from node.keys import KeystoreError, load_keystore, read_password, write_keystore


def test_roundtrip_mode_0600(tmp_path: Path) -> None:
    acct = Account.create()
    path = tmp_path / "k.json"
    address = write_keystore(path, acct.key, "pw", kdf_iterations=2**10)
    assert address == acct.address
    assert (path.stat().st_mode & 0o777) == 0o600
    assert load_keystore(path, "pw").address == acct.address


def test_wrong_password(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    write_keystore(path, Account.create().key, "pw", kdf_iterations=2**10)
    with pytest.raises(KeystoreError, match="wrong password"):
        load_keystore(path, "nope")


def test_world_readable_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    write_keystore(path, Account.create().key, "pw", kdf_iterations=2**10)
    os.chmod(path, 0o644)
    with pytest.raises(KeystoreError, match="chmod 600"):
        load_keystore(path, "pw")


def test_missing_keystore_and_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeystoreError, match="openlora node init"):
        load_keystore(tmp_path / "none.json", "pw")
    monkeypatch.delenv("OPENLORA_KEYSTORE_PASSWORD", raising=False)
    with pytest.raises(KeystoreError, match="OPENLORA_KEYSTORE_PASSWORD"):
        read_password(None)
    (tmp_path / "pw").write_text("secret\n")
    assert read_password(tmp_path / "pw") == "secret"
