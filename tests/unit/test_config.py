"""Configuration: TOML file + GATEWAY_* environment, validated once (the CLI end to end: e2e/test_config_cli.py)."""

from __future__ import annotations

import base64
import stat
import wave
from pathlib import Path

import pytest
from support.settings import K1, K1_HEX, K2, K2_HEX, env, write_toml

from gateway.config import ConfigError, FileStorage, Settings, load_settings
from gateway.config.devdefault import SAMPLE_PATHS
from gateway.links.tokens import parse_key


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # Nothing here may create .gateway-dev in the project by accident.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "recordings"
    root.mkdir()
    return root


def config_error(config_file: Path | None = None, **environ: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_settings(config_file, environ)
    return caught.value


# --- values ----------------------------------------------------------------------------------


def test_environment_only(store):
    settings = load_settings(None, env(store))
    assert settings.keys == (K1,)
    assert settings.storages == (FileStorage(root=store.resolve()),)
    assert settings.dev_dir is None
    assert (
        settings.edge.max_ranges == 16 and settings.edge.chunk_size == 512 * 1024 and settings.edge.access_log is True
    )


def test_toml_file_values(tmp_path, store):
    config = write_toml(
        tmp_path,
        f"""
key = "{K1_HEX}"
storage = "{store.as_uri()}"
public_url = "https://storage.example.com/"
api_clients = "crm:{"ab" * 32}:/300/"

[edge]
cache_control = "no-store"
max_ranges = 4
chunk_size = 65536
access_log = false
""",
    )
    settings = load_settings(config, {})
    assert settings.keys == (K1,)
    assert settings.storages == (FileStorage(root=store.resolve()),)
    assert settings.public_url == "https://storage.example.com"
    assert [(c.id, c.token_sha256, c.prefix) for c in settings.clients] == [("crm", bytes.fromhex("ab" * 32), "300/")]
    assert settings.edge.cache_control == "no-store"
    assert settings.edge.max_ranges == 4
    assert settings.edge.chunk_size == 65536
    assert settings.edge.access_log is False


def test_environment_overrides_file(tmp_path, store):
    other = tmp_path / "other"
    other.mkdir()
    config = write_toml(
        tmp_path,
        f'key = "{K1_HEX}"\nstorage = "{store.as_uri()}"\npublic_url = "https://a.example"\n'
        "[edge]\nmax_ranges = 4\naccess_log = true\n",
    )
    settings = load_settings(
        config,
        {
            "GATEWAY_KEY": K2_HEX,
            "GATEWAY_STORAGE": other.as_uri(),
            "GATEWAY_PUBLIC_URL": "https://b.example",
            "GATEWAY_MAX_RANGES": "7",
            "GATEWAY_ACCESS_LOG": "off",
        },
    )
    assert settings.keys == (K2,)
    assert settings.storages == (FileStorage(root=other.resolve()),)
    assert settings.public_url == "https://b.example"
    assert settings.edge.max_ranges == 7
    assert settings.edge.access_log is False


def test_empty_environment_variable_does_not_override_file(tmp_path, store):
    config = write_toml(tmp_path, f'key = "{K1_HEX}"\nstorage = "{store.as_uri()}"\n')
    assert load_settings(config, {"GATEWAY_KEY": "", "GATEWAY_STORAGE": "  "}).keys == (K1,)


def test_example_config_has_only_known_settings(store):
    example = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"
    settings = load_settings(example, env(store))
    assert settings.keys == (K1,)
    assert settings.public_url == "https://storage.example.com"
    assert settings.edge.max_ranges == 16


def test_config_file_from_gateway_config_variable(tmp_path, store):
    config = write_toml(tmp_path, f'key = "{K2_HEX}"\nstorage = "{store.as_uri()}"\n')
    assert load_settings(None, {"GATEWAY_CONFIG": str(config)}).keys == (K2,)


def test_two_keys_comma_separated(store):
    settings = load_settings(None, env(store, GATEWAY_KEY=f"{K1_HEX}, base64:{base64.b64encode(K2).decode()}"))
    assert settings.keys == (K1, K2)


def test_two_keys_as_toml_array(tmp_path, store):
    config = write_toml(tmp_path, f'key = ["{K2_HEX}", "{K1_HEX}"]\nstorage = "{store.as_uri()}"\n')
    assert load_settings(config, {}).keys == (K2, K1)


def test_several_storages_in_order(tmp_path, store):
    second = tmp_path / "archive dir"
    second.mkdir()
    settings = load_settings(None, env(store, GATEWAY_STORAGE=f"{store.as_uri()},{second.as_uri()}"))
    assert [s.root for s in settings.storages] == [store.resolve(), second.resolve()]
    assert " " in str(settings.storages[1].root)  # %20 in the URL is decoded


def test_key_file(tmp_path, store):
    key_file = tmp_path / "key"
    key_file.write_text(K2_HEX + "\n")
    settings = load_settings(None, {"GATEWAY_KEY_FILE": str(key_file), "GATEWAY_STORAGE": store.as_uri()})
    assert settings.keys == (K2,)


def test_key_file_with_two_keys(tmp_path, store):
    key_file = tmp_path / "keys"
    key_file.write_text(f"{K1_HEX}\n{K2_HEX}\n")
    settings = load_settings(None, {"GATEWAY_KEY_FILE": str(key_file), "GATEWAY_STORAGE": store.as_uri()})
    assert settings.keys == (K1, K2)


def test_environment_key_file_overrides_key_in_file(tmp_path, store):
    # "Environment variables override the file": a secret mounted by the orchestrator
    # (GATEWAY_KEY_FILE) must win over a key written in the TOML file.
    key_file = tmp_path / "secret-key"
    key_file.write_text(K2_HEX + "\n")
    config = write_toml(tmp_path, f'key = "{K1_HEX}"\nstorage = "{store.as_uri()}"\n')
    settings = load_settings(config, {"GATEWAY_KEY_FILE": str(key_file)})
    assert settings.keys == (K2,)


# --- errors ------------------------------------------------------------------------------------


def assert_names(error: ConfigError, setting: str) -> None:
    assert setting in str(error)
    assert str(error).startswith(f"configuration error: {error.setting}: ")
    assert setting in error.setting
    assert "\n" not in str(error)


def test_unknown_toml_key_is_refused(tmp_path, store):
    config = write_toml(tmp_path, f'key = "{K1_HEX}"\nstorage = "{store.as_uri()}"\n[edge]\nchunk_sise = 4096\n')
    error = config_error(config)
    assert error.setting == "edge.chunk_sise"
    assert_names(error, "edge.chunk_sise")


def test_unknown_top_level_toml_key_is_refused(tmp_path, store):
    config = write_toml(tmp_path, f'keys = "{K1_HEX}"\nstorage = "{store.as_uri()}"\n')
    assert_names(config_error(config), "keys")


@pytest.mark.parametrize("text", ["key = ", "[edge\n", 'key = "unterminated\n', "a = 1\na = 2\n", "= 3\n"])
def test_bad_toml_is_refused(tmp_path, text):
    config = write_toml(tmp_path, text)
    error = config_error(config)
    assert_names(error, "--config")
    assert str(config) in str(error)


def test_missing_config_file_is_refused(tmp_path):
    error = config_error(tmp_path / "nope.toml")
    assert_names(error, "--config")


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("abcd", "64 hex"),
        (K1_HEX[:-2], "64 hex"),
        (K1_HEX + "00", "64 hex"),
        ("zz" * 32, "hexadecimal"),
        ("base64:" + base64.b64encode(b"x" * 16).decode(), "16 bytes"),
        ("base64:not*base64", "base64"),
        (f"{K1_HEX},{K1_HEX[:-1]}", "key 2"),
    ],
)
def test_bad_key_is_refused(store, value, hint):
    error = config_error(**env(store, GATEWAY_KEY=value))
    assert_names(error, "GATEWAY_KEY")
    assert hint in str(error)
    # The operator's (possibly nearly right) key is never echoed into logs.
    for part in value.split(","):
        assert part.removeprefix("base64:") not in str(error)


def test_bad_key_in_file_names_the_file(tmp_path, store):
    config = write_toml(tmp_path, f'key = "abcd"\nstorage = "{store.as_uri()}"\n')
    error = config_error(config)
    assert error.setting == f"key in {config}"
    assert_names(error, "key")


@pytest.mark.parametrize("value", ["00 " * 16 + "00" * 8, "0011 " * 12 + "0011"])
def test_key_with_inner_whitespace_is_refused(store, value):
    # 64 characters, but not 64 hex digits: accepting it would run with a 24-byte
    # (AES-192) or an unusable 26-byte key.
    error = config_error(**env(store, GATEWAY_KEY=value))
    assert_names(error, "GATEWAY_KEY")


def test_missing_key_file_is_refused(tmp_path, store):
    error = config_error(GATEWAY_KEY_FILE=str(tmp_path / "absent"), GATEWAY_STORAGE=store.as_uri())
    assert_names(error, "GATEWAY_KEY_FILE")


def test_bad_key_in_key_file_is_refused(tmp_path, store):
    key_file = tmp_path / "key"
    key_file.write_text("not-a-key\n")
    error = config_error(GATEWAY_KEY_FILE=str(key_file), GATEWAY_STORAGE=store.as_uri())
    assert_names(error, "GATEWAY_KEY_FILE")


def test_key_without_storage_is_refused():
    assert_names(config_error(GATEWAY_KEY=K1_HEX), "GATEWAY_STORAGE")


def test_storage_without_key_is_refused(store):
    assert_names(config_error(GATEWAY_STORAGE=store.as_uri()), "GATEWAY_KEY")


def test_missing_storage_dir_is_refused(tmp_path, store):
    error = config_error(**env(store, GATEWAY_STORAGE=(tmp_path / "absent").as_uri()))
    assert_names(error, "GATEWAY_STORAGE")
    assert "absent" in str(error)


def test_storage_that_is_a_file_is_refused(tmp_path, store):
    plain = tmp_path / "plain"
    plain.write_text("")
    assert_names(config_error(**env(store, GATEWAY_STORAGE=plain.as_uri())), "GATEWAY_STORAGE")


def test_one_bad_storage_among_several_is_refused(tmp_path, store):
    value = f"{store.as_uri()},{(tmp_path / 'absent').as_uri()}"
    assert_names(config_error(**env(store, GATEWAY_STORAGE=value)), "GATEWAY_STORAGE")


@pytest.mark.parametrize("value", ["ftp://host/dir", "http://example.com/x", "gopher://x", "/abs/dir", "recordings"])
def test_unknown_scheme_is_refused(store, value):
    error = config_error(**env(store, GATEWAY_STORAGE=value))
    assert_names(error, "GATEWAY_STORAGE")
    assert "scheme" in str(error)


@pytest.mark.parametrize("value", ["file:recordings", "file:./recordings", "file://recordings", "file://host/srv"])
def test_relative_or_remote_file_url_is_refused(store, value):
    assert_names(config_error(**env(store, GATEWAY_STORAGE=value)), "GATEWAY_STORAGE")


def test_storage_in_file_names_the_file(tmp_path, store):
    config = write_toml(tmp_path, f'key = "{K1_HEX}"\nstorage = "ftp://x"\n')
    error = config_error(config)
    assert error.setting == f"storage in {config}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_MAX_RANGES", "0"),
        ("GATEWAY_MAX_RANGES", "-1"),
        ("GATEWAY_MAX_RANGES", "1001"),
        ("GATEWAY_MAX_RANGES", "ten"),
        ("GATEWAY_MAX_RANGES", "1.5"),
        ("GATEWAY_CHUNK_SIZE", "4095"),
        ("GATEWAY_CHUNK_SIZE", str(16 * 1024 * 1024 + 1)),
        ("GATEWAY_CHUNK_SIZE", "1e6"),
        ("GATEWAY_ACCESS_LOG", "maybe"),
        ("GATEWAY_PUBLIC_URL", "storage.example.com"),
        ("GATEWAY_PUBLIC_URL", "ftp://storage.example.com"),
        ("GATEWAY_CACHE_CONTROL", "private\r\nX-Evil: 1"),
    ],
)
def test_bad_settings_are_refused_by_name(store, variable, value):
    assert_names(config_error(**env(store, **{variable: value})), variable)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GATEWAY_MAX_RANGES", "1"),
        ("GATEWAY_MAX_RANGES", "1000"),
        ("GATEWAY_CHUNK_SIZE", "4096"),
        ("GATEWAY_CHUNK_SIZE", "16777216"),
    ],
)
def test_numeric_bounds_are_inclusive(store, variable, value):
    settings = load_settings(None, env(store, **{variable: value}))
    assert getattr(settings.edge, variable.removeprefix("GATEWAY_").lower()) == int(value)


@pytest.mark.parametrize("line", ["max_ranges = 0", "max_ranges = 5000", "chunk_size = 1"])
def test_numeric_settings_out_of_range_in_file(tmp_path, store, line):
    config = write_toml(tmp_path, f'key = "{K1_HEX}"\nstorage = "{store.as_uri()}"\n[edge]\n{line}\n')
    error = config_error(config)
    setting = "edge." + line.split()[0]
    assert error.setting == f"{setting} in {config}"
    assert_names(error, setting)


@pytest.mark.parametrize("line", ["max_ranges = 2.5", "max_ranges = true", "chunk_size = 65536.9"])
def test_non_integer_toml_numbers_are_refused(tmp_path, store, line):
    # A float or a boolean where a count is expected is a mistake, not something to truncate.
    config = write_toml(tmp_path, f'key = "{K1_HEX}"\nstorage = "{store.as_uri()}"\n[edge]\n{line}\n')
    assert_names(config_error(config), "edge." + line.split()[0])


# --- development default ---------------------------------------------------------------------


def test_development_default(tmp_path):
    dev = tmp_path / "dev"
    settings = load_settings(None, {"GATEWAY_DEV_DIR": str(dev)})
    assert settings.dev_dir == dev.resolve()
    key_file = dev / "dev.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert settings.keys == (parse_key(key_file.read_text()),)
    assert len(settings.keys[0]) == 32
    (storage,) = settings.storages
    for path in SAMPLE_PATHS:
        target = storage.root / path.lstrip("/")
        with wave.open(str(target), "rb") as recording:
            assert recording.getnchannels() == 1
            assert recording.getsampwidth() == 2
            assert recording.getframerate() == 8000
            assert recording.getnframes() > 0
    assert not list(storage.root.rglob("*.tmp"))


def test_development_default_is_idempotent(tmp_path):
    environ = {"GATEWAY_DEV_DIR": str(tmp_path / "dev")}
    first = load_settings(None, environ)
    sample = first.storages[0].root / SAMPLE_PATHS[0].lstrip("/")
    before = sample.stat().st_mtime_ns
    second = load_settings(None, environ)
    assert second.keys == first.keys
    assert second.storages == first.storages
    assert sample.stat().st_mtime_ns == before


def test_development_default_is_relative_to_the_working_directory(tmp_path):
    settings = load_settings(None, {})
    assert settings.dev_dir == (tmp_path / ".gateway-dev").resolve()


def test_development_default_is_not_used_when_anything_is_configured(tmp_path, store):
    with pytest.raises(ConfigError):
        load_settings(None, {"GATEWAY_DEV_DIR": str(tmp_path / "dev"), "GATEWAY_STORAGE": store.as_uri()})
    assert not (tmp_path / "dev").exists()


def test_settings_repr_never_contains_the_key(tmp_path, store):
    for settings in (
        load_settings(None, env(store, GATEWAY_KEY=f"{K1_HEX},{K2_HEX}")),
        load_settings(None, {"GATEWAY_DEV_DIR": str(tmp_path / "dev")}),
    ):
        text = repr(settings) + str(settings)
        for key in settings.keys:
            for form in (key.hex(), key.hex().upper(), repr(key), base64.b64encode(key).decode(), str(list(key))):
                assert form not in text
        assert "keys" not in text


def test_settings_is_immutable(store):
    settings = load_settings(None, env(store))
    with pytest.raises(AttributeError):
        settings.keys = ()  # type: ignore[misc]
    assert isinstance(settings, Settings)
