"""
The settings of a run: every knob of train.py with its help text, its valid range and whether it
may change when the run is resumed, and the command line made from them. Light on purpose (no
torch): `python train.py --help` answers from here at once.

    cfg = parse_args(["--student", "tiny:qwen2_5_vl", "--teacher", "tiny:qwen2_5_vl@1"])
    FREE       # the names of the settings a resume may change (limits, intervals, memory budgets)
"""

import argparse
import dataclasses
from dataclasses import dataclass, field

import data      # light (PIL, numpy): the choices of the view modes


def arg(default, help, *, free=False, min=None, above=None, max=None, **cli):
    # A Config field: its help text, whether it may change when a run is resumed (free: limits,
    # intervals, memory budgets; the others define the run), its valid range, argparse extras.
    return field(default=default, metadata=dict(help=help, free=free, min=min, above=above, max=max, cli=cli))


@dataclass
class Config:
    # models and data
    student: str = arg("", "student: hub id, local dir, or tiny offline model (tiny:qwen2_5_vl)")
    teacher: str = arg("", "frozen teacher, same tokenizer as the student (paper: Qwen3.5-27B for a 4B)")
    train_data: str = arg("synthetic:2048:0", "*.jsonl, the authors' *.parquet, or synthetic:N:SEED")
    out_dir: str = arg("out/vzero", "metrics.jsonl and checkpoints go here", free=True)
    # the method
    method: str = arg("vzero", "vzero: gated OPD (the paper); opd: weights 1, teacher sees (x, z+); opd-plain: "
                      "weights 1, teacher sees x only (the paper's no-gate ablation is ambiguous); vzero-random: z+ "
                      "cut at a random place (the paper's harmful ablation). Each is defined once, in method.py")
    neg_view: str = arg("paper", "z-: paper = same-size crop away from the box in the 2x-downsampled "
                        "image; downsample = the release's alternative", choices=data.NEG_MODES)
    crop_margin: float = arg(0.0, "z+ margin, a fraction of the box size on each side", min=0)
    crop_min_side: int = arg(32, "z+ is grown to at least this many pixels per side", min=1)
    gate_alpha: float = arg(0.5, "w = clip(1 + alpha * a) (Eq. 20); the release uses 0.5, the paper prints 1", min=0)
    gate_gamma: float = arg(1.0, "token score relu(D) - gamma relu(-D); 1 = Eq. 18 (release knob)", min=0)
    gate_w_min: float = arg(0.0, "lower clip of the gate weight (Eq. 20)", min=0)
    gate_w_max: float = arg(2.0, "upper clip of the gate weight (Eq. 20)", min=0)
    estimator: str = arg("k1", "k1 in PPO-clip form (release) or k3", choices=("k1", "k3"))
    agg: str = arg("token-mean", "token-mean over the global mini-batch (release) or seq-mean-token-mean "
                   "(the paper's Eq. 24)", choices=("token-mean", "seq-mean-token-mean"))
    clip_eps: float = arg(0.2, "PPO ratio clip", above=0, max=0.999)
    dual_clip: float = arg(3.0, "PPO dual clip for negative advantages", above=1)
    kl_clamp: float = arg(10.0, "clamp of the per-token KL estimate d_k (Eq. 23)", above=0)
    # optimisation (docs/method.md sec. 6)
    lr: float = arg(1e-6, "AdamW learning rate, constant", above=0, free=True)
    weight_decay: float = arg(0.01, "AdamW weight decay", min=0, free=True)
    grad_clip: float = arg(1.0, "gradient-norm clip", above=0, free=True)
    prompts_per_step: int = arg(32, "prompts per step over ALL ranks", min=1)
    group_size: int = arg(8, "G sibling responses per prompt", min=1)
    mini_batches: int = arg(2, "optimizer steps per rollout batch (the release: 2)", min=1)
    # Memory bounds, in token positions a forward holds (rows x (prompt + answer) columns, G x (P + T)
    # for a group). Each prompt is encoded once per phase (prefix.py). The defaults fit an 80 GB GPU at
    # the paper's settings (4B student, 27B teacher, 8 GPUs, 16k-token prompts, T <= 2048, G = 8):
    # README, "Memory plan".
    rollout_tokens: int = arg(1 << 20, "sampling: prompts per generate call, G x (prompt + max new tokens) "
                              "cache positions each; the paper's 4 prompts per rank: 590k positions, 21 GB of "
                              "Qwen3.5-4B cache", min=1, free=True)
    score_tokens: int = arg(1 << 19, "no-grad scoring (old log-probs, teacher views): rows x (prompt + answer) "
                            "positions per forward; one paper example's two views: 16 x 16.9k = 270k positions, "
                            "18 GB of 27B keys/values + up to 16 GB of logits", min=1, free=True)
    update_tokens: int = arg(1 << 18, "student update: whole groups per forward/backward; one paper group (147k "
                             "positions) holds ~29 GB with --grad-checkpointing; a larger group is split by answers, "
                             "its prompt encoded once per part", min=1, free=True)
    max_new_tokens: int = arg(2048, "max response length", min=1)
    temperature: float = arg(1.0, "sampling temperature", above=0)
    top_p: float = arg(1.0, "nucleus sampling", above=0, max=1)
    per_prompt_seeds: bool = arg(False, "sample each prompt with its own seed: identical samples on any "
                                 "number of ranks (slower: one generate call per prompt)")
    max_steps: int = arg(60, "steps (the paper reports step 60)", min=1, free=True)
    save_every: int = arg(10, "checkpoint every N steps (and at the end)", min=1, free=True)
    keep_last: int = arg(3, "keep the N newest checkpoints, delete older ones (0: keep all)", min=0, free=True)
    resume: str = arg("no", "continue from the latest checkpoint in out_dir: --resume (one must exist) or --resume "
                      "auto (resume if one exists, else start: for restart loops). The settings that define the run "
                      "must match the saved ones; limits, intervals and memory budgets may change",
                      choices=("no", "yes", "auto"), nargs="?", const="yes", free=True)
    overwrite: bool = arg(False, "start afresh in an out_dir that holds a run: its checkpoints and metrics are deleted",
                          free=True)
    skip_bad_images: bool = arg(False, "an image that fails to decode mid-run (a complete file with broken pixels) is "
                                "replaced by another prompt of its batch and counted (data/bad_images), not fatal",
                                free=True)
    seed: int = arg(0, "base seed; rank r uses seed + r", min=0)
    preflight: bool = arg(False, "run the worst step of this run once (largest image, longest question, every "
                          "answer --max-new-tokens long) and print each phase's seconds, peak memory and headroom, "
                          "and the run's projected wall time; writes nothing. The first command of a real run",
                          free=True)
    # systems
    fsdp: bool = arg(False, "shard the student with FSDP2 (default: DDP replicas; no-op on one process). Sampling "
                     "and the update gather it whole on each GPU once per phase (bf16: 9 GB for 4.5B parameters)",
                     free=True)
    shard_teacher: bool = arg(False, "shard the teacher with FSDP2 (a 27B teacher does not fit replicated; "
                              "no-op on one process)", free=True)
    dtype: str = arg("auto", "compute dtype of both models: auto = bf16 on CUDA, fp32 on CPU. The student's "
                     "master weights and optimizer state are fp32 either way", choices=("auto", "bf16", "fp32"))
    min_pixels: int | None = arg(None, "images are resized to at least this many pixels (the release: 65536 = 256^2; "
                          "default: the processor's own)", type=int, min=1)
    max_pixels: int | None = arg(None, "... and at most this many (the release: 16777216 = 4096^2, ~16k visual tokens)",
                          type=int, min=1)
    grad_checkpointing: bool = arg(False, "recompute each layer's activations in backward: needed at the paper's "
                                   "scale (a 16k-token group holds ~120 GB of 4B activations without it)", free=True)
    attn_implementation: str = arg("sdpa", "attention kernel: sdpa, eager, flash_attention_2", free=True)


def parse_args(argv=None, description=None):
    # The command line is generated from the Config fields: --gate-alpha 1.0, --fsdp / --no-fsdp.
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        kw = dict(default=f.default, help=f"{f.metadata['help']} (default: {f.default})", **f.metadata["cli"])
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw.setdefault("type", type(f.default))
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)
    return Config(**vars(parser.parse_args(argv)))


FREE = {f.name for f in dataclasses.fields(Config) if f.metadata["free"]}   # may change when resuming

# Settings that no longer exist: name -> (the saved value that means what the code does today, what
# replaced the other values). A saved run that set one otherwise is refused on resume, naming the
# replacement, instead of silently continuing as another method.
RETIRED = {"pos_view": ("box", "--method vzero-random replaced --pos-view random")}
