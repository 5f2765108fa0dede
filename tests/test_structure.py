"""The house rules, checked: data flows one way and defaults live in one place."""
import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dcpipe.pipeline import config, methods

PACKAGE = Path(config.__file__).resolve().parents[1]  # the dcpipe/ folder
SHARED = {"common", "sources"}  # the only stage-level packages others may import
# layer -> the dcpipe layers it may import
ALLOWED = {"shards": {"errors", "shards"}, "stages": {"errors", "shards", "stages"},
           "pipeline": {"errors", "shards", "stages", "pipeline"}}


def imported_modules(path: Path, package: str) -> set[str]:
    """Every dcpipe module `path` imports (relative imports resolved against `package`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "dcpipe" or m.startswith("dcpipe.")}


def violations(root: Path) -> list[str]:
    """Imports that break the layering under `root` (a dcpipe/ folder)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        module = ".".join(("dcpipe", *parts))
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        layer = parts[0] if len(parts) > 1 else None
        for target in imported_modules(path, package.removesuffix(".__init__")):
            tparts = target.split(".")[1:]
            if layer and tparts and tparts[0] not in ALLOWED[layer]:
                found.append(f"{module} imports {target}: {layer} may not import {tparts[0]}")
            elif layer == "stages" and len(parts) > 2 and len(tparts) > 1 and tparts[0] == "stages":
                mine, theirs = parts[1], tparts[1]
                if mine in SHARED and theirs not in SHARED:
                    found.append(f"{module} imports {target}: shared {mine} may not import a stage")
                elif theirs != mine and theirs not in SHARED:
                    found.append(f"{module} imports {target}: stage {mine} may not import stage {theirs}")
    return found


def test_no_stage_package_imports_another_and_no_layer_imports_upward():
    assert violations(PACKAGE) == []


@pytest.mark.parametrize("where, line, expected", [
    ("stages/train/stage.py", "from dcpipe.stages.cluster.kmeans import nearest",
     "stage train may not import stage cluster"),
    ("stages/train/stage.py", "from dcpipe.stages.cluster import kmeans",
     "stage train may not import stage cluster"),
    ("stages/common/models.py", "import dcpipe.stages.extract.stage",
     "shared common may not import a stage"),
    ("stages/shard/stage.py", "from dcpipe.pipeline import workspace",
     "stages may not import pipeline"),
    ("shards/reader.py", "from dcpipe.stages.common import images", "shards may not import stages"),
    ("stages/cluster/stage.py", "from ..train import outputs", "stage cluster may not import stage train"),
])
def test_the_import_check_catches_a_cross_stage_import(tmp_path, where, line, expected):
    root = tmp_path / "dcpipe"
    path = root / where
    path.parent.mkdir(parents=True)
    path.write_text(f"{line}\n")
    found = violations(root)
    assert found and all(expected in message for message in found), found


def template_values(text: str) -> tuple[dict, dict]:
    """(the template's settings, {(section, key): {method: value}} of its commented-out ones)."""
    commented, section = {}, ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[] ")
        found = re.match(r"# (\w+) = .*by method: (.*)$", line)
        if found:
            commented[(section, found.group(1))] = tomllib.loads(
                found.group(2).replace(", ", "\n").replace("deepcluster-v2", '"deepcluster-v2"'))
    return tomllib.loads(text), commented


def test_every_settings_default_equals_defaults_toml(tmp_path):
    written, commented = template_values(config.template())
    expected = config.defaults()
    for section, values in written.items():
        if isinstance(values, dict):
            assert values == {k: v for k, v in expected[section].items()
                              if (section, k) not in methods.method_keys()}, section
    assert set(commented) == methods.method_keys()  # what a method decides is left to it
    for (section, key), by_method in commented.items():
        assert by_method == {m: config.defaults(m)[section][key] for m in methods.METHOD_CHANGES}
    path = tmp_path / "dcpipe.toml"
    path.write_text(config.template())
    assert config.load(path) == config.default_config()


def test_a_drifted_default_is_seen():
    drifted = config.template().replace("shard_size = 1000", "shard_size = 1001")
    written, _ = template_values(drifted)
    assert written["shard"] != {k: v for k, v in config.defaults()["shard"].items()}
    drifted = config.template().replace("deepcluster-v2 = 300", "deepcluster-v2 = 301")
    _, commented = template_values(drifted)
    assert commented[("cluster", "k")]["deepcluster-v2"] != config.defaults("deepcluster-v2")["cluster"]["k"]


def test_status_and_the_cli_do_not_import_torch():
    probe = ("import sys, dcpipe.pipeline.cli, dcpipe.pipeline.status, dcpipe.pipeline.workspace; "
             "print(sorted(m for m in ('torch', 'faiss') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
