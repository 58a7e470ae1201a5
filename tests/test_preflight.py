"""
--preflight (preflight.py): the worst step of a run, once, measured phase by phase, nothing written.

    python -m pytest -q tests/test_preflight.py
"""

import dataclasses
import os

import pytest
import torch
from PIL import Image

import data
import train
from preflight import worst_case
from teacher import Teacher

TINY = ["--student", "tiny:qwen2_5_vl", "--teacher", "tiny:qwen2_5_vl@1", "--prompts-per-step", "2",
        "--group-size", "2", "--max-new-tokens", "7", "--train-data", "synthetic:6:0", "--preflight"]


def test_preflight_runs_the_worst_step_and_writes_nothing(tmp_path, capsys):
    cfg = train.parse_args(TINY + ["--out-dir", str(tmp_path / "run")])
    meter, metrics = train.preflight(cfg)
    # Every phase measured; every answer sampled to --max-new-tokens (EOS suppressed until then).
    assert set(meter.peak) == {"rollout", "teacher", "update"} and all(meter[p] > 0 for p in meter.peak)
    assert all(peak > 0 for peak in meter.peak.values())
    assert metrics["rollout/len_mean"] == 7 and metrics["rollout/truncated_frac"] == 1.0
    printed = capsys.readouterr().out
    for budget in ("--rollout-tokens", "--score-tokens", "--update-tokens", "Projected: at most"):
        assert budget in printed
    assert not os.path.exists(tmp_path / "run")                   # no run directory, checkpoint or metrics


def test_worst_case_is_the_largest_image_with_the_longest_question():
    examples = [data.Example(id=f"e{i}", question=q, image_source=Image.new("RGB", size), bbox=(0, 0, 8, 8))
                for i, (q, size) in enumerate([("short?", (64, 64)), ("a much longer question?", (32, 32)),
                                               ("mid one?", (96, 80))])]
    cfg = train.parse_args(TINY[:-1])
    worst = worst_case(examples, dataclasses.replace(cfg, prompts_per_step=3))
    assert len(worst) == 3 and {ex.id for ex in worst} == {"e2"}
    assert all(ex.question == "a much longer question?" and ex.size == (96, 80) for ex in worst)


def test_out_of_memory_names_the_phase_and_the_budget(tmp_path, monkeypatch):
    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 16.00 GiB")
    monkeypatch.setattr(Teacher, "replay", no_memory)
    cfg = train.parse_args(TINY + ["--out-dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit, match=r"out of memory in the teacher phase: lower --score-tokens \(now 524288\)"):
        train.preflight(cfg)
