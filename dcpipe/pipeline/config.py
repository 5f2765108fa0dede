"""The workspace configuration: defaults < dcpipe.toml < command-line flags.

Every key has a default in defaults.toml, so a typo in a user's file is an error rather than
a silently ignored setting.
"""

import tomllib
from importlib import resources
from pathlib import Path

import tomli_w


class ConfigError(Exception):
    """A config file or override that cannot be used; the message says what and where."""


def defaults() -> dict:
    return tomllib.loads(resources.files(__package__).joinpath("defaults.toml").read_text())


def merge(base: dict, override: dict, where: str) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            merged[key] = merge(base[key], value, f"{where} [{key}]")
            continue
        merged[key] = _coerce(base[key], value, f"{where}: {key}")
    return merged


def _coerce(default, value, where: str):
    if isinstance(default, bool) != isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{where} must be {type(default).__name__}, got {value!r}")
    return value


def load(path: Path) -> dict:
    """Defaults merged with the TOML file at `path` (if it exists)."""
    config = defaults()
    if path.exists():
        try:
            user = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        config = merge(config, user, str(path))
    return config


def override(config: dict, section: str, values: dict) -> dict:
    """`values` (flag name -> value, None = flag not given) layered over `config[section]`."""
    given = {k: v for k, v in values.items() if v is not None}
    if section == "":
        return merge(config, given, "command line")
    return merge(config, {section: given}, "command line")


def dumps(config: dict) -> str:
    return tomli_w.dumps(config)
