import pytest

from dcpipe.pipeline import config


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
    ("[cluster]\nk = 0\n", "dcpipe.toml: k, niter and heads must be positive"),
    ("[model]\narch = 'resnet'\n", "unknown architecture 'resnet'"),
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
    assert (c.model.sobel, c.model.projection, c.cluster.pca_dim) == (False, 128, 0)
    assert (c.train.lr_schedule, c.cluster.heads) == ("cosine", 2)  # the file's value wins
    path.write_text('[train]\nmethod = "deepcluster-v3"\n')
    with pytest.raises(config.ConfigError, match="unknown method 'deepcluster-v3'"):
        config.load(path)
