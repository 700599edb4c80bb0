"""Configuration: the documented shapes load, overrides apply, bad values name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import load_config
from dicomnode.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
[node]
ae_title = "DICOMNODE"
port = 11112
storage_dir = "storage"
database_url = "sqlite:///storage/dicomnode.db"
[series]
quiet_seconds = 10
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 4242
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_minimal_shape_works_as_written(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL), environ={})
    assert (cfg.node.ae_title, cfg.node.port, str(cfg.node.storage_dir)) == ("DICOMNODE", 11112, "storage")
    assert cfg.node.database_url == "sqlite:///storage/dicomnode.db"
    assert cfg.series.quiet_seconds == 10
    assert cfg.destination("pacs").port == 4242


def test_shipped_config_loads() -> None:
    cfg = load_config(ROOT / "config" / "dicomnode.toml", environ={})
    assert cfg.node.port == 11112 and cfg.node.sqlite_synchronous == "FULL"


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "DICOMNODE_NODE__PORT": "11113",
        "DICOMNODE_SERIES__QUIET_SECONDS": "2.5",
        "DICOMNODE_NODE__ALLOWED_CALLING_AES": '["CT1", "MR2"]',
        "DICOMNODE_NODE__ALLOWED_HOSTS": "10.0.0.0/8,192.168.1.7",
        "DICOMNODE_LOG_LEVEL": "debug",
    }
    cfg = load_config(write(tmp_path, MINIMAL), environ=env)
    assert cfg.node.port == 11113 and cfg.series.quiet_seconds == 2.5
    assert cfg.node.allowed_calling_aes == ("CT1", "MR2")
    assert cfg.node.allowed_hosts == ("10.0.0.0/8", "192.168.1.7")
    assert cfg.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[node]\nport = "abc"', "node.port"),
        ("[node]\nport = 70000", "node.port"),
        ('[node]\nae_title = "ABCDEFGHIJKLMNOPQ"', "node.ae_title"),
        ("[series]\nquiet_seconds = -1", "series.quiet_seconds"),
        ("[node]\ncolour = 1", "node.colour"),
        ('[[destinations]]\nname = "p"\nae_title = "P"\nhost = "h"', "destinations[0].port"),
        ('[node]\nallowed_hosts = ["not-an-ip"]', "node.allowed_hosts"),
        ('[node]\ndatabase_url = "mysql://x"', "node.database_url"),
        ("[series]\nquiet_seconds = 20\nincomplete_timeout_seconds = 5", "series.incomplete_timeout_seconds"),
        ('[node.tls]\ncert_file = "/nonexistent.crt"\nkey_file = "/nonexistent.key"', "node.tls.cert_file"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(write(tmp_path, text), environ={})


def test_duplicate_destination_and_unknown_destination(tmp_path: Path) -> None:
    dup = MINIMAL + '[[destinations]]\nname = "pacs"\nae_title = "X"\nhost = "h"\nport = 1\n'
    with pytest.raises(ConfigError, match=r"destinations\[1\].name: duplicate"):
        load_config(write(tmp_path, dup), environ={})
    cfg = load_config(write(tmp_path, MINIMAL), environ={})
    with pytest.raises(ConfigError, match="configured: pacs"):
        cfg.destination("archive")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\nport = 1"), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="series.quiet_seconds"):
        load_config(write(tmp_path, MINIMAL), environ={"DICOMNODE_SERIES__QUIET_SECONDS": "soon"})
