"""
method.py: each method defined once, used by the training step AND by eval's gate diagnostics.
Here: the extension path of docs/extending.md keeps working (a variant registered in METHODS runs a
real step, with only the views it asks for), and eval diagnoses a checkpoint with the gate knobs it
was trained with, not the defaults.

    python -m pytest -q tests/test_method.py
"""

import json

import pytest
import torch

import eval as ev
import method
import train
from gate import evidence_gate
from method import METHODS, Method

TINY = ["--student", "tiny:qwen2_5_vl", "--teacher", "tiny:qwen2_5_vl@1", "--prompts-per-step", "2",
        "--group-size", "3", "--max-new-tokens", "6", "--lr", "1e-3", "--train-data", "synthetic:8:0"]


def test_every_method_is_named_in_the_help_and_valid():
    help_text = train.Config.__dataclass_fields__["method"].metadata["help"]
    for name, m in METHODS.items():
        assert name in help_text
        assert set(m.views) <= {"plain", "pos", "neg"} and m.target in m.views


def test_a_registered_variant_runs_a_step_with_its_own_views(tmp_path, monkeypatch):
    # docs/extending.md, variant (a): a gate whose reference is the teacher's full-image view instead
    # of z-; and (b): token-level weights. Each is ONE entry in METHODS; the step replays only the
    # views the entry names and distils with the weights it makes.
    seen = []

    def full_image_reference(lp, mask, G, cfg):
        seen.append(sorted(lp))
        return evidence_gate(lp["pos"], lp["plain"], mask, G, alpha=cfg.gate_alpha)

    def token_weights(lp, mask, G, cfg):          # docs/extending.md's example, word for word
        seen.append(sorted(lp))
        delta = (lp["pos"] - lp["neg"]) * mask                   # Eq. 17, [N, T]
        weights = (1 + cfg.gate_alpha * delta.tanh()).clamp(cfg.gate_w_min, cfg.gate_w_max) * mask
        return weights, {"gate/token_weight_mean": float(weights[mask].mean())}

    monkeypatch.setitem(METHODS, "vzero-fullref", Method(("plain", "pos"), "pos", full_image_reference,
                                                         min_group_size=2))
    monkeypatch.setitem(METHODS, "vzero-token", Method(("pos", "neg"), "pos", token_weights))
    steps = {}
    for name in ("vzero-fullref", "vzero-token"):
        cfg = train.parse_args(TINY + ["--method", name, "--max-steps", "1", "--out-dir", str(tmp_path / name)])
        (steps[name],) = train.train(cfg)
        assert torch.isfinite(torch.tensor(steps[name]["loss"])) and steps[name]["grad_norm"] > 0
    assert seen == [["plain", "pos"], ["neg", "pos"]]               # no view replayed for nothing
    assert "gate/weight_mean" in steps["vzero-fullref"] and "gate/token_weight_mean" in steps["vzero-token"]
    assert "diag/gate_auroc" in steps["vzero-token"]                # answer-level view of token weights


def test_a_variant_changes_the_update_only_through_its_weights(tmp_path, monkeypatch):
    # The same variant with weights of 1 trains exactly like opd: the step reads nothing else of it.
    monkeypatch.setitem(METHODS, "opd-copy", Method(("pos", "neg"), "pos", method.unit_weights))
    runs = {}
    for name in ("opd", "opd-copy"):
        cfg = train.parse_args(TINY + ["--method", name, "--max-steps", "2", "--out-dir", str(tmp_path / name)])
        runs[name] = [{k: v for k, v in m.items() if not k.startswith("time/") and "per_s" not in k
                       and k != "peak_mem_mb"} for m in train.train(cfg)]
    assert runs["opd"] == runs["opd-copy"]


@pytest.fixture(scope="module")
def checkpoint_with_knobs(tmp_path_factory):
    # A run trained with non-default gate knobs: its checkpoint carries train_config.json.
    out = tmp_path_factory.mktemp("run")
    cfg = train.parse_args(TINY + ["--max-steps", "1", "--gate-alpha", "1.0", "--gate-w-min", "0.5",
                                   "--gate-w-max", "1.75", "--out-dir", str(out)])
    train.train(cfg)
    return out / "ckpt-000001"


def diagnose(tmp_path, ckpt, *flags):
    out = tmp_path / "eval"
    ev.main(["--model", str(ckpt), "--bench", "zoom", "--data", "synthetic:3:1", "--out-dir", str(out),
             "--max-new-tokens", "6", "--batch-size", "2", "--gate-teacher", "tiny:qwen2_5_vl@1", *flags])
    gate = json.loads((out / "results.json").read_text())["gate"]
    rollouts = [json.loads(line) for line in open(out / "gate_rollouts.jsonl")]
    return gate, rollouts


def test_eval_diagnoses_with_the_checkpoints_gate_knobs(tmp_path, checkpoint_with_knobs):
    gate, rollouts = diagnose(tmp_path, checkpoint_with_knobs)
    assert gate["settings"]["gate_alpha"] == 1.0 and gate["settings"]["group_size"] == 3
    assert "train_config.json" in gate["settings_from"]
    assert len(rollouts) == 3 * 3
    # Eq. 20 with the run's knobs, w = clip(1 + 1.0 a, 0.5, 1.75): with the defaults (alpha 0.5, [0, 2])
    # these differ wherever a != 0.
    assert any(abs(r["a"]) > 0.1 for r in rollouts)
    for r in rollouts:
        assert r["w"] == pytest.approx(min(max(1 + 1.0 * r["a"], 0.5), 1.75), abs=1e-5)


def test_eval_flags_override_the_checkpoints_knobs_and_say_so(tmp_path, checkpoint_with_knobs):
    gate, rollouts = diagnose(tmp_path, checkpoint_with_knobs, "--gate-alpha", "0.25")
    assert gate["settings"]["gate_alpha"] == 0.25 and gate["settings"]["gate_w_min"] == 0.5
    assert "--gate-alpha 0.25" in gate["settings_from"]
    for r in rollouts:
        assert r["w"] == pytest.approx(min(max(1 + 0.25 * r["a"], 0.5), 1.75), abs=1e-5)
