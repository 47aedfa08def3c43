"""Hostile and broken data files, option values and recipes (issue #11): one ``Error:`` line, nothing written.

Every bad data file is refused by the reader every step shares, so it is tried on each
path that reads data: fine-tuning (--data, --val-data), calibration (an activation
criterion), evaluation (``report --data``) and ``sensitivity``.
"""

from __future__ import annotations

import zipfile

import h5py
import numpy as np
import pytest
from test_cli_errors import fails

from prunectl.core.errors import DataError, OptionError
from prunectl.core.options import check_number
from prunectl.core.training import data as datamod


@pytest.fixture
def folder(samples):
    """The samples, with a 64-sample training file to keep the runs short."""
    with np.load(samples / "digits_train.npz") as train:
        np.savez(samples / "train.npz", x=train["x"][:64], y=train["y"][:64])
    return samples


def _digits(folder):
    with np.load(folder / "train.npz") as train:
        return train["x"].copy(), train["y"].copy()


# --- bad data files ------------------------------------------------------------------------------
# Each maker writes one bad file into the folder and returns its name and the expected message
# after "Error: <path>" (for the readers' own messages, the whole line after "Error: ").


def _nan_x(folder):
    x, y = _digits(folder)
    x[3, 0, 0, 0] = np.nan
    x[7, 1, :, 0] = np.inf  # 8 values
    np.savez(folder / "bad.npz", x=x, y=y)
    return (
        "bad.npz",
        "{path}: x holds 9 non-finite values (NaN or inf); fix or drop those rows. Received: 9 of 4,096 values of x",
    )


def _inf_y(folder):
    x, y = _digits(folder)
    y = y.astype(np.float32)
    y[-1] = -np.inf
    np.savez(folder / "bad.npz", x=x, y=y)
    return (
        "bad.npz",
        "{path}: y holds 1 non-finite value (NaN or inf); fix or drop those rows. Received: 1 of 64 values of y",
    )


def _nan_h5(folder):
    x, y = _digits(folder)
    x[:2] = np.nan
    with h5py.File(folder / "bad.h5", "w") as f:
        f["x"], f["y"] = x, y
    return (
        "bad.h5",
        "{path}: x holds 128 non-finite values (NaN or inf); fix or drop those rows. "
        "Received: 128 of 4,096 values of x",
    )


def _no_arrays(folder):
    np.savez(folder / "bad.npz")
    return "bad.npz", "data file holds no arrays (an empty .npz archive). Received: '{path}'"


def _zero_rows(folder):
    x, y = _digits(folder)
    np.savez(folder / "bad.npz", x=x[:0], y=y[:0])
    return "bad.npz", "{path}: x is empty; the file holds no samples. Received: x of shape (0, 8, 8, 1)"


def _zero_rows_h5(folder):
    x, y = _digits(folder)
    with h5py.File(folder / "bad.h5", "w") as f:
        f["x"], f["y"] = x[:0], y[:0]
    return "bad.h5", "{path}: x is empty; the file holds no samples. Received: x of shape (0, 8, 8, 1)"


def _scalar(folder):
    np.savez(folder / "bad.npz", x=np.float32(1.0), y=np.int64(0))
    return "bad.npz", "{path}: x is a single value, not an array of samples. Received: x of shape ()"


def _rows_differ(folder):
    x, y = _digits(folder)
    np.savez(folder / "bad.npz", x=x, y=y[:60])
    return (
        "bad.npz",
        "{path}: x and y hold different numbers of samples. Received: x of shape (64, 8, 8, 1), y of shape (60,)",
    )


def _strings(folder):
    np.savez(folder / "bad.npz", x=np.array(["a"] * 64), y=np.zeros(64, np.int64))
    return "bad.npz", "{path}: x must hold numbers. Received: x of dtype <U1"


def _objects(folder):
    np.savez(folder / "bad.npz", x=np.array([1, "a"], dtype=object), y=np.zeros(2, np.int64))
    return (
        "bad.npz",
        "cannot read data file (Object arrays cannot be loaded when allow_pickle=False). Received: '{path}'",
    )


def _not_a_zip(folder):
    (folder / "bad.npz").write_text("x,y\n1,2\n")
    return "bad.npz", "data file is not an .npz archive (not a zip file, or a truncated one). Received: '{path}'"


def _truncated(folder):
    whole = (folder / "train.npz").read_bytes()
    (folder / "bad.npz").write_bytes(whole[: len(whole) // 2])
    return "bad.npz", "data file is not an .npz archive (not a zip file, or a truncated one). Received: '{path}'"


def _bad_crc(folder):
    x, y = _digits(folder)
    np.savez(folder / "bad.npz", x=x, y=y)
    raw = bytearray((folder / "bad.npz").read_bytes())
    with zipfile.ZipFile(folder / "bad.npz") as archive:
        info = archive.getinfo("x.npy")
    raw[info.header_offset + 30 + len("x.npy") + 200] ^= 0xFF  # a byte of x's data, past its local header
    (folder / "bad.npz").write_bytes(bytes(raw))
    return "bad.npz", "cannot read data file (Bad CRC-32 for file 'x.npy'). Received: '{path}'"


def _nan_csv(folder):
    (folder / "bad.csv").write_text("a,b,label\n1,2,0\nnan,3,1\ninf,4,0\n")
    return (
        "bad.csv",
        "{path}: x holds 2 non-finite values (NaN or inf); fix or drop those rows. Received: 2 of 6 values of x",
    )


def _declared_not_stored(folder):
    with h5py.File(folder / "bad.h5", "w") as f:
        f.create_dataset("x", shape=(10**9, 8, 8, 1), dtype="f4", chunks=(1024, 8, 8, 1))  # 256 GB, never written
        f["y"] = np.zeros(64, np.int64)
    return (
        "bad.h5",
        "dataset 'x' of data file declares shape (1000000000, 8, 8, 1) (256,000,000,000 bytes) "
        "but the file stores 0 bytes of it. Received: '{path}'",
    )


BAD_DATA = [
    _declared_not_stored,
    _nan_x,
    _inf_y,
    _nan_h5,
    _no_arrays,
    _zero_rows,
    _zero_rows_h5,
    _scalar,
    _rows_differ,
    _strings,
    _objects,
    _not_a_zip,
    _truncated,
    _bad_crc,
    _nan_csv,
]


def _tune(folder, data, *extra, epochs=1):
    reader = ["--label-col", "label"] if str(data).endswith(".csv") else []
    return [
        "prune",
        folder / "digits_mlp.h5",
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        epochs,
        "--data",
        data,
        *reader,
        *extra,
    ]


@pytest.mark.parametrize("make", BAD_DATA, ids=lambda f: f.__name__.strip("_"))
def test_bad_training_data_is_one_error(folder, make):
    name, message = make(folder)
    path = folder / name
    fails(folder, *_tune(folder, path), code=1, line="Error: " + message.format(path=path))


@pytest.mark.parametrize("make", [_nan_x, _zero_rows, _bad_crc], ids=lambda f: f.__name__.strip("_"))
def test_bad_data_is_refused_on_every_reading_path(folder, make):
    name, message = make(folder)
    path = folder / name
    line = "Error: " + message.format(path=path)
    model = folder / "digits_mlp.h5"
    fails(folder, *_tune(folder, folder / "train.npz", "--val-data", path), line=line)
    fails(
        folder, "prune", model, "--neuron-ratio", "0.5", "--neuron-criterion", "activation", "--data", path, line=line
    )
    fails(folder, "prune", model, "--neuron-ratio", "0.5", "--benchmark", "--data", path, line=line)
    fails(folder, "report", model, "--data", path, line=line)
    fails(folder, "sensitivity", model, "--data", path, "--sparsities", "0.5", line=line)


def test_non_finite_count_reads_in_chunks(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3, 4)).astype(np.float32)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, 17, replace=False)] = rng.choice([np.nan, np.inf, -np.inf], 17)
    monkeypatch.setattr(datamod, "_CHUNK", 7)  # several rows per chunk, and a short last chunk
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = x
    with h5py.File(tmp_path / "d.h5", "r") as f:
        assert datamod.non_finite_count(f["x"]) == 17
    assert datamod.non_finite_count(x) == 17
    assert datamod.non_finite_count(np.arange(10)) == 0


def test_compressed_constant_data_is_not_taken_for_a_declared_shape(tmp_path):
    # Zeros deflate about 1000:1, the most any real data file compresses.
    with h5py.File(tmp_path / "zeros.h5", "w") as f:
        zeros = np.zeros((20_000, 64, 8), np.float32)
        f.create_dataset("x", data=zeros, compression="gzip", compression_opts=9, chunks=(2000, 64, 8))
        stored = f["x"].id.get_storage_size()
    assert stored < zeros.nbytes / 1000  # it really is compressed about 1000 times
    assert datamod.read_dataset(tmp_path / "zeros.h5").x.shape == (20_000, 64, 8)


def test_a_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError, match=r"^data file is a directory\. Received: "):
        datamod.read_dataset(tmp_path)


def test_clean_data_still_reads(folder):
    data = datamod.read_dataset(folder / "train.npz")
    x, y = _digits(folder)
    assert np.array_equal(data.x, x) and np.array_equal(data.y, y)


# --- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value, line",
    [
        (
            "--seed",
            "-1",
            "Error: Invalid value for '--seed': --seed must be an integer in [0, 4294967295]. Received: --seed=-1",
        ),
        (
            "--seed",
            str(2**32),
            "Error: Invalid value for '--seed': --seed must be an integer in [0, 4294967295]. "
            "Received: --seed=4294967296",
        ),
        (
            "--initial-sparsity",
            "nan",
            "Error: Invalid value for '--initial-sparsity': --initial-sparsity must be a finite number in [0, 1). "
            "Received: --initial-sparsity=nan",
        ),
        (
            "--prune-begin",
            "nan",
            "Error: Invalid value for '--prune-begin': --prune-begin must be a finite number in [0, 1]. "
            "Received: --prune-begin=nan",
        ),
        (
            "--prune-end",
            "nan",
            "Error: Invalid value for '--prune-end': --prune-end must be a finite number in [0, 1]. "
            "Received: --prune-end=nan",
        ),
        (
            "--learning-rate",
            "inf",
            "Error: Invalid value for '--learning-rate': --learning-rate must be a finite number > 0. "
            "Received: --learning-rate=inf",
        ),
        (
            "--learning-rate",
            "nan",
            "Error: Invalid value for '--learning-rate': --learning-rate must be a finite number > 0. "
            "Received: --learning-rate=nan",
        ),
        ("--l1", "inf", "Error: Invalid value for '--l1': --l1 must be a finite number >= 0. Received: --l1=inf"),
        ("--l1", "nan", "Error: Invalid value for '--l1': --l1 must be a finite number >= 0. Received: --l1=nan"),
        (
            "--val-split",
            "nan",
            "Error: Invalid value for '--val-split': --val-split must be a finite number in (0, 1). "
            "Received: --val-split=nan",
        ),
        (
            "--label-col",
            "0",
            "Error: --label-col applies to .csv data; .npz and .h5 data take --x-key and --y-key. Received: {data}",
        ),
        ("--metrics", "", "Error: unknown Keras metrics name. Received: --metrics ''"),
        ("--loss", " ", "Error: unknown Keras loss name. Received: --loss ' '"),
    ],
)
def test_bad_fine_tuning_values_are_usage_errors(folder, flag, value, line):
    data = folder / "train.npz"
    fails(folder, *_tune(folder, data, flag, value), code=2, line=line.format(data=data))


@pytest.mark.parametrize(
    "flag, value, line",
    [
        (
            "--threshold",
            "nan",
            "Error: Invalid value for '--threshold': --threshold must be a finite number >= 0. "
            "Received: --threshold=nan",
        ),
        (
            "--threshold",
            "inf",
            "Error: Invalid value for '--threshold': --threshold must be a finite number >= 0. "
            "Received: --threshold=inf",
        ),
        (
            "--sparsity",
            "nan",
            "Error: Invalid value for '--sparsity': --sparsity must be a finite number in [0, 1). "
            "Received: --sparsity=nan",
        ),
        (
            "--neuron-ratio",
            "nan",
            "Error: Invalid value for '--neuron-ratio': --neuron-ratio must be a finite number in (0, 1). "
            "Received: --neuron-ratio=nan",
        ),
        (
            "--min-keep",
            "nan",
            "Error: Invalid value for '--min-keep': --min-keep must be a finite number in [0, 1). "
            "Received: --min-keep=nan",
        ),
        (
            "--min-sparsity",
            "nan",
            "Error: --min-sparsity must be a finite number in [0, 1]. Received: --min-sparsity=nan",
        ),
    ],
)
def test_other_float_options_refuse_nan_and_inf(folder, flag, value, line):
    # Checked before by their own validators; kept here so the whole list of float options is in one place.
    step = [] if flag in ("--threshold", "--sparsity") else ["--sparsity", "0.5"]
    if flag == "--min-keep":
        step = ["--neuron-ratio", "0.5"]
    fails(folder, "prune", folder / "digits_mlp.h5", *step, flag, value, code=2, line=line)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "x", None])
def test_check_number_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(OptionError, match=r"^lr must be a finite number > 0\. Received: lr="):
        check_number(value, "lr", 0, low_open=True)


def test_check_number_bounds():
    assert check_number(0, "f", 0, 1, high_open=True) == 0.0
    assert check_number(1, "f", 0, 1) == 1.0
    with pytest.raises(OptionError, match=r"in \[0, 1\)"):
        check_number(1, "f", 0, 1, high_open=True)
    with pytest.raises(OptionError, match=r"in \(0, 1\)"):
        check_number(0, "f", 0, 1, low_open=True, high_open=True)


# --- recipes -------------------------------------------------------------------------------------


def _recipe(folder, text):
    path = folder / "recipe.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[step]]\nsparsity = inf\n", "line 2, step 1: sparsity must be a finite number. Received: sparsity = inf"),
        ("[[step]]\nsparsity = nan\n", "line 2, step 1: sparsity must be a finite number. Received: sparsity = nan"),
        (
            "min-sparsity = -inf\n[[step]]\nsparsity = 0.5\n",
            "line 1, top level: min-sparsity must be a finite number. Received: min-sparsity = -inf",
        ),
        (
            "[[step]]\nsparsity = 0.5\n[finetune]\nfinetune-epochs = 1\ndata = 'train.npz'\nlearning-rate = inf\n",
            "line 6, [finetune]: learning-rate must be a finite number. Received: learning-rate = inf",
        ),
        (
            "[[step]]\nsparsity = 0.5\n[finetune]\nfinetune-epochs = 1\ndata = 'train.npz'\ninitial-sparsity = nan\n",
            "line 6, [finetune]: initial-sparsity must be a finite number. Received: initial-sparsity = nan",
        ),
        (
            "[[step]]\nsparsity = 0.5\n[finetune]\nfinetune-epochs = 1\ndata = 'train.npz'\nseed = -1\n",
            "line 6, [finetune]: seed must be an integer in [0, 4294967295]. Received: seed=-1",
        ),
        (
            "a = " + "[" * 20 + "]" * 20 + "\n",  # the document's table, then 20 arrays
            "nests arrays or tables 21 levels deep; a recipe needs at most 16. Received: '{path}'",
        ),
    ],
    ids=["inf", "nan", "gate", "finetune-inf", "finetune-nan", "seed", "deep"],
)
def test_bad_recipe_values_are_usage_errors(folder, text, message):
    path = _recipe(folder, text)
    line = f"Error: recipe {path} {message.format(path=path)}"
    fails(folder, "prune", folder / "digits_mlp.h5", "--recipe", path, code=2, line=line)


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a = ", "}")], ids=["arrays", "inline-tables"])
def test_a_recipe_nested_past_the_recursion_limit_is_one_error(folder, opening, closing):
    depth = 100_000 if opening == "[" else 2_000
    path = _recipe(folder, "a = " + opening * depth + ("1" if opening != "[" else "") + closing * depth + "\n")
    fails(
        folder,
        "prune",
        folder / "digits_mlp.h5",
        "--recipe",
        path,
        code=2,
        line=f"Error: recipe {path} nests arrays or tables too deeply to read. Received: '{path}'",
    )


def test_a_long_unknown_value_is_shortened(folder):
    path = _recipe(folder, "[[step]]\nsparsity = 0.5\nscope = [" + ", ".join(["'layer'"] * 100) + "]\n")
    shown = fails(folder, "prune", folder / "digits_mlp.h5", "--recipe", path, code=2)
    assert shown.startswith(f"Error: recipe {path} line 3, step 1: scope must be a string. Received: scope = ['layer'")
    assert shown.endswith("...") and len(shown) < 200 + len(str(path))


# --- training that diverges ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_non_finite_loss_stops_fine_tuning_and_writes_nothing(folder):
    shown = fails(
        folder,
        *_tune(folder, folder / "train.npz", "--learning-rate", "1e12", "--seed", "0", epochs=3),
        code=1,
        pattern=r"Error: fine-tuning stopped: the loss became (nan|inf|-inf) at epoch 1/3, step \d+/2; "
        r"nothing was written\. Lower the learning rate or check the data and the loss\. Received: loss=(nan|inf|-inf)",
    )
    assert "epoch 1/3" in shown


@pytest.mark.slow
def test_a_clean_fine_tune_still_runs(folder):
    from conftest import run

    run(*_tune(folder, folder / "train.npz", "--seed", "0", "-o", folder / "out.keras"))
    assert (folder / "out.keras").is_file()


@pytest.mark.parametrize(
    "value, message",
    [
        ("seed = 1.5", "seed must be an integer. Received: seed = 1.5"),
        ("seed = true", "seed must be an integer. Received: seed = true"),
        ("batch-size = 8.0", "batch-size must be an integer. Received: batch-size = 8.0"),
        ("learning-rate = true", "learning-rate must be a number. Received: learning-rate = true"),
        ("plots = 5", "plots must be a string. Received: plots = 5"),
        ("metrics = [1, 2]", "metrics must be a string or a list of them. Received: metrics = [1, 2]"),
    ],
)
def test_recipe_values_must_have_the_options_type(folder, value, message):
    # Click would convert these silently (int(1.5) == 1, True == 1) or fail inside prunectl (a path of 5).
    text = f"[[step]]\nsparsity = 0.5\n[finetune]\nfinetune-epochs = 1\ndata = 'train.npz'\n{value}\n"
    path = _recipe(folder, text)
    line = f"Error: recipe {path} line 6, [finetune]: {message}"
    fails(folder, "prune", folder / "digits_mlp.h5", "--recipe", path, code=2, line=line)


@pytest.mark.slow
def test_weights_that_overflow_on_the_last_step_stop_fine_tuning(folder):
    # One step: its loss is computed before the update, so only the weights show that the update overflowed
    # (1e300 is a finite float but inf as the optimizer's float32 learning rate).
    extra = ["--batch-size", "64", "--learning-rate", "1e300", "--optimizer", "sgd", "--seed", "0"]
    fails(
        folder,
        *_tune(folder, folder / "train.npz", *extra),
        code=1,
        pattern=r"Error: fine-tuning stopped: 16,384 weights of (digits_mlp/)?fc1/kernel became NaN or inf in epoch "
        r"1/1; nothing was written\. Lower the learning rate or check the data and the loss\. "
        r"Received: 16,384 of 16,384 values",
    )


def test_a_device_is_neither_a_recipe_nor_a_data_file(folder):
    # /dev/zero would be read without end.
    model = folder / "digits_mlp.h5"
    fails(
        folder,
        "prune",
        model,
        "--recipe",
        "/dev/zero",
        code=2,
        line="Error: recipe is not a regular file. Received: '/dev/zero'",
    )
    fails(
        folder,
        *_tune(folder, folder / "train.npz", "--val-data", "/dev/null"),
        line="Error: data file is not a regular file (a device or a pipe). Received: '/dev/null'",
    )


def test_an_oversized_recipe_is_refused_before_parsing(folder):
    path = _recipe(folder, "[[step]]\nsparsity = 0.5\n" + "# padding\n" * 120_000)
    fails(
        folder,
        "prune",
        folder / "digits_mlp.h5",
        "--recipe",
        path,
        code=2,
        line=f"Error: recipe is {path.stat().st_size:,} bytes; a recipe is at most 1,048,576. Received: '{path}'",
    )
