import math
import sys
from dataclasses import fields, replace

import pytest
from support.cli import dcpipe

from dcpipe.errors import SettingsError
from dcpipe.pipeline import config
from dcpipe.stages.common.ranges import numeric_fields
from dcpipe.stages.evaluate.settings import EvalSettings

SETTINGS = [config.Config, *config.SECTIONS.values(), EvalSettings]


def _ranges(cls) -> dict:
    """The RANGES beside each settings class (the module it is defined in)."""
    return sys.modules[cls.__module__].RANGES


def _outside(cls):
    """(field, value) pairs just outside each field's range, and NaN / inf for float fields."""
    for name, allowed in _ranges(cls).items():
        kind = next(f.type for f in fields(cls) if f.name == name)
        yield name, kind(allowed.low) if allowed.low_open else kind(allowed.low) - 1
        yield name, kind(allowed.high * 2 + 1)
        if kind is float:
            yield from ((name, math.nan), (name, math.inf))


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_every_numeric_setting_has_a_range(cls):
    assert set(numeric_fields(cls)) == set(_ranges(cls))


@pytest.mark.parametrize("cls, name, value", [(cls, name, value) for cls in SETTINGS
                                              for name, value in _outside(cls)],
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_a_setting_outside_its_range_is_refused_naming_key_and_range(cls, name, value):
    default = cls()
    with pytest.raises(SettingsError, match=rf"^{name} must be (a finite number )?in "
                                            rf"[\[(]{_ranges(cls)[name].low}, "):
        replace(default, **{name: value})


def test_defaults_cover_every_stage():
    c = config.defaults("deepcluster")
    assert set(c) >= {"seed", "shard", "model", "extract", "cluster", "train"}
    assert c["train"]["lr"] == 0.05 and c["cluster"]["niter"] == 20


def test_file_overrides_defaults_and_flags_override_file(tmp_path):
    path = tmp_path / "dcpipe.toml"
    path.write_text("seed = 3\n[cluster]\nk = 7\n")
    c = config.load(path)
    pca_dim = config.default_config().cluster.pca_dim
    assert (c.seed, c.cluster.k, c.cluster.pca_dim) == (3, 7, pca_dim)
    c = config.override(c, "cluster", {"k": 9, "pca_dim": None})
    assert (c.cluster.k, c.cluster.pca_dim) == (9, pca_dim)


def test_heads_may_each_have_their_own_k(tmp_path):
    path = tmp_path / "dcpipe.toml"
    path.write_text("[cluster]\nk_per_head = [30, 100, 300]\n")
    settings = config.load(path).cluster
    assert [settings.head_k(h) for h in range(settings.heads)] == [30, 100, 300]
    assert settings.largest_k == 300 and config.default_config().cluster.head_k(2) == 300


def test_int_accepted_where_float_expected(tmp_path):
    path = tmp_path / "dcpipe.toml"
    path.write_text("[train]\nlr = 1\n")
    assert config.load(path).train.lr == 1.0


@pytest.mark.parametrize("text, message", [
    ("[cluster]\nkk = 3\n", "unknown setting 'kk'"),
    ("[cluster]\nk = 'ten'\n", "k must be int"),
    ("[model]\nsobel = 1\n", "sobel must be true or false"),
    ("cluster = 3\n", "[cluster] must be a table"),
    ("[cluster\n", "not valid TOML"),
    ("[cluster]\nk = 0\n", "dcpipe.toml: k must be in [1, 1000000], got 0"),
    ("[model]\narch = 'resnet'\n", "unknown architecture 'resnet'"),
    ("[train]\ncolour_strength = 2\n", "colour_strength must be in [0, 1.25], got 2"),
    ("[cluster]\nk_per_head = 30\n", "k_per_head must be list"),
    ("[cluster]\nk_per_head = [30, 100]\n", "k_per_head lists 2 sizes but heads = 3"),
    ("[cluster]\nheads = 2\nk_per_head = [30, 0]\n", "k_per_head must list whole numbers in [1, "),
    ("[cluster]\nheads = 2\nk_per_head = [30, 1.5]\n", "k_per_head must list whole numbers"),
    ("[cluster]\nk_per_head = [30, 100, 300]\nsample_size = 200\n",
     "sample_size=200 is smaller than k=300"),
])
def test_bad_config_names_the_problem(tmp_path, text, message):
    path = tmp_path / "dcpipe.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.load(path)


def test_dumped_config_loads_back(tmp_path):
    path = tmp_path / "dcpipe.toml"
    changed = config.with_changes(config.default_config(), {"train": {"lr": 0.2}}, "test")
    path.write_text(config.dumps(changed))
    assert config.load(path) == changed


def test_the_commented_template_is_the_defaults(tmp_path):
    path = tmp_path / "dcpipe.toml"
    path.write_text(config.template())
    assert config.load(path) == config.default_config()
    for method in config.METHOD_CHANGES:  # the method line of it decides the rest
        path.write_text(config.template(method))
        assert config.load(path) == config.default_config(method)


def test_choosing_deepcluster_v2_brings_its_settings_under_the_files_own(tmp_path):
    path = tmp_path / "dcpipe.toml"
    path.write_text('[train]\nmethod = "deepcluster-v2"\n[cluster]\nheads = 2\n')
    c = config.load(path)
    assert (c.model.sobel, c.model.projection, c.model.dropout, c.cluster.pca_dim) == \
        (False, 128, 0.0, 0)
    assert (c.train.lr_schedule, c.cluster.heads) == ("cosine", 2)  # the file's value wins
    path.write_text('[train]\nmethod = "deepcluster-v3"\n')
    with pytest.raises(config.ConfigError, match="unknown method 'deepcluster-v3'"):
        config.load(path)


@pytest.mark.parametrize("text, message", [
    ("[extract]\nbatch_size = 0\n", "batch_size must be in [1, 65536], got 0"),
    ("[model]\nwidth = -4\n", "width must be in [0, 1024], got -4"),
    ("[train]\nlr = nan\n", "lr must be a finite number in (0, 100], got nan"),
    ("[model]\ninput_size = 100000\n", "input_size must be in [8, 1024], got 100000"),
])
def test_settings_out_of_range_exit_2_naming_file_key_and_range(tmp_path, text, message):
    (tmp_path / "dcpipe.toml").write_text(text)
    out = dcpipe(tmp_path, "run", "--rounds", "1")
    assert out.returncode == 2
    assert out.stderr.strip() == f"dcpipe: error: {tmp_path / 'dcpipe.toml'}: {message}"
