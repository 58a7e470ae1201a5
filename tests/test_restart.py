"""A run on preemptible nodes (train.py, checkpoint.py, preempt.py): the restart loop's command
restarts, a failed start leaves its directory as it found it, SIGTERM stops every rank after the
same step with a checkpoint, a corrupt checkpoint is set aside and the one before it used, one
writer per out dir, and the files a resume reads are checked before any model loads.

    python -m pytest -q tests/test_restart.py
"""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

import checkpoint
import manifest
import model as vlm
from test_run import no_model_may_load, run  # noqa: F401 (a fixture)
from test_train import ROOT, TINY, assert_same_weights, launch, weights_of, without_timing


def metrics_of(out):
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    # One run of 2 steps with a checkpoint after each; tests work on copies of it.
    out = tmp_path_factory.mktemp("two") / "run"
    run(out, "--max-steps", "2", "--save-every", "1")
    return out


def copy_of(two_steps, tmp_path):
    return shutil.copytree(two_steps, tmp_path / "run")


def test_resume_auto_without_a_checkpoint_starts_afresh_and_says_so(tmp_path, capsys):
    # What a run killed before its first checkpoint leaves: logged steps, its settings, no checkpoint.
    tmp_path.joinpath("metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    tmp_path.joinpath("train_config.json").write_text("{}")
    history = run(tmp_path, "--max-steps", "1", "--resume", "auto")
    assert "holds no complete checkpoint: the run starts afresh" in capsys.readouterr().out
    assert [m["step"] for m in history] == [1]
    assert [m["step"] for m in metrics_of(tmp_path)] == [1]


def test_a_start_that_fails_before_its_first_step_leaves_the_directory_as_found(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("the model failed to load")
    with monkeypatch.context() as m:
        m.setattr(vlm, "load", broken)
        with pytest.raises(OSError, match="failed to load"):
            run(tmp_path, "--max-steps", "1")
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]      # no settings, no metrics: not a run
    run(tmp_path, "--max-steps", "1")                               # the corrected command is not refused


def test_resume_with_overwrite_is_refused_and_a_resume_with_nothing_to_do_says_so(two_steps, tmp_path, capsys,
                                                                                  no_model_may_load):
    out = copy_of(two_steps, tmp_path)
    with pytest.raises(ValueError, match="--overwrite starts the run afresh and --resume continues it"):
        run(out, "--max-steps", "3", "--resume", "auto", "--overwrite")
    assert run(out, "--max-steps", "2", "--resume") == []
    assert "nothing to do: " + str(out / "ckpt-000002") + " is at step 2, --max-steps is 2" in capsys.readouterr().out


def test_a_setting_the_saved_run_lacks_counts_as_its_default(two_steps, tmp_path):
    # A run saved before gate_gamma existed: resumable with the default, refused with another value.
    out = copy_of(two_steps, tmp_path)
    saved = out / "ckpt-000002" / "train_config.json"
    settings = json.loads(saved.read_text())
    del settings["gate_gamma"]
    saved.write_text(json.dumps(settings))
    manifest.write_manifest(out / "ckpt-000002")                  # as if it had been saved that way
    with pytest.raises(ValueError, match=r"define the run.*gate_gamma 1.0 -> 2.0"):
        run(out, "--max-steps", "3", "--resume", "--gate-gamma", "2.0")
    assert [m["step"] for m in run(out, "--max-steps", "3", "--resume")] == [3]


def test_a_run_saved_with_a_removed_setting_resumes_only_if_it_meant_what_the_code_does_now(two_steps, tmp_path,
                                                                                            no_model_may_load):
    # pos_view existed before method.py: "box" is today's vzero, "random" is now --method vzero-random.
    out = copy_of(two_steps, tmp_path)
    saved = out / "ckpt-000002" / "train_config.json"
    settings = json.loads(saved.read_text())
    for value in ("random", "box"):
        saved.write_text(json.dumps({**settings, "pos_view": value}))
        manifest.write_manifest(out / "ckpt-000002")
        if value == "random":
            with pytest.raises(ValueError, match=r"define the run.*pos_view 'random' -> removed \(--method "
                                                 r"vzero-random replaced --pos-view random\)"):
                run(out, "--max-steps", "3", "--resume")
    assert run(out, "--max-steps", "2", "--resume") == []          # "box": accepted (nothing left to do)


def test_sigterm_in_one_process_stops_after_the_step_with_a_checkpoint_and_resumes_exactly(tmp_path, monkeypatch,
                                                                                           capsys):
    # The signal arrives while step 2 is being logged: step 2 ends, is saved, the run exits 143.
    real_append = checkpoint.MetricsLog.append

    def append_then_signal(self, record):
        real_append(self, record)
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    with monkeypatch.context() as m:
        m.setattr(checkpoint.MetricsLog, "append", append_then_signal)
        with pytest.raises(SystemExit) as stop:
            run(tmp_path / "stopped", "--max-steps", "40", "--save-every", "100")
    assert stop.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL                # the handler is gone again
    out = capsys.readouterr().out
    assert f"stopped by SIGTERM after step 2 of 40: saved {tmp_path / 'stopped' / 'ckpt-000002'}" in out
    run(tmp_path / "stopped", "--max-steps", "3", "--resume", "auto")
    straight = run(tmp_path / "straight", "--max-steps", "3")
    assert without_timing(metrics_of(tmp_path / "stopped")) == without_timing(straight)
    assert_same_weights(weights_of(str(tmp_path / "straight" / "ckpt-000003")),
                        weights_of(str(tmp_path / "stopped" / "ckpt-000003")))


def rank_pid(out_dir, rank):
    # The torchrun worker of `rank` whose command line names out_dir.
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            environ = open(f"/proc/{pid}/environ", "rb").read()
        except OSError:
            continue
        if str(out_dir).encode() in cmdline and f"\0RANK={rank}\0".encode() in b"\0" + environ:
            return int(pid)
    return None


def test_sigterm_to_one_of_two_ranks_stops_both_after_the_same_step(two_steps, tmp_path):
    # Under FSDP2, whose checkpoint must also carry the hub's tensor names, as a one-process one does.
    from safetensors import safe_open
    out = tmp_path / "run"
    proc = launch(TINY + ["--max-steps", "40", "--save-every", "100", "--fsdp", "--out-dir", str(out)], nproc=2)
    deadline = time.time() + 240
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first step"
        time.sleep(0.1)
    os.kill(rank_pid(out, 1), signal.SIGTERM)                 # rank 1 only: rank 0 learns it by all-reduce
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    steps = [m["step"] for m in metrics_of(out)]
    assert f"stopped by SIGTERM after step {steps[-1]} of 40: saved {out / f'ckpt-{steps[-1]:06d}'}" in output
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] < 40
    assert checkpoint.latest(str(out)) == str(out / f"ckpt-{steps[-1]:06d}")
    assert "exitcode  : 143" in output                      # 128 + SIGTERM (torchrun reports it as a failure)
    assert 'train.py", line' not in output                  # no traceback of ours, on either rank
    names = [set(safe_open(str(path), "pt").keys()) for path in (out / f"ckpt-{steps[-1]:06d}" / "model.safetensors",
                                                                 two_steps / "ckpt-000001" / "model.safetensors")]
    assert names[0] == names[1] and "model.embed_tokens.weight" in names[0]       # not model.language_model.*


@pytest.mark.parametrize("damage, problem", [
    ("truncate", "model.safetensors has 100 bytes"),
    ("flip", "model.safetensors differs from what was written"),
    ("metadata", "train_state/.metadata is missing"),
    ("trainer", "trainer.pt differs"),
])
def test_a_corrupt_checkpoint_is_set_aside_and_the_one_before_used(two_steps, tmp_path, capsys, damage, problem):
    out = copy_of(two_steps, tmp_path)
    last = out / "ckpt-000002"
    weights = last / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip":
        raw = bytearray(weights.read_bytes())
        raw[len(raw) // 2] ^= 0x40                                   # one bit of one weight
        weights.write_bytes(bytes(raw))
    elif damage == "metadata":
        (last / "train_state" / ".metadata").unlink()
    else:
        size = (last / "trainer.pt").stat().st_size
        (last / "trainer.pt").write_bytes(b"\0" * size)                # zeroed in place: same size
    ckpt = checkpoint.open_run(str(out), {}, set(), "auto", False, 0)
    checkpoint.release(str(out))
    assert ckpt == str(out / "ckpt-000001")
    said = capsys.readouterr().out
    assert f"checkpoint {last} is corrupt ({problem}" in said and f"set aside as {last}.corrupt" in said
    assert (out / "ckpt-000002.corrupt" / "model.safetensors").exists()                 # kept, not deleted


def test_a_run_resumes_past_a_corrupt_checkpoint_and_load_errors_name_the_checkpoint(two_steps, tmp_path):
    out = copy_of(two_steps, tmp_path)
    (out / "ckpt-000002" / "trainer.pt").write_bytes(b"garbage")
    assert [m["step"] for m in run(out, "--max-steps", "2", "--resume", "auto")] == [2]   # from ckpt-000001
    # A checkpoint from before manifests is not checked: a load error still names it.
    (out / "ckpt-000002" / "manifest.json").unlink()
    (out / "ckpt-000002" / "trainer.pt").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match=f"checkpoint {out / 'ckpt-000002'}: cannot restore"):
        run(out, "--max-steps", "3", "--resume")


def test_keep_last_keeps_the_verified_newest(tmp_path):
    run(tmp_path, "--max-steps", "2", "--save-every", "1", "--keep-last", "1")
    assert checkpoint.checkpoints(str(tmp_path)) == [str(tmp_path / "ckpt-000002")]
    assert manifest.verify(str(tmp_path / "ckpt-000002")) is None


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, no_model_may_load):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, checkpoint; "
                               f"checkpoint.open_run({str(tmp_path)!r}, {{}}, set(), 'no', False, 0); "
                               "print('locked', flush=True); time.sleep(120)"],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"in use by a running run \(host {socket.gethostname()} "
                                             rf"pid {holder.pid}\)"):
            run(tmp_path, "--max-steps", "1", "--resume", "auto")
    finally:
        holder.kill()
        holder.wait()
    checkpoint.open_run(str(tmp_path), {}, set(), "no", False, 0)     # the lock died with its process
    checkpoint.release(str(tmp_path))


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines[:1] + ["{\"loss\": 1.0}"] + lines[2:], r"metrics.jsonl line 2: a record needs an integer"),
    (lambda lines: ['{"step": "1"}'] + lines[1:], r"metrics.jsonl line 1: a record needs an integer"),
    (lambda lines: lines[:1] + ["{bad json"] + lines[1:], r"metrics.jsonl line 2 is not JSON"),
])
def test_a_hand_edited_metrics_log_is_refused_before_any_model_loads(two_steps, tmp_path, no_model_may_load,
                                                                     edit, message):
    out = copy_of(two_steps, tmp_path)
    lines = (out / "metrics.jsonl").read_text().split("\n")
    (out / "metrics.jsonl").write_text("\n".join(edit(lines)))
    with pytest.raises(ValueError, match=message):
        run(out, "--max-steps", "3", "--resume")


def test_an_unreadable_config_and_an_unwritable_dir_are_refused_before_any_model_loads(two_steps, tmp_path,
                                                                                       no_model_may_load, monkeypatch):
    out = copy_of(two_steps, tmp_path)
    (out / "ckpt-000002" / "train_config.json").write_text("[1, 2]")
    manifest.write_manifest(out / "ckpt-000002")
    with pytest.raises(ValueError, match=r"ckpt-000002/train_config.json: expected a JSON object"):
        run(out, "--max-steps", "3", "--resume")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)                  # a full disk answers the probe write
    with pytest.raises(ValueError, match=rf"--out-dir {tmp_path / 'new'}: cannot write there: No space left"):
        run(tmp_path / "new", "--max-steps", "1")


def test_a_failed_checkpoint_write_says_how_much_space_is_left(tmp_path, monkeypatch):
    import torch

    def unexpected_pos(*args, **kwargs):                    # what torch.save says on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", unexpected_pos)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=0))
    with pytest.raises(OSError, match=r"writing checkpoint .*ckpt-000001.tmp failed: .*unexpected pos.*"
                                      r"0 MiB free on .*: the disk is full"):
        run(tmp_path, "--max-steps", "1")


def test_tokenizers_that_differ_are_refused_from_their_files_before_any_model_loads(two_steps, tmp_path,
                                                                                    no_model_may_load):
    student = two_steps / "ckpt-000001"
    teacher = shutil.copytree(student, tmp_path / "teacher")
    tokenizer = json.loads((teacher / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"]["zzz-new"] = len(tokenizer["model"]["vocab"]) + 100
    (teacher / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match=r"tokenizers of --student .*ckpt-000001 and --teacher .*teacher differ "
                                         r"\(\d+ vs \d+ tokens; .*zzz-new"):
        run(tmp_path / "out", "--student", str(student), "--teacher", str(teacher))


def test_eval_resume_refuses_a_model_replaced_at_the_same_path(two_steps, tmp_path):
    import eval as evaluation
    model = copy_of(two_steps, tmp_path) / "ckpt-000002"
    args = ["--model", str(model), "--bench", "zoom", "--out-dir", str(tmp_path / "eval")]
    evaluation.prepare_out_dir(evaluation.parse_args(args), 0)
    evaluation.prepare_out_dir(evaluation.parse_args(args + ["--resume"]), 0)         # the same model: fine
    shutil.copy(model.parent / "ckpt-000001" / "model.safetensors", model / "model.safetensors")
    manifest.write_manifest(model)                    # retrained at the same path, as --overwrite would
    with pytest.raises(SystemExit, match=rf"the model at {model} is not the one .*eval evaluated"):
        evaluation.prepare_out_dir(evaluation.parse_args(args + ["--resume"]), 0)


def test_a_setting_the_rank_count_makes_invalid_is_said_by_rank_0(tmp_path):
    proc = launch(TINY + ["--prompts-per-step", "3", "--out-dir", str(tmp_path)], nproc=2)
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0
    assert "ValueError: --prompts-per-step 3 must divide over 2 ranks" in output          # rank 0, in full
    assert "rank 1: --prompts-per-step 3 must divide over 2 ranks" in output              # the others: one line
    assert output.count("Traceback") <= 2                    # rank 0's and torchrun's own, not one per rank

