"""``--l1`` without a pruning step, and the sparsity-by-L1 workflow (train with L1, then prune by threshold).

Weights are read back from the saved files with h5py (tests/independent.py);
losses are recomputed here from the saved model's predictions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import invoke, run
from independent import kernel
from test_finetune import KERNELS

from prunectl.core.run.request import build_request
from prunectl.core.training.evaluate import finetune_evaluation


def train_l1(folder, out, *extra):
    args = ("--finetune-epochs", "2", "--data", folder / "train.npz", "--val-data", folder / "val.npz")
    args += ("--learning-rate", "0.01", "--l1", "0.001", "--seed", "7", "--json")
    return json.loads(run("prune", folder / "digits_mlp.h5", "-o", out, *args, *extra).stdout)


def cross_entropy(model_path, data_path) -> float:
    """Sparse categorical cross-entropy of a saved softmax model, computed here (no penalty, no Keras loss)."""
    import keras

    model = keras.models.load_model(model_path, compile=False)
    with np.load(data_path) as data:
        p = model.predict(data["x"], verbose=0)
        return float(np.mean(-np.log(np.clip(p[np.arange(len(p)), data["y"]], 1e-7, 1.0))))


def test_l1_with_training_alone_is_a_request():
    request = build_request({"model": "m.h5", "l1": 0.01, "finetune_epochs": 1, "data": "train.npz"})
    assert request.weights is None and request.neurons is None and request.finetune.l1 == 0.01


@pytest.mark.parametrize(
    "extra",
    [
        ("--l1", "0.01", "--finetune-epochs", "0", "--data", "{data}"),  # trains nothing
        ("--finetune-epochs", "1", "--data", "{data}"),  # trains without a penalty: nothing to prune by
    ],
)
def test_a_run_with_nothing_to_do_is_still_an_error(digits, extra):
    data = digits / "train.npz"
    result = invoke("prune", digits / "digits_mlp.h5", *(str(a).format(data=data) for a in extra))
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1].startswith("Error: give a pruning step: --threshold, --sparsity")
    assert not (digits / "digits_mlp.pruned.h5").exists()


def test_the_gates_judge_the_last_evaluation_in_the_order_it_ran():
    section = {
        "data": {"validation": "val.npz", "validation_samples": 4},
        "compile": {"loss": "mse", "loss_source": "saved", "metrics": []},
        "evaluation": {
            "before_pruning": {"loss": 1.0},
            "after_finetuning": {"loss": 2.0},
            "after_pruning": {"loss": 3.0},
        },
    }
    evaluation = finetune_evaluation(section)
    assert evaluation.reference == ("before pruning", {"loss": 1.0})
    assert evaluation.result == ("after pruning", {"loss": 3.0})


@pytest.mark.slow
def test_l1_alone_trains_every_kernel_and_reports_the_loss_without_the_penalty(digits):
    report = train_l1(digits, digits / "l1.h5")
    l1 = report["finetune"]["l1"]
    assert l1["weights"] == [f"{name}/kernel" for name in KERNELS] and l1["weight_step"] is None
    # The penalty is lambda * sum |w| of the saved (trained) kernels.
    assert l1["penalty"] == pytest.approx(0.001 * sum(np.abs(kernel(digits / "l1.h5", k)).sum() for k in KERNELS))
    evaluation = report["finetune"]["evaluation"]
    assert list(evaluation) == ["before_pruning", "after_finetuning"]  # nothing was pruned
    trained = cross_entropy(digits / "l1.h5", digits / "val.npz")
    assert evaluation["after_finetuning"]["loss"] == pytest.approx(trained, rel=1e-4)
    assert l1["loss"] == evaluation["after_finetuning"]["loss"]
    assert l1["loss_with_penalty"] == pytest.approx(trained + l1["penalty"], rel=1e-4)
    # Training moved the weights: the run did something.
    assert not np.array_equal(kernel(digits / "l1.h5", "fc1"), kernel(digits / "digits_mlp.h5", "fc1"))
    assert report["totals"]["prunable"]["zeros"] == 0


@pytest.mark.slow
def test_threshold_applies_to_the_trained_weights(digits):
    """The same seeded L1 training, once without and once with --threshold: zeros exactly where |trained w| < T."""
    threshold = 0.02
    train_l1(digits, digits / "trained.h5")
    report = train_l1(digits, digits / "pruned.h5", "--threshold", str(threshold))
    assert report["finetune"]["l1"]["weight_step"] == "after training"
    assert list(report["finetune"]["evaluation"]) == ["before_pruning", "after_finetuning", "after_pruning"]
    zeros = 0
    for name in KERNELS:
        trained, pruned = kernel(digits / "trained.h5", name), kernel(digits / "pruned.h5", name)
        original = kernel(digits / "digits_mlp.h5", name)
        small = np.abs(trained) < threshold
        assert np.array_equal(pruned == 0, small), name
        assert np.array_equal(pruned[~small], trained[~small]), name
        # Not the original weights cut by T: training moved what the threshold saw.
        assert not np.array_equal(pruned == 0, np.abs(original) < threshold), name
        zeros += int(small.sum())
    assert report["totals"]["prunable"]["zeros"] == zeros
    # The gates judge the saved model: the evaluation after the threshold, recomputed here.
    assert report["evaluation"]["result"]["label"] == "after pruning"
    assert report["evaluation"]["result"]["values"]["loss"] == pytest.approx(
        cross_entropy(digits / "pruned.h5", digits / "val.npz"), rel=1e-4
    )
