"""Operator and signer keys: eth-account encrypted keystores, never logged, never world-readable."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

PASSWORD_ENV = "OPENLORA_KEYSTORE_PASSWORD"
log = logging.getLogger("openlora.keys")


class KeystoreError(RuntimeError):
    pass


def read_password(password_file: Path | None) -> str:
    if password_file is not None:
        try:
            if Path(password_file).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("password file %s is readable by other users: chmod 600 it", password_file)
            return Path(password_file).read_text().rstrip("\n")
        except FileNotFoundError:
            raise KeystoreError(
                f"password file {password_file} not found: fix [chain].password_file"
            ) from None
        except IsADirectoryError:
            raise KeystoreError(f"password file {password_file} is a directory") from None
    value = os.environ.get(PASSWORD_ENV)
    if value is None:
        raise KeystoreError(f"no keystore password: set [chain].password_file or the {PASSWORD_ENV} variable")
    return value


def load_keystore(path: Path, password: str) -> LocalAccount:
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeystoreError(f"keystore {path} not found (create one with `openlora node init`)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeystoreError(
            f"keystore {path} is readable by other users (mode {oct(mode & 0o777)}): chmod 600 it"
        )
    try:
        data = json.loads(path.read_text())
        key = Account.decrypt(data, password)
    except ValueError as e:
        if "MAC mismatch" in str(e):
            raise KeystoreError(
                f"wrong password for keystore {path}: check [chain].password_file or {PASSWORD_ENV}"
            ) from None
        raise KeystoreError(f"keystore {path} is not a valid eth-account keystore: {e}") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise KeystoreError(f"keystore {path} is not a valid eth-account keystore (missing {e})") from None
    return Account.from_key(key)


def write_keystore(
    path: Path, private_key: bytes | str, password: str, *, kdf_iterations: int | None = None
) -> str:
    """Encrypt a key to `path` with mode 0600; returns its address."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"iterations": kdf_iterations} if kdf_iterations else {}
    data = Account.encrypt(private_key, password, **kwargs)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.chmod(path, 0o600)
    return Account.from_key(private_key).address
