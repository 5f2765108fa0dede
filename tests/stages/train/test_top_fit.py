"""v1's fitted top layer (`head_init = "fitted"`): the discriminant it is set to, that a round
starts from it, and that it is refused where it has no meaning."""
import numpy as np
import pytest
import torch

from dcpipe.errors import SettingsError
from dcpipe.stages.common.distributed import ProcessGroup
from dcpipe.stages.common.models import eval_transform, load_model
from dcpipe.stages.common.modelspec import ModelSpec
from dcpipe.stages.train import TrainSettings
from dcpipe.stages.train.stage import train
from dcpipe.stages.train.top_fit import ClusterMoments
from PIL import Image

from support.labelled_shards import colour, make_collection
from support.settings import with_settings

torch.set_num_threads(1)
K = 8
OPTIONS = {"width": 4, "input_size": 32, "sobel": False, "batch_size": 16, "loss_every": 1,
           "checkpoint_every": 100, "seed": 1, "workers": 1, "progress": False, "lr": 0.01}
run_train = with_settings(train, ModelSpec, TrainSettings)


def _planted(n: int, k: int, dim: int, seed: int):
    """Gaussian clusters: (points, labels), the means far apart along random directions."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, dim)) * 3
    labels = rng.integers(0, k, n)
    points = means[labels] + rng.standard_normal((n, dim)) * np.linspace(0.5, 2, dim)
    return torch.from_numpy(points).float(), torch.from_numpy(labels)


def test_the_discriminant_ranks_planted_clusters_and_leaves_an_undrawn_one_neutral():
    points, labels = _planted(3000, K, 24, seed=0)
    labels[labels == 5] = 4  # cluster 5 never drawn
    moments = ClusterMoments(K, 24)
    for part in range(3):  # added in pieces, as batch after batch
        moments.add(points[part::3], labels[part::3])
    weight, bias = moments.over_ranks(ProcessGroup.start()).discriminant(row_norm=0.5)
    test_points, test_labels = _planted(1000, K, 24, seed=0)
    drawn = test_labels != 5
    predicted = (test_points @ weight.T + bias).argmax(1)
    assert (predicted[drawn] == test_labels[drawn]).float().mean() > 0.95
    assert torch.equal(weight[5], torch.zeros(24)) and bias[5] == 0
    assert weight.dtype == bias.dtype == torch.float32
    assert weight[torch.arange(K) != 5].norm(dim=1).mean() == pytest.approx(0.5, rel=1e-5)


def test_moments_added_in_any_split_are_the_same():
    points, labels = _planted(500, K, 6, seed=1)
    whole, halves = ClusterMoments(K, 6), ClusterMoments(K, 6)
    whole.add(points, labels)
    halves.add(points[:123], labels[:123])
    halves.add(points[123:], labels[123:])
    for a, b in zip(whole.discriminant(1.0), halves.discriminant(1.0)):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    rng = np.random.default_rng(3)
    return make_collection(tmp_path_factory.mktemp("fit"), [rng.integers(0, K, n).astype(np.int32)
                                                             for n in (90, 70)], K, image_size=16)


def _accuracy_of_top(model_path) -> float:
    """How often the model's top layer names the planted cluster of an image of its colour, in
    training mode: the top layer is fitted to, and trained on, what it sees under dropout."""
    model = load_model(model_path)[0].train()
    transform = eval_transform(32)
    images = torch.stack([transform(Image.new("RGB", (16, 16), colour(j))) for j in range(K)])
    torch.manual_seed(0)
    with torch.no_grad():
        predicted = torch.cat([model(images.repeat(2, 1, 1, 1)).argmax(1) for _ in range(16)])
    return (predicted == torch.arange(K).repeat(32)).float().mean().item()


def test_a_fitted_round_starts_from_its_clusters_a_random_one_from_chance(tmp_path, collection):
    # lr ~ 0: the round leaves its top layer as it started. The planted images are one colour
    # per cluster, which even the random network's classifier output tells apart (in RGB: the
    # Sobel filters see nothing in a plain colour).
    still = {**OPTIONS, "lr": 1e-12}
    fitted = run_train(*collection, tmp_path / "fitted", head_init="fitted", **still)
    paper = run_train(*collection, tmp_path / "random", **still)
    assert _accuracy_of_top(tmp_path / "fitted" / "model.pt") > 0.3  # measured 0.43; chance 0.125
    assert _accuracy_of_top(tmp_path / "random" / "model.pt") < 0.25
    assert fitted["timings"]["top_fit_s"] > 0 and paper["timings"]["top_fit_s"] == 0
    assert fitted["config"]["head_init"] == "fitted" and paper["config"]["head_init"] == "random"


@pytest.mark.parametrize("changes, message", [
    ({"head_init": "centroids"}, "head_init must be one of"),
    ({"head_init": "fitted", "method": "deepcluster-v2"}, "always the round's centroids")])
def test_a_head_init_with_no_meaning_is_refused(changes, message):
    with pytest.raises(SettingsError, match=message):
        TrainSettings(**changes)
