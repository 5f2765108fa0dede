"""R-MAC pooling and mAP on toy cases whose answers are worked out by hand."""

import numpy as np
import pytest
import torch

from dcpipe.stages.evaluate import retrieval


def test_square_map_has_the_papers_regions():
    # 1 region at level 1, 2x2 at level 2, 3x3 at level 3 (Tolias et al. 2016)
    regions = retrieval.rmac_regions(12, 12, levels=3)
    sides = [side for _, _, side in regions]
    assert sides.count(12) == 1 and sides.count(8) == 4 and sides.count(6) == 9
    assert all(top + side <= 12 and left + side <= 12 for top, left, side in regions)


def test_wide_map_slides_along_its_long_side():
    regions = retrieval.rmac_regions(6, 18, levels=1)
    # side 6 on 18 columns: stride at most 0.6 * 6 = 3.6 -> 5 positions, 3 apart
    assert regions == [(0, left, 6) for left in (0, 3, 6, 9, 12)]


def test_rmac_is_unit_norm_and_sees_a_local_peak():
    fmap = torch.zeros(2, 3, 8, 8)
    fmap[0, 0, 1, 1] = 5.0  # channel 0 peak in a corner
    fmap[1, 2, 6, 6] = 5.0  # channel 2 peak in the opposite corner
    desc = retrieval.rmac(fmap)
    assert torch.allclose(desc.norm(dim=1), torch.ones(2))
    assert desc[0].argmax() == 0 and desc[1].argmax() == 2


def test_average_precision_known_ranking():
    # ranking: relevant, not, relevant, not -> AP = (1/1 + 2/3) / 2
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    relevant = np.array([True, False, True, False])
    assert retrieval.average_precision(scores, relevant) == pytest.approx(5 / 6)


def test_mean_average_precision_on_toy_descriptors():
    db = np.eye(4)
    db_labels = np.array([0, 1, 0, 1])
    q0 = np.array([[1.0, 0.5, 0.8, 0.1]])  # ranks db 0, 2 (both relevant) first: AP 1
    q1 = np.array([[0.0, 0.1, 0.9, 1.0]])  # label 1: ranks 3 (rel), 2, 1 (rel), 0 -> AP (1 + 2/3)/2
    queries = np.vstack([q0, q1])
    result = retrieval.mean_average_precision(queries, [0, 1], db, db_labels)
    assert result == pytest.approx((1 + 5 / 6) / 2)


def test_query_without_relevant_item_is_left_out():
    db, db_labels = np.eye(2), np.array([0, 0])
    assert retrieval.mean_average_precision(np.eye(2), [0, 7], db, db_labels) == 1.0
