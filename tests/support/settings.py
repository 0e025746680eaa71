"""Settings as the configuration tests write them: two fixed keys, the environment, a TOML file.

Shared by the settings in process (unit/test_config.py) and the command
line as processes (e2e/test_config_cli.py).
"""

from __future__ import annotations

from pathlib import Path

K1_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
K2_HEX = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
K1, K2 = bytes.fromhex(K1_HEX), bytes.fromhex(K2_HEX)


def env(store: Path, **extra: str) -> dict[str, str]:
    """The two settings every gateway needs (the first key, `store` as its storage), plus `extra`."""
    return {"GATEWAY_KEY": K1_HEX, "GATEWAY_STORAGE": store.as_uri(), **extra}


def write_toml(tmp_path: Path, text: str) -> Path:
    """`text` as `tmp_path/gateway.toml`."""
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path
