from pathlib import Path

import pytest

from node.config import ConfigError, load_config, parse_config


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('[node]\nbase_model = "tiny-llama"\n[chain]\ndeployment = "dep.json"\nconfirmations = 3\n')
    c = load_config(cfg)
    assert c.node.base_model == "tiny-llama"
    assert c.chain.deployment == tmp_path / "dep.json"
    assert c.chain.confirmations == 3
    assert c.cache_dir == c.node.data_dir / "adapters"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[node]\nbase_modle = 'x'\n", "unknown key(s) base_modle"),
        ("[nodes]\n", "unknown section(s) nodes"),
        ("[chain]\nconfirmations = 'two'\n", "[chain].confirmations: expected int"),
        ("[chain]\nconfirmations = 0\n", "confirmations must be >= 1"),
        ("[chain]\nrpc_urls = ['localhost:8545']\n", "must be an http(s):// JSON-RPC endpoint"),
        ("[api]\nport = 70000\n", "not a TCP port"),
        ("[engine]\ncpu_threads = -1\n", "cpu_threads must be >= 0"),
        ("[engine]\ndtype = 'fp8'\n", "[engine].dtype: expected auto, bfloat16"),
        ("[node\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, toml: str, needle: str) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert needle in str(e.value)


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="openlora node init"):
        load_config(tmp_path / "nope.toml")


def test_int_accepted_for_float() -> None:
    assert parse_config({"chain": {"poll_interval_s": 2}}).chain.poll_interval_s == 2.0
