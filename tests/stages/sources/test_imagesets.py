"""Image sets from shards, folders and tables: order, labels, failures, subsets."""

import numpy as np
import pytest
import torch
from torchvision import transforms

from dcpipe.shards.reader import ShardCorrupt, iter_shard, list_shards
from dcpipe.stages.sources.imagesets import ImageSet, choose_positions
from support.damage import cut, flip_in_member
from support.sample_shards import make_collection

torch.set_num_threads(1)
TO_TENSOR = transforms.ToTensor()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    make_collection(root, 3, [10, 3, 8], seed=4)
    return root


def read_all(image_set, **kwargs):
    keys, labels, images, failures = [], [], [], []
    for batch in image_set.batches(TO_TENSOR, **kwargs):
        keys += batch.keys
        labels += batch.labels
        failures += batch.failures
        if batch.images is not None:
            images.append(batch.images)
    return keys, labels, torch.cat(images) if images else None, failures


def test_shards_come_out_in_source_order_whatever_the_workers(shards):
    expected = [f"{info.name}/{s.key}" for info in list_shards(shards) for s in iter_shard(info.path)]
    one = read_all(ImageSet(shards), batch_size=4, workers=0)
    two = read_all(ImageSet(shards), batch_size=4, workers=2)
    assert one[0] == two[0] == expected
    assert torch.equal(one[2], two[2])
    assert set(one[1]) <= {"cat", "dog", "panda"} and len(ImageSet(shards)) == 21


def test_folder_rows_carry_their_class_and_bad_files_fail_with_a_reason(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    image = tmp_path / "a" / "1.png"
    transforms.ToPILImage()(torch.rand(3, 9, 9)).save(image)
    (tmp_path / "b" / "2.jpg").write_bytes(b"\xff\xd8 truncated")
    keys, labels, images, failures = read_all(ImageSet(tmp_path), batch_size=8)
    assert labels == ["a"] and images.shape == (1, 3, 9, 9) and keys == ["a/1.png"]
    assert failures[0][0] == "b/2.jpg" and "undecodable" in failures[0][1]


@pytest.mark.parametrize("damage, workers", [(flip_in_member, 0), (flip_in_member, 1), (cut, 1)])
def test_a_damaged_shard_of_ours_stops_the_set_naming_it(tmp_path, damage, workers):
    broken = tmp_path / "broken"
    make_collection(broken, 2, 6, seed=1)
    damage(list_shards(broken)[1].path)
    with pytest.raises(ShardCorrupt, match="000001.tar") as raised:
        read_all(ImageSet(broken), batch_size=4, workers=workers)
    assert "Traceback" not in str(raised.value)  # from a loader worker as it was raised there


def test_a_table_names_its_sources_and_labels(tmp_path):
    image = tmp_path / "x.png"
    transforms.ToPILImage()(torch.rand(3, 9, 9)).save(image)
    table = tmp_path / "list.csv"
    gone = tmp_path / "gone.png"
    table.write_text(f"path,label\n{image},zebra\n{gone},zebra\n")
    keys, labels, _, failures = read_all(ImageSet(table), batch_size=8)
    assert keys == [str(image)] and labels == ["zebra"]
    assert failures[0][0] == str(gone) and "not_found" in failures[0][1]


def test_subset_is_seeded_uniform_and_exact_in_size():
    mask = choose_positions(1000, 100, seed=3)
    assert mask.sum() == 100 and np.array_equal(mask, choose_positions(1000, 100, seed=3))
    assert 20 < mask[:500].sum() < 80  # not the first rows: every part of the source
    assert choose_positions(10, 100, seed=3) is None and choose_positions(10, None, 0) is None


def test_missing_set_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageSet(tmp_path / "nowhere")
