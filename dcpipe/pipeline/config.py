"""The workspace configuration: defaults < dcpipe.toml < command-line flags, as typed settings.

The settings dataclasses of the stages (and ModelSpec) are the only place defaults live;
defaults.toml is their commented copy that `dcpipe init` writes (a test keeps the two equal).
Every key has a default, so a typo in a user's file is an error rather than a silently ignored
setting; a value of the wrong type or out of range is an error naming the file and the key.
"""

import tomllib
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import tomli_w

from dcpipe.errors import DcpipeError, SettingsError
from dcpipe.pipeline.methods import DEFAULT_METHOD, METHOD_CHANGES
from dcpipe.stages.cluster.settings import ClusterSettings
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.common.ranges import Range, check_ranges
from dcpipe.stages.extract.settings import ExtractSettings
from dcpipe.stages.shard.settings import ShardSettings
from dcpipe.stages.train.settings import TrainSettings


RANGES = {"seed": Range(0, 2**63 - 1)}  # numpy's SeedSequence takes no negative seed


class ConfigError(DcpipeError):
    """A config file or override that cannot be used; the message says what and where."""


@dataclass(frozen=True)
class Config:
    seed: int = 0  # base seed: every round's random streams derive from it (common/seeds.py)
    shard: ShardSettings = field(default_factory=ShardSettings)
    model: ModelSpec = field(default_factory=ModelSpec)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self):
        check_ranges(self, RANGES)

    def as_dict(self) -> dict:
        return asdict(self)


SECTIONS = {f.name: f.default_factory for f in fields(Config) if f.name != "seed"}


def defaults(method: str = DEFAULT_METHOD) -> dict:
    """Every setting of a workspace that chose `method` and nothing else."""
    if method not in METHOD_CHANGES:
        raise ConfigError(f"unknown method {method!r} (known: {', '.join(METHOD_CHANGES)})")
    changes = {**METHOD_CHANGES[method]}
    changes["train"] = {**changes.get("train", {}), "method": method}
    return merge(Config().as_dict(), changes, f"method {method}")


def default_config(method: str = DEFAULT_METHOD) -> Config:
    return build(defaults(method), f"method {method}")


def template(method: str = DEFAULT_METHOD) -> str:
    """defaults.toml: every default with a comment on what it means (what `dcpipe init` writes),
    naming `method`."""
    text = resources.files(__package__).joinpath("defaults.toml").read_text()
    return text.replace(f'method = "{DEFAULT_METHOD}" ', f'method = "{method}" ', 1)


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


def build(values: dict, where: str) -> Config:
    """Typed settings from a complete dict (defaults merged in); range errors name `where`."""
    try:
        return Config(seed=values["seed"],
                      **{name: cls(**values[name]) for name, cls in SECTIONS.items()})
    except SettingsError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def chosen_method(user: dict, where: str) -> str:
    """The method a workspace file names ([train] method), or the default."""
    section = user.get("train")
    method = section.get("method", DEFAULT_METHOD) if isinstance(section, dict) else DEFAULT_METHOD
    if method not in METHOD_CHANGES:
        raise ConfigError(f"{where}: unknown method {method!r} (known: {', '.join(METHOD_CHANGES)})")
    return method


def load(path: Path) -> Config:
    """The chosen method's defaults, then the TOML file at `path` (if it exists)."""
    user = {}
    if path.exists():
        try:
            user = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    values = merge(defaults(chosen_method(user, str(path))), user, str(path))
    return build(values, str(path))


def override(config: Config, section: str, values: dict) -> Config:
    """`values` (flag name -> value, None = flag not given) layered over `config.<section>`."""
    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        return config
    merged = merge(config.as_dict(), given if section == "" else {section: given}, "command line")
    return build(merged, "command line")


def with_changes(config: Config, changes: dict, where: str) -> Config:
    """`config` with a nested dict of changes ({"train": {"lr": 0.1}}), checked like a file."""
    return build(merge(config.as_dict(), changes, where), where)


def dumps(config: Config) -> str:
    return tomli_w.dumps(config.as_dict())
