"""Shared fixtures: a real Anvil per test module, dev keys, the tiny model."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from chain.devnet import Anvil, dev_private_key
from inference.models import LoadedModel, tiny_llama

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return tiny_llama(0)


@pytest.fixture(scope="session")
def dev_keys() -> list[str]:
    return [dev_private_key(i) for i in range(6)]
