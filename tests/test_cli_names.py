"""Issue 37 item 8 and issue 35 item 5: the CLI names the flag it refuses, refuses a --data-dir
it cannot use, writes nothing when loading fails, shows a lock holder's command whole, and gives
--batch-size one meaning per command family (training: --train-batch-size)."""

import dataclasses
import json
import os
import socket
import sys

import pytest

from cfjax import io as cio
from cfjax.cli import build_parser, main
from cfjax.errors import DataNotFoundError, InputError
from cfjax.eval import evaluators as E
from cfjax.jobs import run_folder
from cfjax.jobs import skeleton as S

# ------------------------------------------------------------------------------ --data-dir


@pytest.mark.parametrize("cmd", [["explain", "attack", "--smoke"], ["global", "attack", "--smoke"],
                                 ["explain", "mirror", "--source", "3", "--target", "8", "--smoke"], ["train", "classifier"],
                                 ["train", "mirror-decoder", "--smoke"]])
def test_data_dir_pointing_nowhere_with_mnist5k_exits_2_naming_it(tmp_path, capsys, cmd):
    out = tmp_path / "o"
    assert main([*cmd, "--data", "mnist5k", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "nowhere" in err and "mnist5k" in err, err
    assert not out.exists()


def test_data_dir_with_mnist5k_is_refused_even_when_it_exists(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["explain", "attack", "--data", "mnist5k", "--smoke", "--data-dir", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "reads no folder" in err, err
    assert not out.exists()


def test_data_dir_pointing_nowhere_is_refused_for_any_dataset(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["global", "attack", "--data", "mnist", "--smoke", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "an existing folder" in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------ a failed load writes nothing


def test_failed_data_load_for_mnist_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "tfds"
    empty.mkdir()
    out = tmp_path / "o"
    assert main(["explain", "attack", "--data", "mnist", "--smoke", "--data-dir", str(empty), "--out", str(out)]) == 2
    assert "mnist" in capsys.readouterr().err
    assert not out.exists()  # no run.json, no empty folder
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["global", "attack", "--data", "mnist", "--smoke", "--data-dir", str(empty), "--out", str(out)]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@dataclasses.dataclass(frozen=True)
class _Cfg:
    batch_size: int = 4
    checkpoint_every: int = 2


class _Failing:
    """A method whose loading fails (a missing dataset)."""

    def validate(self, dataset, cfg):
        pass

    def load(self, ctx):
        raise DataNotFoundError("dataset 'toy' is not prepared")

    def checkpoint_every(self, cfg):
        return cfg.checkpoint_every


class _Ok(_Failing):
    def load(self, ctx):
        return None

    def passes(self, ctx, models):
        import numpy as np

        return [S.Pass("toy", lambda b, m: {"v": b["x"]}, [E.counts("counts", {"n": "w"})], {"x": np.arange(6, dtype=np.float32)},
                       ctx.config.batch_size, {"method": "toy"})]

    def summarize(self, ctx, models, results):
        return {"n": results["toy"].fields["n"], "chunk_size": results["toy"].chunk_size}

    def figures(self, ctx, models, summary):
        return []

    def title(self, ctx, summary):
        return "toy"

    def headline(self, ctx, summary):
        return []


def test_run_job_whose_load_fails_leaves_no_run_file_and_keeps_another_runs_outputs(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(DataNotFoundError):
        S.run_job(_Failing(), "toy", out, _Cfg(), progress=False)
    assert not out.exists()
    S.run_job(_Ok(), "toy", out, _Cfg(), progress=False)
    before = json.loads((out / run_folder.RUN_FILE).read_text())
    with pytest.raises(DataNotFoundError):  # another run, --overwrite: nothing is replaced before it has loaded
        S.run_job(_Failing(), "toy", out, _Cfg(), progress=False, overwrite=True)
    assert json.loads((out / run_folder.RUN_FILE).read_text()) == before and (out / "summary.json").is_file()


def test_the_pass_rounds_its_rows_per_step_once(tmp_path):
    s = S.run_job(_Ok(), "toy", tmp_path / "o", _Cfg(batch_size=5), progress=False)
    import jax

    d = jax.device_count()
    assert s["n"] == 6 and s["chunk_size"] == -(-5 // d) * d


# ------------------------------------------------------------------------------ errors name the flag


@pytest.mark.parametrize("cmd", [["explain", "attack"], ["global", "attack"], ["explain", "mirror", "--source", "3", "--target", "8"],
                                 ["global", "mirror"], ["demo"]])
def test_negative_limit_is_reported_as_the_flag(tmp_path, capsys, cmd):
    out = tmp_path / "o"
    assert main([*cmd, "--smoke", "--limit", "-5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--limit" in err and "-5" in err, err
    assert not out.exists()


@pytest.mark.parametrize("argv, flag", [(["explain", "attack", "--steps", "0"], "--steps"), (["global", "attack", "--pixel-limit", "0"], "--pixel-limit"),
                                        (["global", "mirror", "--maxiter", "-1"], "--maxiter"),
                                        (["global", "mirror", "--decoder-steps", "0"], "--decoder-steps")])
def test_other_count_flags_are_reported_as_the_flag(tmp_path, capsys, argv, flag):
    assert main([*argv, "--smoke", "--out", str(tmp_path / "o")]) == 2
    assert flag in capsys.readouterr().err


# ------------------------------------------------------------------------------ the lock shows the holder's command whole


def test_lock_message_shows_the_first_runs_command_whole(tmp_path, monkeypatch):
    long_cmd = ["cfjax", "global", "attack", "--data", "mnist5k", "--out", str(tmp_path / "o")] + [f"--opt-{i} value-{i}" for i in range(60)]
    monkeypatch.setattr(sys, "argv", long_cmd)
    lock = cio.FolderLock(tmp_path, "out").acquire()
    try:
        assert len(" ".join(long_cmd)) > 300
        with pytest.raises(InputError) as e:
            cio.FolderLock(tmp_path, "out").check()
        assert " ".join(long_cmd) in str(e.value)
    finally:
        lock.release()


def test_lock_message_of_a_recorded_long_command(tmp_path):
    cmd = "cfjax global mirror " + " ".join(f"--flag{i} {i}" for i in range(40)) + " --the-end"
    me = os.getpid()
    (tmp_path / cio.LOCK_FILE).write_text(json.dumps({"pid": me, "host": socket.gethostname(), "start": cio._proc_start(me), "since": "now",
                                                      "command": cmd}))
    with pytest.raises(InputError) as e:
        S.run_job(_Ok(), "toy", tmp_path, _Cfg(), progress=False)
    assert cmd in str(e.value) and "--the-end" in str(e.value)


# ------------------------------------------------------------------------------ --batch-size: one meaning per command family


@pytest.mark.parametrize("cmd", [["train", "classifier", "--data", "mnist5k"], ["train", "vae", "--data", "mnist5k"], ["train", "mirror-decoder"]])
def test_training_takes_train_batch_size_and_the_old_spelling_with_a_note(capsys, cmd):
    p = build_parser()
    assert p.parse_args([*cmd, "--out", "x", "--train-batch-size", "7"]).train_batch_size == 7
    assert "deprecated" not in capsys.readouterr().err
    assert p.parse_args([*cmd, "--out", "x", "--batch-size", "9"]).train_batch_size == 9
    err = capsys.readouterr().err
    assert "--batch-size is deprecated" in err and "--train-batch-size" in err


def test_bad_training_batch_size_names_the_new_flag(tmp_path, capsys):
    assert main(["train", "classifier", "--data", "mnist5k", "--batch-size", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "deprecated" in err and "--train-batch-size" in err and "expected" in err


def test_explain_and_global_batch_size_is_rows_per_step():
    p = build_parser()
    assert p.parse_args(["global", "attack", "--out", "x", "--batch-size", "8"]).batch_size == 8
    assert p.parse_args(["global", "mirror", "--out", "x", "--batch-size", "8"]).chunk_size == 8
    assert p.parse_args(["global", "mirror", "--out", "x", "--chunk-size", "8"]).chunk_size == 8


# ------------------------------------------------------------------------------ one home for presets and the model cache


def test_cli_presets_are_the_mirror_jobs():
    from cfjax.jobs.mirror.config import PRESETS, MirrorJobConfig

    p = build_parser()
    sub = [a for a in p._actions if a.dest == "command"][0].choices["global"]
    mirror = [a for a in sub._actions if a.dest == "method"][0].choices["mirror"]
    assert [a for a in mirror._actions if a.dest == "preset"][0].choices == list(PRESETS)
    for name in PRESETS:
        assert MirrorJobConfig.from_preset(name).preset == name
    with pytest.raises(InputError, match="preset"):
        MirrorJobConfig.from_preset("fast")
    with pytest.raises(InputError, match="preset"):
        MirrorJobConfig(preset="fast").validate()


def test_models_dir_for(tmp_path):
    assert run_folder.models_dir_for(tmp_path) == tmp_path / "models"
    assert run_folder.models_dir_for(tmp_path, str(tmp_path / "m")) == tmp_path / "m"
    assert S.models_dir_for is run_folder.models_dir_for
