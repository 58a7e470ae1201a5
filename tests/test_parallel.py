"""Tests of parallel.py on 2 gloo ranks (CPU): FSDP2 sampling gathers the student once, not per
decoded token; a sharded teacher stays in lockstep when the ranks' data need different numbers of
forwards; and both give what one process with the unsharded models gives.

    python -m pytest -q tests/test_parallel.py
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import torch
from PIL import Image

import model as M
from rollout import sample
from teacher import Teacher
from test_train import finish

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G, NEW = 3, 6


def noise(seed, side):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def rank_data(rank):
    # Rank 0 and rank 1 get prompts of different lengths (image sizes, questions), so their token
    # budgets split the work into different numbers of forwards.
    fulls = [noise(10 * rank + i, side) for i, side in enumerate([224, 112] if rank == 0 else [168])]
    questions = [f"Which symbol is in the box? {'Look closely. ' * (rank + i)}" for i in range(len(fulls))]
    crops = [noise(100 + 10 * rank + i, 56) for i in range(len(fulls))]
    negs = [noise(200 + 10 * rank + i, 56) for i in range(len(fulls))]
    seeds = [1000 + 10 * rank + i for i in range(len(fulls))]
    return fulls, questions, crops, negs, seeds


def run_two_ranks(script, timeout=240):
    """Run `script` on 2 gloo ranks (torchrun); rank r writes its results as JSON to the file
    argv[2]/r.json (stdout of two processes may interleave). A hung run is killed with all its
    workers (a session of its own)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                                 "--no-python", sys.executable, "-c", script, ROOT, out], env=env, cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        finish(proc, timeout)
        return [json.load(open(os.path.join(out, f"{rank}.json"))) for rank in range(2)]


SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/tests")
    import model as M, parallel
    from rollout import sample
    from teacher import Teacher
    from test_parallel import rank_data, G, NEW
    rank, world, device = parallel.setup_distributed()
    student, proc = M.load("tiny:qwen2_5_vl")
    teacher_model, _ = M.load("tiny:qwen2_5_vl@1")
    parallel.shard_fsdp(student)
    parallel.shard_fsdp(teacher_model)
    gathers = [0]
    real_gather = dist.all_gather_single
    def counting_gather(*args, **kwargs):
        gathers[0] += 1
        return real_gather(*args, **kwargs)
    dist.all_gather_single = counting_gather
    in_generate = [0]
    real_generate = student.generate
    def counting_generate(*args, **kwargs):
        before = gathers[0]
        out = real_generate(*args, **kwargs)
        in_generate[0] += gathers[0] - before
        return out
    student.generate = counting_generate
    fulls, questions, crops, negs, seeds = rank_data(rank)
    prompts = M.student_prompts(proc, fulls, questions)
    gathers[0] = 0
    ro = sample(student, proc, prompts, group_size=G, max_new_tokens=NEW, seed=seeds)
    sampling_gathers = gathers[0]
    lp = Teacher(teacher_model, proc, max_tokens=150).replay(ro, fulls, questions, pos_crops=crops, neg_crops=negs)
    units = len(parallel.fsdp_units(student))
    json.dump({"rank": rank, "units": units, "sampling_gathers": sampling_gathers,
                                "generate_gathers": in_generate[0], "ids": ro.response_ids.tolist(),
                                "old_logp": ro.old_logp.tolist(), "pos": lp["pos"].tolist(), "neg": lp["neg"].tolist()},
              open(f"{sys.argv[2]}/{rank}.json", "w"))
    del student, teacher_model
    parallel.end_distributed()
""")


def test_fsdp2_rollout_gathers_once_and_sharded_teacher_keeps_lockstep():
    results = {r["rank"]: r for r in run_two_ranks(SCRIPT)}
    assert sorted(results) == [0, 1]
    student, processor = M.load("tiny:qwen2_5_vl")
    teacher_model, _ = M.load("tiny:qwen2_5_vl@1")
    for rank, r in results.items():
        # One all-gather per FSDP unit for the whole rollout (2 blocks + the root), none per token.
        assert r["generate_gathers"] == 0 and r["sampling_gathers"] == r["units"] == 3, r
        # The same samples, log-probs and teacher replay as one process with unsharded models.
        fulls, questions, crops, negs, seeds = rank_data(rank)
        ro = sample(student, processor, M.student_prompts(processor, fulls, questions), group_size=G,
                    max_new_tokens=NEW, seed=seeds)
        assert torch.equal(ro.response_ids, torch.tensor(r["ids"]))
        torch.testing.assert_close(ro.old_logp, torch.tensor(r["old_logp"]), rtol=0, atol=1e-5)
        lp = Teacher(teacher_model, processor).replay(ro, fulls, questions, pos_crops=crops, neg_crops=negs)
        torch.testing.assert_close(lp["pos"], torch.tensor(r["pos"]), rtol=0, atol=1e-5)
        torch.testing.assert_close(lp["neg"], torch.tensor(r["neg"]), rtol=0, atol=1e-5)


PRECISION_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    from transformers.cache_utils import DynamicLayer
    sys.path.insert(0, sys.argv[1])
    import data, model as M, parallel, prefix, train
    from rollout import unwrap
    rank, world, device = parallel.setup_distributed()
    # Every key/value the caches receive, in generate (transformers' layers) and in our prefixes.
    seen = set()
    for cls in (DynamicLayer, prefix._Attention):
        def record(self, key_states, value_states, *args, _real=cls.update, **kwargs):
            seen.add(str(key_states.dtype))
            return _real(self, key_states, value_states, *args, **kwargs)
        cls.update = record
    out = {"rank": rank}
    for mode in (["--fsdp", "--shard-teacher"], []):
        cfg = train.parse_args(["--student", "tiny:qwen3_5", "--teacher", "tiny:qwen3_5@1", "--dtype", "bf16",
                                "--group-size", "2", "--prompts-per-step", "2", "--mini-batches", "1",
                                "--max-new-tokens", "4", "--out-dir", "/tmp/unused", *mode])
        student, processor, teacher, optimizer, master = train.build(cfg, rank, world, device)
        seen.clear()
        inputs = train.prepare(cfg, data.synthetic(8, 0), 0, rank, world, processor, teacher)
        metrics = train.train_step(cfg, inputs, student, processor, teacher, optimizer, master, rank, world, device)
        out["fsdp" if mode else "ddp"] = {
            "cache": sorted(seen), "optimizer": sorted({str(p.dtype) for g in optimizer.param_groups for p in g["params"]}),
            "student": sorted({str(p.dtype) for p in unwrap(student).parameters()}),
            "teacher": sorted({str(p.dtype) for p in teacher.model.parameters()}), "loss": metrics["loss"]}
        del student, teacher, optimizer, master
    json.dump(out, open(f"{sys.argv[2]}/{rank}.json", "w"))
    parallel.end_distributed()
""")


def test_bf16_compute_and_caches_over_fp32_master_weights_with_fsdp2_and_ddp():
    # --dtype bf16 on 2 gloo ranks (bf16 works on CPU, slowly): FSDP2's mixed precision and the DDP
    # path both fill every KV cache in bf16 and step fp32 master weights; Qwen3.5 (linear attention).
    for r in run_two_ranks(PRECISION_SCRIPT):
        for mode in ("fsdp", "ddp"):
            got = r[mode]
            assert got["cache"] == ["torch.bfloat16"], (mode, got)
            assert got["optimizer"] == ["torch.float32"] and got["teacher"] == ["torch.bfloat16"], (mode, got)
            # FSDP2 holds fp32 shards and casts to bf16 for compute; DDP holds bf16 weights + fp32 copies.
            assert got["student"] == (["torch.float32"] if mode == "fsdp" else ["torch.bfloat16"]), (mode, got)
            assert got["loss"] == got["loss"], (mode, got)                     # not NaN


LOAD_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    import model as M, parallel
    from functools import partial
    rank, world, device = parallel.setup_distributed()
    model, _ = parallel.load_sharded(partial(M.load, "tiny:qwen3_5@4"), rank, device)
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    buffers = dict(model.named_buffers())
    reference, _ = M.load("tiny:qwen3_5@4")
    json.dump({"rank": rank, "sharded": sum(hasattr(p, "full_tensor") for p in model.parameters()),
        "params_equal": all(torch.equal(full[k], v) for k, v in reference.state_dict().items()),
        "buffers_equal": all(torch.equal(buffers[k], v) for k, v in reference.named_buffers())},
        open(f"{sys.argv[2]}/{rank}.json", "w"))
    del model, buffers, full
    parallel.end_distributed()
""")


def test_sharded_loading_equals_the_plain_load():
    # Rank 1 never reads a weight: it builds on the meta device and receives its shards from rank 0.
    for r in run_two_ranks(LOAD_SCRIPT):
        assert r["sharded"] > 0 and r["params_equal"] and r["buffers_equal"], r
