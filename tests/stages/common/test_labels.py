import json

import numpy as np
import pytest

from dcpipe.stages.common.labels import (LabelsError, index_digest, label_lookup, load_labels,
                                         read_index, verify_labels, write_labels)


def shards(offset=0):
    return [("000000", ["a", "b", "c"], np.array([2, -1, 0], dtype=np.int32) + offset),
            ("000001", ["d", "e"], np.array([1, 1], dtype=np.int32) + offset)]


def test_written_index_is_plain_numpy_and_json(tmp_path):
    write_labels(tmp_path, shards(), {"k": 3, "round": 2})
    index = json.loads((tmp_path / "labels" / "index.json").read_text())
    assert index["k"] == 3 and index["round"] == 2 and index["n_samples"] == 5
    assert [(s["name"], s["count"], s["labelled"]) for s in index["shards"]] == [("000000", 3, 2), ("000001", 2, 2)]
    assert np.load(tmp_path / "labels" / "000000.npy", allow_pickle=False).tolist() == [2, -1, 0]
    keys, labels = load_labels(tmp_path / "labels", "000001")
    assert keys == ["d", "e"] and labels.dtype == np.int32
    lookup = label_lookup(tmp_path / "labels", cache_shards=1)
    assert [lookup.label("000000", "c"), lookup.label("000001", "e"), lookup.label("000000", "b")] == [0, 1, -1]
    with pytest.raises(KeyError):
        lookup.label("000001", "zz")


def test_rewrite_replaces_whole_and_debris_of_a_killed_run_is_ignored(tmp_path):
    write_labels(tmp_path, shards(), {"k": 3})
    (tmp_path / ".labels.partial").mkdir()
    (tmp_path / ".labels.partial" / "junk.npy").write_bytes(b"half")
    write_labels(tmp_path, shards(offset=1), {"k": 4})
    assert read_index(tmp_path / "labels")["k"] == 4
    assert load_labels(tmp_path / "labels", "000000")[1].tolist() == [3, 0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels"]


def test_bad_names_and_shapes_are_refused(tmp_path):
    with pytest.raises(LabelsError, match="unsafe"):
        write_labels(tmp_path, [("../evil", ["a"], np.zeros(1, np.int32))], {"k": 1})
    with pytest.raises(LabelsError, match="2 keys"):
        write_labels(tmp_path, [("000000", ["a", "b"], np.zeros(3, np.int32))], {"k": 1})
    assert not (tmp_path / "labels").exists()
    with pytest.raises(LabelsError, match="unsafe"):
        load_labels(tmp_path, "../x")
    with pytest.raises(LabelsError, match="index.json"):
        read_index(tmp_path / "labels")


@pytest.mark.parametrize("name, content", [("000000.npy", None), ("000001.keys.json", b'["d","x"]')])
def test_a_changed_label_file_is_refused_naming_it(tmp_path, name, content):
    folder = write_labels(tmp_path, shards(), {"k": 3})
    digest = index_digest(folder)
    if content is None:  # one label changed, still a valid .npy of the same shape
        np.save(folder / name, np.array([2, -1, 1], dtype=np.int32), allow_pickle=False)
    else:
        (folder / name).write_bytes(content)
    with pytest.raises(LabelsError, match=name.replace(".", r"\.") + ".*sha256"):
        load_labels(folder, name.split(".")[0])
    [problem] = verify_labels(folder)
    assert name in problem and index_digest(folder) == digest
    assert index_digest(write_labels(tmp_path, shards(offset=0)[::-1], {"k": 3})) != digest
