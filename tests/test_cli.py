"""The command line: list, run with outputs, resume, and a missing data set."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import DATA_ROOT

from trainingloop.cli import main
from trainingloop.examples import parse_extra


def test_list(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["digits", "linear-regression", "softmax-fashion-mnist",
                     "lenet-fashion-mnist", "mlp-mnist", "lenet-mnist", "resnet-cifar10",
                     "airbench-cifar10", "bert-cola", "gpt-wikitext2", "gpt-shakespeare",
                     "nanogpt-shakespeare"]


def test_run_writes_every_output_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    command = [sys.executable, "-m", "trainingloop", "run", "digits", "--epochs", "2",
               "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"outputs in {out}" in done.stdout
    assert (out / "log.csv").exists() and (out / "curves.png").exists()
    assert len(list((out / "tensorboard").iterdir())) == 1
    assert os.readlink(out / "checkpoints" / "last") == "epoch=0002-end"
    rows = len((out / "log.csv").read_text().splitlines())
    resumed = subprocess.run([*command[:-4], "--epochs", "3", "--out", str(out), "--resume"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Epoch 3/3" in resumed.stdout and "Epoch 1/3" not in resumed.stdout
    assert len((out / "log.csv").read_text().splitlines()) == rows + rows // 2


def test_missing_data_set_names_files_and_folder(tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                                 monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TRAININGLOOP_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TRAININGLOOP_DATA", str(empty))
    code = main(["run", "mlp-mnist", "--data-dir", str(empty), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1
    assert "train-images-idx3-ubyte.gz" in err and str(empty / "mnist") in err


def test_unknown_example(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["run", "nope"]) == 2
    assert "unknown example 'nope'" in capsys.readouterr().err


def test_bad_values_are_argparse_errors_not_tracebacks(capsys) -> None:  # type: ignore[no-untyped-def]
    for args, word in ((["--epochs", "-1"], "--epochs"), (["--batch-size", "0"], "--batch-size"),
                       (["--lr", "0"], "--lr"), (["--lr", "abc"], "--lr"),
                       (["--device", "cuda:7"], "--device")):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "digits", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "trainingloop run: error: argument " + word in err, err
        assert "Traceback" not in err


@pytest.mark.parametrize("example", ["softmax-fashion-mnist", "lenet-fashion-mnist", "mlp-mnist",
                                     "lenet-mnist", "resnet-cifar10", "bert-cola",
                                     "gpt-wikitext2", "gpt-shakespeare"])
def test_data_dir_is_the_root_the_readers_use(example: str, tmp_path: Path, capsys,  # type: ignore[no-untyped-def]
                                              monkeypatch) -> None:
    # $TRAININGLOOP_DATA points at the real mirror; --data-dir at an empty folder must win,
    # without the CLI rewriting the environment.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TRAININGLOOP_NO_DOWNLOAD", "1")
    monkeypatch.setenv("TRAININGLOOP_DATA", str(DATA_ROOT))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpt-wikitext2 warns that it has no train split
        code = main(["run", example, "--data-dir", str(empty), "--out", str(tmp_path / "o")])
    assert code == 1
    assert str(empty) in capsys.readouterr().err
    assert os.environ["TRAININGLOOP_DATA"] == str(DATA_ROOT)


def test_set_fills_the_examples_extra_options(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert parse_extra("resnet-cifar10", ["depth=56", "data=subset"]) == {
        "depth": "56", "data": "subset"}
    # The value reaches the example: data=full refuses the mirror's subset.
    code = main(["run", "resnet-cifar10", "--data-dir", str(DATA_ROOT), "--set", "data=full",
                 "--out", str(tmp_path / "o")])
    assert code == 1
    assert "cifar-10-binary.tar.gz" in capsys.readouterr().err
    assert main(["run", "digits", "--set", "depth=56"]) == 2
    assert "example 'digits' has no option 'depth'" in capsys.readouterr().err
    assert main(["run", "resnet-cifar10", "--set", "detph=56"]) == 2
    err = capsys.readouterr().err
    assert "no option 'detph'" in err and "depth:" in err and "data:" in err
    assert main(["run", "resnet-cifar10", "--set", "depth"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
