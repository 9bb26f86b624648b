"""Issue 26, item 5: the CLI's output folders, shards and merge refuse bad input before any work,
name the folder and the field, write nothing and leave their inputs byte-identical.

Most cases run on a toy method through the real skeleton (no models, seconds); the ones that need
`cfjax global` itself (concurrent runs, a merge that must not train) use the session's shared
smoke models (tests/smoke_models.py)."""

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfjax import io as cio
from cfjax import parallel
from cfjax.cli import _shard_meta, build_parser, main
from cfjax.errors import InputError
from cfjax.eval import evaluators as E
from cfjax.jobs import skeleton as S
from smoke_models import shared_models_dir
from xla_env import child_env

# ------------------------------------------------------------------------------ a toy method


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    steps: int = 1
    batch_size: int = 4
    checkpoint_every: int = 2


class Toy:
    """Rows 0..rows-1; each row's value is ``x * steps``; sums: a count and a mean."""

    def __init__(self, rows: int = 10):
        self.rows = rows
        self.shapes: list = []

    def validate(self, dataset, cfg):
        pass

    def load(self, ctx):
        return None

    def passes(self, ctx, models):
        cfg = ctx.config

        def rows_fn(b, mask):
            self.shapes.append(b["x"].shape)  # traced once per compile: the step's batch shape
            return {"v": b["x"] * cfg.steps}

        evs = [E.counts("counts", {"n": "w"}), E.weighted_means("means", {"mean_v": ("v", "w")})]
        return [S.Pass("toy", rows_fn, evs, {"x": np.arange(self.rows, dtype=np.float32)}, cfg.batch_size,
                       {"method": "toy", "cfg": dataclasses.asdict(cfg)}, outputs=("v",))]

    def summarize(self, ctx, models, results):
        return {"n": results["toy"].fields["n"], "mean_v": results["toy"].fields["mean_v"]}

    def figures(self, ctx, models, summary):
        return []

    def title(self, ctx, summary):
        return "toy"

    def headline(self, ctx, summary):
        return [("n", summary["n"])]

    def checkpoint_every(self, cfg):
        return cfg.checkpoint_every


def toy(out, cfg=None, **kw):
    return S.run_job(Toy(kw.pop("rows", 10)), "toy", out, cfg or ToyConfig(), progress=False, **kw)


CLI_META = None


def _cli_meta():
    """The `cli` record a real `cfjax global attack --smoke --shard` writes."""
    global CLI_META
    if CLI_META is None:
        CLI_META = _shard_meta(build_parser().parse_args(["global", "attack", "--smoke", "--out", "x", "--shard", "0/3"]))
    return json.loads(json.dumps(CLI_META))


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    dirs = [root / f"s{i}" for i in range(3)]
    for i, d in enumerate(dirs):
        toy(d, shard=(i, 3), shard_meta=_cli_meta())
    return dirs


def snapshot(*roots) -> dict:
    """Every entry under ``roots``: kind and bytes (links: their target), to compare before/after."""
    out = {}
    for r in roots:
        r = Path(r)
        for p in sorted([r, *r.rglob("*")]):
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = ("file", p.read_bytes())
            elif p.is_dir():
                out[str(p)] = ("dir", None)
            else:
                out[str(p)] = ("other", None)
    return out


def copy_shards(dirs, dest) -> list:
    new = []
    for d in dirs:
        shutil.copytree(d, dest / d.name, symlinks=True)
        new.append(dest / d.name)
    return new


def rewrite(folder, fn, *, resign=True):
    """Edit ``folder/shard.json`` with ``fn(rec)``; ``resign``: as written by a tool that also
    recomputes its digest (so the check under test is the one that fires)."""
    f = Path(folder) / S.SHARD_FILE
    rec = json.loads(f.read_text())
    fn(rec)
    if resign:
        rec["record_sha256"] = S._record_digest(rec)
    f.write_text(json.dumps(rec))


def write_states(folder, arrays: dict):
    """Replace the states file (and, like a writing tool, its digest in shard.json)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    (Path(folder) / S.STATES_FILE).write_bytes(data)
    rewrite(folder, lambda r: r.__setitem__("states_sha256", hashlib.sha256(data).hexdigest()))


def refused(dirs, out, *says, cli=False, capsys=None):
    """The merge of ``dirs`` into ``out`` is refused naming ``says``; nothing written, inputs intact."""
    before = snapshot(*dirs)
    out_before = snapshot(out) if Path(out).exists() else None
    if cli:
        assert main(["merge", *map(str, dirs), "--out", str(out)]) == 2
        msg = capsys.readouterr().err
    else:
        with pytest.raises(InputError) as e:
            toy(out, merge=dirs)
        msg = str(e.value)
    for s in says:
        assert s in msg, msg
    assert len(msg) < 600, msg  # short, whatever the input
    assert snapshot(*dirs) == before, "an input changed"
    assert (snapshot(out) if Path(out).exists() else None) == out_before, "the merge wrote something"
    return msg


# ------------------------------------------------------------------------------ merge: malformed shards


def test_toy_shards_merge_to_the_unsharded_result(toy_shards, tmp_path):
    full = toy(tmp_path / "full")
    merged = toy(tmp_path / "m", merge=toy_shards)
    assert merged["n"] == full["n"] == 10 and merged["mean_v"] == pytest.approx(full["mean_v"])
    rec = json.loads((toy_shards[2] / S.SHARD_FILE).read_text())
    assert rec["version"] == S.SHARD_VERSION and rec["record_sha256"] == S._record_digest(rec)


@pytest.mark.parametrize("case", ["no_fingerprint", "shard_str", "num_shards_str", "num_shards_huge", "bool_shard", "version_1", "states_file_outside",
                                  "states_file_dotdot", "wall_s_nan", "rows_off_split", "leaves_not_list", "not_json", "kind"])
def test_malformed_shard_json_is_refused_naming_folder_and_field(toy_shards, tmp_path, case):
    dirs = copy_shards(toy_shards, tmp_path)
    bad = dirs[1]
    field = {
        "no_fingerprint": ("fingerprint", lambda r: r.pop("fingerprint")),
        "shard_str": ("shard", lambda r: r.__setitem__("shard", "1")),
        "num_shards_str": ("num_shards", lambda r: r.__setitem__("num_shards", "3")),
        "num_shards_huge": ("num_shards", lambda r: r.__setitem__("num_shards", 10**18)),
        "bool_shard": ("shard", lambda r: r.__setitem__("shard", True)),
        "version_1": ("version", lambda r: r.__setitem__("version", 1)),
        "states_file_outside": ("states_file", lambda r: r.__setitem__("states_file", "/etc/passwd")),
        "states_file_dotdot": ("states_file", lambda r: r.__setitem__("states_file", "../s0/shard_states.npz")),
        "wall_s_nan": ("passes.toy.wall_s", lambda r: r["passes"]["toy"].__setitem__("wall_s", "fast")),
        "rows_off_split": ("passes.toy.rows", lambda r: r["passes"]["toy"].__setitem__("rows", 4)),
        "leaves_not_list": ("passes.toy.leaves", lambda r: r["passes"]["toy"].__setitem__("leaves", {"a": 1})),
        "kind": ("kind", lambda r: r.__setitem__("kind", "other")),
    }
    if case == "not_json":
        (bad / S.SHARD_FILE).write_text("{not json")
        name = "valid JSON"
    else:
        name, fn = field[case]
        rewrite(bad, fn)
    msg = refused(dirs, tmp_path / "out", str(bad), name)
    assert "Traceback" not in msg


def test_hand_edited_rows_or_wall_s_are_refused(toy_shards, tmp_path):
    dirs = copy_shards(toy_shards, tmp_path)
    rewrite(dirs[0], lambda r: r["passes"]["toy"].__setitem__("wall_s", 0.001), resign=False)  # would inflate the throughput
    refused(dirs, tmp_path / "out", str(dirs[0]), "record_sha256", "edited")
    # a consistent edit of the rows everywhere in shard.json: the states still count the real rows
    one = tmp_path / "one"
    toy(one, shard=(0, 1))
    before = json.loads((one / S.SHARD_FILE).read_text())["passes"]["toy"]
    assert before["rows"] == 10
    rewrite(one, lambda r: r["passes"]["toy"].update(rows_total=12, rows=12, rows_slice=[0, 12]))
    refused([one], tmp_path / "out", str(one), "passes.toy.rows", "count 10 rows")


@pytest.mark.parametrize("case", ["object_array", "missing_leaf", "extra_array", "not_npz", "corrupted"])
def test_malformed_states_are_refused_before_loading(toy_shards, tmp_path, case):
    dirs = copy_shards(toy_shards, tmp_path)
    bad = dirs[2]
    arrays = dict(np.load(bad / S.STATES_FILE))
    if case == "object_array":
        arrays["toy__0001"] = np.array([{"x": 1}], dtype=object)  # saved pickled
        write_states(bad, arrays)
        says = ("toy__0001", "numeric")
    elif case == "missing_leaf":
        del arrays["toy__0002"]
        write_states(bad, arrays)
        says = ("toy__0002", "absent")
    elif case == "extra_array":
        write_states(bad, {**arrays, "payload": np.zeros(3)})
        says = ("payload", "does not list")
    elif case == "not_npz":
        data = b"not an npz"
        (bad / S.STATES_FILE).write_bytes(data)
        rewrite(bad, lambda r: r.__setitem__("states_sha256", hashlib.sha256(data).hexdigest()))
        says = (S.STATES_FILE, ".npz")
    else:  # corrupted after the shard wrote it: the digest catches it
        (bad / S.STATES_FILE).write_bytes(b"x" + (bad / S.STATES_FILE).read_bytes())
        says = ("states_sha256",)
    refused(dirs, tmp_path / "out", str(bad), *says)


@pytest.mark.parametrize("case", ["states_symlink", "states_fifo", "shard_json_symlink", "states_dir"])
def test_links_pipes_and_folders_are_refused_without_reading_them(toy_shards, tmp_path, case):
    dirs = copy_shards(toy_shards, tmp_path)
    bad = dirs[0]
    f = bad / (S.SHARD_FILE if case == "shard_json_symlink" else S.STATES_FILE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(f.read_bytes())
    f.unlink()
    if case == "states_fifo":
        os.mkfifo(f)  # used to hang merge forever
    elif case == "states_dir":
        f.mkdir()
    else:
        f.symlink_to(elsewhere)
    refused(dirs, tmp_path / "out", str(bad), "symbolic link" if "symlink" in case else "regular file")


def test_huge_num_shards_message_stays_short(tmp_path):
    one = tmp_path / "s0"
    toy(one, shard=(0, 1_000_000))  # a valid, empty shard of a million
    msg = refused([one], tmp_path / "out", "missing 1/1000000", "5/1000000 and 999,994 more")
    assert len(msg) < 300


def test_merge_out_may_not_be_an_input_shard_or_another_runs_folder(toy_shards, tmp_path):
    dirs = copy_shards(toy_shards, tmp_path)
    refused(dirs, dirs[1], "out", "input shard 1/3")
    other = tmp_path / "other"
    toy(other, ToyConfig(steps=2))  # an unsharded run of its own
    refused(dirs, other, "out", "another run's outputs", "--overwrite")
    # the same merge twice into its own folder is fine (it redoes itself)
    assert toy(tmp_path / "m", merge=dirs)["n"] == 10
    assert toy(tmp_path / "m", merge=dirs)["n"] == 10


def test_a_killed_merge_leaves_no_temporary_behind(toy_shards, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    stray = out / ".merge.json.k1ll3d.tmp"
    stray.write_text('{"half": ')
    assert toy(out, merge=toy_shards)["n"] == 10
    assert not stray.exists() and not list(out.glob(".*.tmp")) and (out / S.MERGE_FILE).is_file()


def test_fingerprint_leaves_result_neutral_fields_out_and_names_the_others(toy_shards, tmp_path):
    dirs = copy_shards(toy_shards, tmp_path)
    retried = tmp_path / "retried1"  # shard 1 retried elsewhere with another batch size and checkpoint spacing
    toy(retried, ToyConfig(batch_size=8, checkpoint_every=1), shard=(1, 3))
    assert toy(tmp_path / "m", merge=[dirs[0], retried, dirs[2]])["n"] == 10
    foreign = tmp_path / "foreign1"
    toy(foreign, ToyConfig(steps=3), shard=(1, 3))
    msg = refused([dirs[0], foreign, dirs[2]], tmp_path / "out", str(foreign), "another run", "toy.run.cfg.steps: 1 vs 3")
    assert "batch_size" not in msg


def test_batch_larger_than_the_rows_is_capped(tmp_path):
    m = Toy(rows=10)
    S.run_job(m, "toy", tmp_path / "o", ToyConfig(batch_size=1_000_000), progress=False)
    d = jax.device_count()
    assert {s[0] for s in m.shapes} == {-(-10 // d) * d}  # 10 rows, rounded up to a multiple of the simulated devices


# ------------------------------------------------------------------------------ merge: the CLI's recorded options


@pytest.mark.parametrize("case", ["empty_args", "missing_option", "unknown_option", "wrong_type", "bad_choice", "no_cli", "no_models"])
def test_cli_merge_refuses_bad_recorded_options(toy_shards, tmp_path, capsys, case):
    dirs = copy_shards(toy_shards, tmp_path)
    edits = {
        "empty_args": ("cli.args", lambda r: r["cli"].__setitem__("args", {})),
        "missing_option": ("cli.args", lambda r: r["cli"]["args"].pop("steps")),
        "unknown_option": ("cli.args", lambda r: r["cli"]["args"].__setitem__("evil", 1)),
        "wrong_type": ("cli.args.steps", lambda r: r["cli"]["args"].__setitem__("steps", "ten")),
        "bad_choice": ("cli.args.optimizer", lambda r: r["cli"]["args"].__setitem__("optimizer", "lbfgs")),
        "no_cli": ("field cli", lambda r: r.pop("cli")),
        "no_models": ("field models", lambda r: None),  # toy shards used no models: a CLI merge could not check them
    }
    field, fn = edits[case]
    for d in dirs:
        rewrite(d, fn)
    refused(dirs, tmp_path / "out", str(dirs[0]), field, cli=True, capsys=capsys)


# ------------------------------------------------------------------------------ one writer, one run per folder


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_lock_names_the_holder_and_a_dead_holder_is_taken_over(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    p = _sleeper()
    try:
        lock = {"pid": p.pid, "host": socket.gethostname(), "start": cio._proc_start(p.pid), "since": "now", "command": "cfjax global attack"}
        (out / cio.LOCK_FILE).write_text(json.dumps(lock))
        before = snapshot(out)
        with pytest.raises(InputError, match=f"PID {p.pid} on this host"):
            toy(out)
        assert snapshot(out) == before  # refused before writing anything
    finally:
        p.kill()
        p.wait()
    assert toy(out)["n"] == 10  # its process is gone: a stale lock is taken over
    assert not (out / cio.LOCK_FILE).exists()  # released


def test_lock_of_another_host_or_unreadable_is_refused_with_the_file_to_delete(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / cio.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere-node-7", "since": "then", "command": "cfjax merge"}))
    with pytest.raises(InputError, match="delete .*cfjax.lock.* host 'elsewhere-node-7'"):
        toy(out)
    (out / cio.LOCK_FILE).write_text("")
    with pytest.raises(InputError, match="unreadable"):
        toy(out)


def test_folder_lock_api(tmp_path):
    a = cio.FolderLock(tmp_path, "out").acquire()
    with pytest.raises(InputError, match=f"PID {os.getpid()}"):
        cio.FolderLock(tmp_path, "out").acquire()  # a second writer, even in the same process
    a.release()
    with cio.FolderLock(tmp_path, "out"):
        assert (tmp_path / cio.LOCK_FILE).is_file()
    assert not (tmp_path / cio.LOCK_FILE).exists()


def test_another_runs_folder_is_refused_and_overwrite_replaces_it_whole(tmp_path):
    out = tmp_path / "o"
    toy(out, rows=20)
    d = jax.device_count()
    assert len(list((out / "per_example" / "toy").glob("chunk_*.npz"))) == -(-20 // d)  # one chunk per device-count rows
    shutil.rmtree(out / "state")  # the user "deletes the checkpoint", as an older message advised
    before = snapshot(out)
    with pytest.raises(InputError) as e:
        toy(out, rows=12)  # another run: another row count... -> refused, naming the option
    assert "another run's outputs" in str(e.value) and "--overwrite" in str(e.value)
    with pytest.raises(InputError, match="options.rows: 20 vs 12"):
        toy(out, rows=12)
    assert snapshot(out) == before
    with pytest.raises(InputError, match="steps: 1 vs 2"):
        toy(out, ToyConfig(steps=2), rows=20)
    s = toy(out, rows=12, overwrite=True)
    rows = np.concatenate([np.load(f)["v"] for f in sorted((out / "per_example" / "toy").glob("chunk_*.npz"))])
    assert s["n"] == 12 and len(rows) == 12  # none of the old run's per-example rows left
    np.testing.assert_array_equal(rows, np.arange(12))
    # the same run again: its own folder, resumes (no refusal, same files)
    assert toy(out, rows=12)["n"] == 12
    assert len(list((out / "per_example" / "toy").glob("chunk_*.npz"))) == -(-12 // d)
    # a shard's folder is not the unsharded run's
    with pytest.raises(InputError, match="role: 'run' vs 'shard 0/2'"):
        toy(out, rows=12, shard=(0, 2))


def test_outputs_of_an_unknown_run_are_refused_and_unrelated_files_are_kept(tmp_path):
    out = tmp_path / "o"
    (out / "per_example" / "toy").mkdir(parents=True)
    (out / "per_example" / "toy" / "chunk_000007.npz").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="no readable run.json"):
        toy(out)
    toy(out, overwrite=True)
    assert not (out / "per_example" / "toy" / "chunk_000007.npz").exists() and (out / "notes.txt").read_text() == "mine"


def test_a_restarted_pass_drops_the_chunks_it_will_rewrite(tmp_path):
    d = tmp_path / "pe"
    d.mkdir()
    for c in range(4):
        (d / f"chunk_{c:06d}.npz").write_bytes(b"x")
    (d / "chunk_000003.p1.npz").write_bytes(b"x")
    (d / ".chunk_000002.npz.tmp").write_bytes(b"x")
    gone = parallel.drop_outputs_from(d, 2)
    assert sorted(f.name for f in d.iterdir()) == ["chunk_000000.npz", "chunk_000001.npz"] and len(gone) == 4


def test_read_regular_file_refuses_links_pipes_and_paths_outside(tmp_path):
    (tmp_path / "a").write_bytes(b"ok")
    assert cio.read_regular_file(tmp_path / "a", "f", inside=tmp_path) == b"ok"
    (tmp_path / "l").symlink_to(tmp_path / "a")
    with pytest.raises(InputError, match="symbolic link"):
        cio.read_regular_file(tmp_path / "l", "f")
    os.mkfifo(tmp_path / "p")
    with pytest.raises(InputError, match="not a regular file"):
        cio.read_regular_file(tmp_path / "p", "f")  # returns at once: never waits for a writer
    with pytest.raises(InputError, match="outside"):
        cio.read_regular_file(tmp_path / "a", "f", inside=tmp_path / "sub")


# ------------------------------------------------------------------------------ values that used to fail late


@pytest.mark.parametrize("argv, flag", [
    (["global", "attack", "--batch-size", "1000000000"], "--batch-size"),
    (["explain", "attack", "--batch-size", "1000000000"], "--batch-size"),
    (["global", "mirror", "--batch-size", "1000000000"], "--batch-size"),
    (["global", "attack", "--lr", "nan"], "--lr"),
    (["global", "attack", "--lr", "0"], "--lr"),
    (["global", "attack", "--lr", "-0.1"], "--lr"),
    (["global", "attack", "--pixel-lr", "inf"], "--pixel-lr"),
    (["explain", "attack", "--lr", "nan"], "--lr"),
    (["global", "mirror", "--k-step", "nan"], "--k-step"),
    (["global", "attack", "--lpips-weights", "/nonexistent/alexnet.ckpt"], "lpips"),
])
def test_values_that_used_to_fail_late_exit_2_before_any_loading(tmp_path, capsys, argv, flag):
    out = tmp_path / "o"
    t0 = time.perf_counter()
    assert main([*argv, "--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert flag in err and "expected" in err, err
    assert not out.exists()  # no model trained, nothing written
    assert time.perf_counter() - t0 < 120  # (not a timing claim: a guard against a run that trained models)


def test_bad_lpips_weight_file_is_refused_before_models_load(tmp_path, capsys):
    bad = tmp_path / "alexnet.ckpt"
    bad.write_bytes(b"\x80\x04 not the weights")
    out = tmp_path / "o"
    assert main(["global", "attack", "--smoke", "--lpips-weights", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--lpips-weights" in err and str(bad) in err
    assert not out.exists()


# ------------------------------------------------------------------------------ the real CLI (shared smoke models)

ATTACK = ["global", "attack", "--data", "mnist5k", "--smoke", "--no-pixel"]


@pytest.mark.slow
def test_two_concurrent_global_attack_runs_second_exits_2_naming_the_first(tmp_path_factory, tmp_path, capsys):
    models = shared_models_dir(tmp_path_factory, "attack")
    out = tmp_path / "o"
    env = child_env()
    first = subprocess.Popen([sys.executable, "-m", "cfjax", *ATTACK, "--models-dir", str(models), "--out", str(out)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while first.poll() is None and not (out / cio.LOCK_FILE).exists():
            time.sleep(0.01)
        assert first.poll() is None, first.communicate()[0]
        assert main([*ATTACK, "--limit", "4", "--models-dir", str(models), "--out", str(out)]) == 2  # another config, same folder
        err = capsys.readouterr().err
        assert f"PID {first.pid} on this host" in err and "in use by another cfjax run" in err, err
        assert main([*ATTACK, "--models-dir", str(models), "--out", str(out)]) == 2  # the same command twice
        assert f"PID {first.pid}" in capsys.readouterr().err
    finally:
        log = first.communicate(timeout=600)[0]
    assert first.returncode == 0, log
    s = json.loads((out / "summary.json").read_text())
    assert s["n_counterfactuals"] == 72 and not (out / cio.LOCK_FILE).exists()


@pytest.mark.slow
def test_cli_merge_never_trains_and_writes_only_its_out(tmp_path_factory, tmp_path, capsys):
    models = shared_models_dir(tmp_path_factory, "attack")
    args = [*ATTACK, "--limit", "4", "--models-dir", str(models)]
    dirs = [tmp_path / f"s{i}" for i in range(2)]
    assert main([*args, "--batch-size", "8", "--out", str(dirs[0]), "--shard", "0/2"]) == 0
    assert main([*args, "--batch-size", "16", "--checkpoint-every", "1", "--out", str(dirs[1]), "--shard", "1/2"]) == 0  # other neutral options
    rec = json.loads((dirs[0] / S.SHARD_FILE).read_text())
    assert {m["kind"] for m in rec["models"]} == {"classifier", "vae"}
    empty = tmp_path / "no_models"
    empty.mkdir()
    # a merge pointed at a folder without the shards' models: refused before loading, nothing trained or written
    before = snapshot(*dirs, empty)
    assert main(["merge", *map(str, dirs), "--models-dir", str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "models_dir" in err and "merge never trains" in err and str(empty) in err, err
    assert snapshot(*dirs, empty) == before and not (tmp_path / "out").exists()
    # the shards' recorded --models-dir elsewhere (a tool rewrote shard.json): nothing is created there
    elsewhere = tmp_path / "elsewhere" / "models"
    for d in dirs:
        rewrite(d, lambda r: r["cli"]["args"].__setitem__("models_dir", str(elsewhere)))
    assert main(["merge", *map(str, dirs), "--out", str(tmp_path / "out")]) == 2
    assert "models_dir" in capsys.readouterr().err and not (tmp_path / "elsewhere").exists() and not (tmp_path / "out").exists()
    # with the models: shards of two batch sizes merge (the batch size is result-neutral)
    assert main(["merge", *map(str, dirs), "--models-dir", str(models), "--out", str(tmp_path / "out")]) == 0
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["n_counterfactuals"] == 36
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["figures", "merge.json", "report.html", "run.json", "summary.json"]
