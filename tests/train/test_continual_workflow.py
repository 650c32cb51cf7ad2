"""The continual workflow on the Trainer: a sequence of permuted-digit tasks, the accuracy
matrix and its summary figures, continual backprop through config.continual."""

import json
import os

import numpy as np
import pytest

from configs.continual_digits import get_config
from latent_jax.data.digits import ImageSplit
from latent_jax.data.permuted import permuted_task
from latent_jax.tasks import continual as T


def test_sequence_results_figures():
    # rows: after dataset i; columns up to i + 1 evaluated
    hist = [{"dataset": 0, "row": [0.9, 0.2], "baseline": [0.1, 0.1, 0.1]},
            {"dataset": 1, "row": [0.7, 0.8, 0.3]},
            {"dataset": 2, "row": [0.6, 0.5, 0.9]}]
    r = T.sequence_results(hist, 3, ["a", "b", "c"])
    assert r["new_task_accuracy"] == [0.9, 0.8, 0.9]
    assert r["average_accuracy"] == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert r["forgetting"] == pytest.approx(((0.9 - 0.6) + (0.8 - 0.5)) / 2)
    assert r["backward_transfer"] == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)
    assert r["forward_transfer"] == pytest.approx(((0.2 - 0.1) + (0.3 - 0.1)) / 2)


def test_permuted_tasks_depend_on_seed_and_index_only():
    imgs = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    split = ImageSplit(imgs, np.array([0, 1, 2, 1], np.int32), "toy/train")
    a, b = permuted_task(split, split, 3, "pixels", 0), permuted_task(split, split, 3, "pixels", 0)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert sorted(a.x_train[0] * 255) == sorted(imgs[0].ravel())
    lab = permuted_task(split, split, 1, "labels", 0)
    assert len(set(zip(split.labels, lab.y_train))) == 3  # a bijection of the classes
    with pytest.raises(ValueError, match="pixels, labels"):
        permuted_task(split, split, 0, "rotate")


def test_compare_bp_cbp_writes_matrix_and_plot(tmp_path):
    c = get_config("smoke")
    c.compare = "bp,cbp"
    c.data.num_tasks = 3
    c.data.max_train = 96
    c.mlp.widths = "16,16"
    c.batch_size = 16
    res = T.run(c, str(tmp_path))
    assert set(res["variants"]) == {"bp", "cbp"}
    assert os.path.exists(tmp_path / "plasticity.png")
    cbp = json.loads((tmp_path / "cbp" / "results.json").read_text())
    bp = json.loads((tmp_path / "bp" / "results.json").read_text())
    assert cbp["replaced_units"] > 0 and bp["replaced_units"] is None
    R = np.array([[np.nan if x is None else x for x in row] for row in cbp["matrix"]])
    assert R.shape == (3, 3) and np.isnan(R[0, 2]) and not np.isnan(R[2]).any()
    assert all(0.0 <= x <= 1.0 for x in cbp["new_task_accuracy"])
    assert "forgetting" in cbp and "forward_transfer" in cbp
    assert os.path.exists(tmp_path / "cbp" / "accuracy_matrix.png")
    # same data and init: the first task is trained identically until the first replacement
    assert bp["new_task_accuracy"][0] == pytest.approx(cbp["new_task_accuracy"][0], abs=0.05)


def test_bad_variant_and_source_name_the_fix(tmp_path):
    c = get_config("smoke")
    c.compare = "bp,adam"
    with pytest.raises(ValueError, match="bp, cbp, l2, snp"):
        T.run(c, str(tmp_path))
    c = get_config("smoke,single")
    c.data.source = "cifar"
    with pytest.raises(ValueError, match="digits or mnist"):
        T.run(c, str(tmp_path))
