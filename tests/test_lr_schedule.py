"""Learning-rate schedules over fine-tuning: the formula at given steps, and the rate the optimizer really used."""

from __future__ import annotations

import math

import pytest
from conftest import run
from test_cli_errors import fails

from prunectl.core.errors import OptionError
from prunectl.core.weights.schedules import LR_SCHEDULES, ConstantRate, CosineDecay


def cosine(base, total, step):
    return base * 0.5 * (1 + math.cos(math.pi * step / total))


@pytest.mark.parametrize("step", [0, 1, 37, 50, 99])
def test_cosine_follows_the_formula(step):
    assert CosineDecay(0.01, total_steps=100)(step) == pytest.approx(cosine(0.01, 100, step), rel=1e-12)


def test_cosine_decays_to_almost_zero_by_the_last_step():
    schedule = CosineDecay(1e-3, total_steps=80)
    assert schedule(0) == pytest.approx(1e-3)
    assert schedule(79) < 1e-3 * 1e-3


@pytest.mark.parametrize("name", LR_SCHEDULES.names())
def test_warmup_rises_linearly_then_follows_the_curve(name):
    schedule = LR_SCHEDULES.get(name)(2e-3, total_steps=100, warmup_steps=10)
    curve = (lambda s: cosine(2e-3, 100, s)) if name == "cosine" else (lambda s: 2e-3)
    for step in (0, 4, 9):
        assert schedule(step) == pytest.approx(curve(step) * (step + 1) / 10, rel=1e-12)
    for step in (10, 60):
        assert schedule(step) == pytest.approx(curve(step), rel=1e-12)


def test_warmup_restarts_at_each_given_step():
    schedule = ConstantRate(1.0, total_steps=100, warmup_steps=4, restarts=(0, 20))
    assert [schedule(s) for s in (0, 3, 19, 20, 21, 23, 24)] == [0.25, 1.0, 1.0, 0.25, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("name", LR_SCHEDULES.names())
def test_config_round_trip(name):
    schedule = LR_SCHEDULES.get(name)(1e-3, total_steps=50, warmup_steps=5, restarts=(0, 10))
    config = schedule.get_config()
    assert config["name"] == name
    rebuilt = LR_SCHEDULES.get(config.pop("name"))(**config)
    assert [rebuilt(s) for s in range(50)] == [schedule(s) for s in range(50)]


def test_schedule_refuses_a_rate_of_zero():
    with pytest.raises(OptionError, match=r"Received: learning_rate=0.0$"):
        CosineDecay(0.0, total_steps=10)


@pytest.mark.slow
@pytest.mark.parametrize("name, warmup", [("cosine", 0.25), ("constant", 0.5)])
def test_the_optimizer_uses_the_scheduled_rate_at_every_step(digits, name, warmup):
    from prunectl.core.io.keras_io import load_model
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.training.finetune import FinetuneOptions, finetune_model
    from prunectl.core.weights.prune import WeightPruning

    loaded = load_model(open_model_file(digits / "digits_mlp.keras"))
    options = FinetuneOptions(
        data=digits / "train.npz", epochs=2, batch_size=32, lr_schedule=name, warmup=warmup, learning_rate=0.01
    )
    used = []

    def progress(event):
        # The callback assigns the rate before each step; read the variable the optimizer read.
        if event.kind == "step":
            used.append(float(loaded.model.optimizer.learning_rate.numpy()))

    outcome = finetune_model(loaded, WeightPruning(sparsity=0.5), options, progress)
    total = 6  # 96 samples / 32 per batch * 2 epochs
    expected = LR_SCHEDULES.get(name)(0.01, total, round(warmup * total))
    assert used == pytest.approx([expected(s) for s in range(total)], rel=1e-6)
    assert outcome.report["lr_schedule"]["name"] == name
    assert outcome.report["learning_rates"] == pytest.approx([expected(0), expected(3)])
    # The model keeps its base rate (as saved), not the schedule's last value.
    assert float(loaded.model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)


@pytest.mark.parametrize(
    "extra, line",
    [
        (
            ["--warmup", "1"],
            "Error: Invalid value for '--warmup': --warmup must be a finite number in [0, 1). Received: --warmup=1.0",
        ),
        (
            ["--warmup", "-0.1"],
            "Error: Invalid value for '--warmup': --warmup must be a finite number in [0, 1). Received: --warmup=-0.1",
        ),
    ],
)
def test_bad_warmup(digits, extra, line):
    args = ["prune", digits / "digits_mlp.h5", "--sparsity", "0.5", "--finetune-epochs", "1"]
    fails(digits, *args, "--data", digits / "train.npz", *extra, code=2, line=line)


def test_lr_schedule_needs_fine_tuning(digits):
    fails(
        digits,
        *["prune", digits / "digits_mlp.h5", "--sparsity", "0.5", "--lr-schedule", "cosine"],
        code=2,
        line="Error: --lr-schedule needs --finetune-epochs. Received: --lr-schedule without --finetune-epochs",
    )


def test_help_lists_the_schedules():
    out = run("prune", "--help").output
    assert "--lr-schedule" in out and "cosine" in out and "--warmup" in out


@pytest.mark.slow
@pytest.mark.parametrize("scale", [None, 0.5])
def test_lr_scale_multiplies_the_models_rate_while_training_only(digits, scale):
    from prunectl.core.io.keras_io import load_model
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.training.defaults import DEFAULT_LR_SCALE
    from prunectl.core.training.finetune import FinetuneOptions, finetune_model
    from prunectl.core.weights.prune import WeightPruning

    loaded = load_model(open_model_file(digits / "digits_mlp.keras"))
    own = float(loaded.model.optimizer.learning_rate.numpy())
    extra = {} if scale is None else {"lr_scale": scale}
    options = FinetuneOptions(data=digits / "train.npz", epochs=1, batch_size=32, **extra)
    used = []

    def progress(event):
        if event.kind == "step":
            used.append(float(loaded.model.optimizer.learning_rate.numpy()))

    outcome = finetune_model(loaded, WeightPruning(sparsity=0.5), options, progress)
    expected = own * (DEFAULT_LR_SCALE if scale is None else scale)
    assert used == pytest.approx([expected] * 3, rel=1e-6)
    assert float(loaded.model.optimizer.learning_rate.numpy()) == pytest.approx(own, rel=1e-6)
    assert outcome.report["compile"]["learning_rate"] == pytest.approx(own, rel=1e-6)
