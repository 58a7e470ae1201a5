# Tests of train.py on tiny models, CPU: updates, distributed equality, exact resume, invariants.
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed.checkpoint as dcp

import data
import model as vlm
import method
import train
import update

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--student", "tiny:qwen2_5_vl", "--teacher", "tiny:qwen2_5_vl@1", "--train-data", "synthetic:32:0",
        "--prompts-per-step", "4", "--group-size", "4", "--max-new-tokens", "8", "--lr", "1e-3",
        "--update-tokens", "600", "--score-tokens", "800", "--per-prompt-seeds"]
TIMING = ("time/", "tokens_per_s", "rollout/tokens_per_s", "peak_mem_mb")


def run(tmp_path, *extra, name="run"):
    cfg = train.parse_args(TINY + ["--out-dir", str(tmp_path / name), *extra])
    return cfg, train.train(cfg)


def weights_of(path):
    net, _ = vlm.load(path)
    return {k: v.clone() for k, v in net.state_dict().items()}


def without_timing(metrics):
    return [{k: v for k, v in m.items() if not k.startswith(TIMING)} for m in metrics]


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_steps_update_weights_and_write_metrics_and_checkpoint(tmp_path):
    cfg, history = run(tmp_path, "--max-steps", "2", "--save-every", "1")
    before = weights_of("tiny:qwen2_5_vl")
    after = weights_of(str(tmp_path / "run" / "ckpt-000002"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, changed
    lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert [m["step"] for m in lines] == [1, 2]
    for key in ("loss", "kl/k1_mean", "gate/weight_mean", "time/rollout", "time/teacher", "time/update",
                "rollout/len_mean", "tokens_per_s", "peak_mem_mb", "diag/rollout_acc"):
        assert key in lines[0] and lines[0][key] is not None, key
    assert lines[0]["gate/weight_mean"] == pytest.approx(1.0, abs=1e-6)    # Eq. 19 centres the gate
    ckpt = tmp_path / "run" / "ckpt-000002"
    assert torch.load(ckpt / "trainer.pt", weights_only=False)["step"] == 2
    assert json.load(open(ckpt / "train_config.json"))["method"] == "vzero"
    # The training state: AdamW's moments per parameter, written with torch.distributed.checkpoint; no
    # master copy in an fp32 run (the model files hold those weights exactly).
    saved = dcp.FileSystemReader(str(ckpt / "train_state")).read_metadata().state_dict_metadata
    assert {k.split(".")[0] for k in saved} == {"exp_avg", "exp_avg_sq", "step"}
    assert len([k for k in saved if k.startswith("exp_avg.")]) == len(before)
    # A model directory of the family: its standard processor class, the chat template, the pixel bounds.
    processor_config = json.load(open(ckpt / "processor_config.json"))
    assert processor_config["processor_class"] == "Qwen2_5_VLProcessor"
    assert processor_config["image_processor"]["size"] == {"shortest_edge": 112 * 112, "longest_edge": 224 * 224}
    assert (ckpt / "chat_template.jinja").read_text() == vlm.CHAT_TEMPLATE
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())


def test_opd_equals_vzero_with_unit_weights(tmp_path, monkeypatch):
    _, opd = run(tmp_path, "--max-steps", "2", "--method", "opd", name="opd")
    ones = lambda lp_pos, lp_neg, mask, G, **kw: (torch.ones(mask.shape[0]), {})
    monkeypatch.setattr(method, "evidence_gate", ones)
    _, vz = run(tmp_path, "--max-steps", "2", name="vz")
    assert [m["loss"] for m in opd] == [m["loss"] for m in vz]
    assert_same_weights(weights_of(str(tmp_path / "opd" / "ckpt-000002")),
                        weights_of(str(tmp_path / "vz" / "ckpt-000002")))


def test_answers_are_never_read_by_a_training_step(tmp_path, monkeypatch):
    _, with_answers = run(tmp_path, "--max-steps", "2", name="with")
    stripped = [ex.without_answer() for ex in data.load_examples("synthetic:32:0")]
    monkeypatch.setattr(data, "load_examples", lambda spec, *args: stripped)
    _, without = run(tmp_path, "--max-steps", "2", name="without")
    assert "diag/rollout_acc" in with_answers[0] and "diag/rollout_acc" not in without[0]
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("diag/")} for m in without_timing(ms)]
    assert strip(with_answers) == strip(without)
    assert_same_weights(weights_of(str(tmp_path / "with" / "ckpt-000002")),
                        weights_of(str(tmp_path / "without" / "ckpt-000002")))


def test_non_finite_loss_skips_the_update_and_is_counted(tmp_path, monkeypatch):
    real_loss, calls = update.opd_loss, []

    def nan_first(*args, **kw):                 # the first mini-batch's loss is NaN
        loss, stats = real_loss(*args, **kw)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 1 else loss), stats
    monkeypatch.setattr(update, "opd_loss", nan_first)
    _, history = run(tmp_path, "--max-steps", "2", "--update-tokens", "100000")   # 2 mini-batches x 1 micro
    assert [m["skipped_updates"] for m in history] == [1, 0]
    after = weights_of(str(tmp_path / "run" / "ckpt-000002"))
    assert all(torch.isfinite(v).all() for v in after.values())
    before = weights_of("tiny:qwen2_5_vl")
    assert any(not torch.equal(before[k], after[k]) for k in before)      # the other updates happened


def test_vzero_gate_changes_the_update(tmp_path):
    # The gate must matter: vzero and opd start from the same rollouts but update differently.
    _, vz = run(tmp_path, "--max-steps", "1", name="vz")
    _, opd = run(tmp_path, "--max-steps", "1", "--method", "opd", name="opd")
    assert vz[0]["rollout/len_mean"] == opd[0]["rollout/len_mean"]
    assert vz[0]["loss"] != opd[0]["loss"]


def launch(args, nproc=None, env_extra=None):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone"] \
        if nproc else [sys.executable]
    # A session of its own, so a hung run can be killed with all its workers (finish, below).
    return subprocess.Popen(cmd + [os.path.join(ROOT, "train.py"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc, timeout=300):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    finish(launch(TINY + ["--max-steps", "2", "--out-dir", str(out)]))
    return out


@pytest.mark.parametrize("sharding", [[], ["--fsdp", "--shard-teacher", "--grad-checkpointing"]],
                         ids=["ddp", "fsdp2-checkpointing"])
def test_two_gloo_ranks_equal_one_process(tmp_path, one_process_run, sharding):
    # Same global batch (4 prompts: 2 per rank), per-prompt seeds: same samples, same update. FSDP2
    # also recomputes activations in backward (the shared prompt's cache read again): still the same.
    finish(launch(TINY + ["--max-steps", "2", "--out-dir", str(tmp_path), *sharding], nproc=2))
    m1 = [json.loads(l) for l in open(one_process_run / "metrics.jsonl")]
    m2 = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
    for a, b in zip(m1, m2, strict=True):
        assert a["rollout/tokens"] == b["rollout/tokens"]               # the same samples
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["kl/k1_mean"] == pytest.approx(b["kl/k1_mean"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert_same_weights(weights_of(str(one_process_run / "ckpt-000002")),
                        weights_of(str(tmp_path / "ckpt-000002")), atol=1e-5)


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    args = TINY + ["--max-steps", "4", "--save-every", "2"]
    straight = launch(args + ["--out-dir", str(tmp_path / "straight")])
    finish(straight)
    # Kill -9 a run as soon as its step-2 checkpoint exists (mid-way through step 3), then resume.
    victim = launch(args + ["--max-steps", "40", "--out-dir", str(tmp_path / "killed")])
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "ckpt-000002").exists():
        assert victim.poll() is None and time.time() < deadline, "run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    finish(launch(args + ["--resume", "--out-dir", str(tmp_path / "killed")]))
    a = [json.loads(l) for l in open(tmp_path / "straight" / "metrics.jsonl")]
    b = [json.loads(l) for l in open(tmp_path / "killed" / "metrics.jsonl")]
    assert without_timing(a) == without_timing(b)
    assert_same_weights(weights_of(str(tmp_path / "straight" / "ckpt-000004")),
                        weights_of(str(tmp_path / "killed" / "ckpt-000004")))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fsdp2_resume_equals_uninterrupted(tmp_path, dtype):
    # FSDP2 restores the optimizer (and in bf16 the fp32 master shards, which the bf16 model files
    # only round) through DTensor parameters, each rank its own shards: a separate path from DDP's.
    args = TINY + ["--fsdp", "--save-every", "2", "--dtype", dtype]
    finish(launch(args + ["--max-steps", "3", "--out-dir", str(tmp_path / "straight")], nproc=2))
    finish(launch(args + ["--max-steps", "2", "--out-dir", str(tmp_path / "resumed")], nproc=2))
    finish(launch(args + ["--max-steps", "3", "--resume", "--out-dir", str(tmp_path / "resumed")], nproc=2))
    a = [json.loads(l) for l in open(tmp_path / "straight" / "metrics.jsonl")]
    b = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert without_timing(a) == without_timing(b)
    assert_same_weights(weights_of(str(tmp_path / "straight" / "ckpt-000003")),
                        weights_of(str(tmp_path / "resumed" / "ckpt-000003")))


@pytest.mark.parametrize("extra, message", [
    (["--prompts-per-step", "3"], "mini-batches"),
    (["--group-size", "1"], "group-size"),
    (["--method", "vzero-random", "--group-size", "1"], "vzero-random needs --group-size >= 2"),
    (["--method", "vzero-gated"], "--method 'vzero-gated': choose one of"),
])
def test_impossible_configs_fail_clearly(tmp_path, extra, message):
    cfg = train.parse_args(TINY + ["--out-dir", str(tmp_path)] + extra)
    with pytest.raises(ValueError, match=message):
        train.train(cfg)


def test_student_teacher_vocab_mismatch_is_refused(tmp_path, monkeypatch):
    real_load = vlm.load

    def load(name, **kw):
        net, proc = real_load(name, **kw)
        if name.endswith("@1"):                         # the teacher: add one token to its vocab
            proc.tokenizer.add_tokens(["<extra_token>"])
        return net, proc
    monkeypatch.setattr(vlm, "load", load)
    with pytest.raises(ValueError, match="tokenizers differ"):
        run(tmp_path, "--max-steps", "1")


def test_bf16_student_is_stepped_through_fp32_master_weights(tmp_path):
    # One process, --dtype bf16 (CPU runs bf16, slowly): the model computes in bf16, AdamW steps fp32
    # copies, and the model then holds exactly the stepped weights rounded to bf16. A step of lr 1e-3
    # moves many weights by less than a bf16 ulp: only the fp32 copies keep those updates.
    cfg = train.parse_args(TINY + ["--dtype", "bf16", "--out-dir", str(tmp_path)])
    student, processor, teacher, optimizer, master = train.build(cfg, 0, 1, torch.device("cpu"))
    model = train.unwrap(student)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} == {p.dtype for p in teacher.model.parameters()}
    assert {p.dtype for g in optimizer.param_groups for p in g["params"]} == {torch.float32}
    before = [p.clone() for p in master.params]
    inputs = train.prepare(cfg, data.load_examples("synthetic:32:0"), 0, 0, 1, processor, teacher)
    metrics = train.train_step(cfg, inputs, student, processor, teacher, optimizer, master, 0, 1, torch.device("cpu"))
    assert metrics["skipped_updates"] == 0 and metrics["loss"] == metrics["loss"]
    moved = [not torch.equal(a, b) for a, b in zip(before, master.params)]
    assert sum(moved) > len(moved) // 2
    for p, m in zip(model.parameters(), master.params):
        assert torch.equal(p, m.to(torch.bfloat16))
    # moved, but by less than half a bf16 ulp (8 mantissa bits): updates a bf16 optimizer would have lost
    below_ulp = sum(int(((a != b) & ((a - b).abs() < b.abs() * 2 ** -9)).sum()) for a, b in zip(before, master.params))
    assert below_ulp > 0


def test_bf16_resume_restores_the_fp32_master_weights(tmp_path):
    # One process, bf16: the model files are rounded to bf16, train_state/ holds the fp32 master.
    # Resuming from them continues exactly as if never stopped.
    args = ["--dtype", "bf16", "--save-every", "1"]
    run(tmp_path, *args, "--max-steps", "2", name="straight")
    run(tmp_path, *args, "--max-steps", "1", name="resumed")
    run(tmp_path, *args, "--max-steps", "2", "--resume", name="resumed")
    saved = dcp.FileSystemReader(str(tmp_path / "resumed" / "ckpt-000001" / "train_state")).read_metadata()
    assert any(k.startswith("master.") for k in saved.state_dict_metadata)
    a = [json.loads(l) for l in open(tmp_path / "straight" / "metrics.jsonl")]
    b = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert without_timing(a) == without_timing(b)
    assert_same_weights(weights_of(str(tmp_path / "straight" / "ckpt-000002")),
                        weights_of(str(tmp_path / "resumed" / "ckpt-000002")))


def test_keep_last_deletes_only_older_complete_checkpoints(tmp_path):
    out = tmp_path / "run"
    (out / "ckpt-000009.tmp").mkdir(parents=True)            # a write cut short: never ours to delete
    (out / "ckpt-000002.bak").mkdir()                        # a user's copy: not a checkpoint
    run(tmp_path, "--max-steps", "4", "--save-every", "1", "--keep-last", "2")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "ckpt-000002.bak", "ckpt-000003", "ckpt-000004", "ckpt-000009.tmp"]


def test_checkpoint_loads_with_the_standard_classes_and_gives_the_same_tokens(tmp_path):
    from transformers import AutoModelForImageTextToText
    run(tmp_path, "--max-steps", "1")
    ckpt = str(tmp_path / "run" / "ckpt-000001")
    ours, processor = vlm.load(ckpt)
    standard = AutoModelForImageTextToText.from_pretrained(ckpt)
    assert type(standard) is type(ours) and standard.dtype == torch.float32
    prompts = vlm.student_prompts(processor, [ex.image for ex in data.synthetic(2, 5)], ["Which symbol?"] * 2)
    greedy = [train.sample(m, processor, prompts, group_size=1, max_new_tokens=6, greedy=True, old_logp=False).response_ids
              for m in (ours, standard.eval())]
    assert torch.equal(*greedy)
