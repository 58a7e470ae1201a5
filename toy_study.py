"""
When does the evidence gate help? The toy study of the paper's central claim (issue 23), on the
zoom world's toy models (toy.py), with its grid PRE-REGISTERED (not to be tuned after the results):

    python toy_study.py                 # the whole grid, finished runs reused -> out/toy/study/
                                        # (1 h 34 min on 2 cores; results: docs/toy.md)
    python toy_study.py --seeds 0       # a smaller run (not the registered study)

- Conditions (toy.Condition): the supervised answer format {one word, a sentence, two sentences}
  x the fraction of distillation prompts whose z+ box misses the target {0, 0.3}.
- Arms (toy.STUDY_ARMS): OPD (weights 1, teacher on (x, z+)); V-Zero with the release's alpha 0.5;
  V-Zero with the paper's alpha 1; V-Zero with --gate-w-min 1 (weights never below 1).
- Seeds 0, 1, 2, paired across arms (the same seed draws the same first rollouts in every arm).
Every other setting is toy.py's (DISTILL; the answer format's max new tokens).

It writes out/toy/study/results.md (the tables), results.json (every number, per seed) and
accuracy_<condition>.png (held-out accuracy vs step per arm). The token-level diagnostics are the
runs' logged diag/* metrics (diagnostics.py), averaged over steps, then over seeds.
Tests: python -m pytest -q tests/test_toy.py -k study
"""

import argparse
import json
import math
import os
import statistics
import sys

import toy

GRID = tuple(toy.Condition(answer_format, missed) for answer_format in toy.FORMATS for missed in (0.0, 0.3))
SEEDS = (0, 1, 2)
OUT = os.path.join("out", "toy", "study")
BASELINE = "opd"


def run_condition(cond, seeds, out):
    """Every arm x seed of one condition (finished runs reused) -> {"models", "runs"}; a run is
    {"seed", "curve" {step: acc}, "final", "diag" {diag/* key: mean over the steps that logged it}}."""
    heldout = toy.heldout_split(cond)
    models = toy.check_models(heldout, cond)
    runs = {}
    for arm in toy.STUDY_ARMS:
        runs[arm] = []
        for seed in seeds:
            curve, _ = toy.run_arm(arm, seed, heldout, os.path.join(out, cond.name), cond)
            with open(os.path.join(out, cond.name, f"{arm}-s{seed}", "metrics.jsonl")) as f:
                metrics = [json.loads(line) for line in f]
            keys = sorted({k for m in metrics for k in m if k.startswith("diag/")})
            diag = {k: mean([m[k] for m in metrics if m.get(k) is not None]) for k in keys}
            runs[arm].append({"seed": seed, "curve": curve, "final": curve[max(curve)], "diag": diag})
    return {"models": models, "runs": runs}


def mean(values):
    return statistics.mean(values) if values else None


def paired(diffs):
    """(mean, sd, t) of paired differences: t = mean / (sd / sqrt(n)), sd with n - 1 (a paired
    t-statistic, n - 1 degrees of freedom). sd and t are None below 2 seeds, t also when sd is 0."""
    if len(diffs) < 2:
        return statistics.mean(diffs), None, None
    sd = statistics.stdev(diffs)
    return statistics.mean(diffs), sd, (statistics.mean(diffs) / (sd / math.sqrt(len(diffs))) if sd > 0 else None)


def fmt(value, spec="{:.2f}"):
    return "-" if value is None else spec.format(value)


def tables(study, seeds):
    """The markdown of results.md: accuracy, paired differences against OPD, the diagnostics."""
    arms = list(toy.STUDY_ARMS)
    lines = [f"Held-out accuracy % (greedy, {toy.N_HELDOUT} questions, seed {toy.HELDOUT_SEED}), seeds "
             f"{list(seeds)}: mean +- sd (n - 1), per seed in brackets.", "",
             "| condition | base | " + " | ".join(arms) + " |", "|---" * (len(arms) + 2) + "|"]
    for name, c in study.items():
        cells = []
        for arm in arms:
            finals = [100 * r["final"] for r in c["runs"][arm]]
            sd = statistics.stdev(finals) if len(finals) > 1 else None
            cells.append(f"{statistics.mean(finals):.1f} +- {fmt(sd, '{:.1f}')} ("
                         + ", ".join(f"{v:.1f}" for v in finals) + ")")
        lines.append(f"| {name} | {100 * c['models']['base student (x)']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences against {BASELINE} (points, same seed): per seed, mean, sd, and the "
              f"paired t-statistic (df = {len(seeds) - 1}).", "",
              "| condition | arm | per seed | mean | sd | t |", "|---|---|---|---|---|---|"]
    for name, c in study.items():
        for arm in arms:
            if arm == BASELINE:
                continue
            diffs = [100 * (r["final"] - o["final"]) for r, o in zip(c["runs"][arm], c["runs"][BASELINE])]
            m, sd, t = paired(diffs)
            lines.append(f"| {name} | {arm} | " + ", ".join(f"{d:+.1f}" for d in diffs)
                         + f" | {m:+.1f} | {fmt(sd, '{:.1f}')} | {fmt(t)} |")
    # The token-level diagnostics: means over steps, then seeds (diagnostics.py defines each).
    columns = [("w right", "diag/weight_right"), ("w wrong", "diag/weight_wrong"),
               ("signal right", "diag/signal_share/right"), ("signal wrong", "diag/signal_share/wrong"),
               ("lead-in", "diag/signal_share/lead_in"), ("decisive", "diag/signal_share/decisive"),
               ("follow-up", "diag/signal_share/follow_up"), ("no symbol", "diag/signal_share/no_choice"),
               ("signal / OPD's", "diag/signal_vs_opd"), ("AUROC", "diag/gate_auroc"),
               ("rollout acc", "diag/rollout_acc")]
    lines += ["", "Token-level diagnostics (each a mean over steps, then seeds): mean gate weight of right / "
              "wrong rollouts; the share of the loss signal |A_k| = w |clamp(d_k)| on right / wrong "
              "rollouts and on their lead-in / decisive / follow-up tokens (or rollouts naming no symbol); "
              "that signal over OPD's (w = 1) on the same tokens; the gate's AUROC for right answers.", "",
              "| condition | arm | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, c in study.items():
        for arm in arms:
            values = [mean([r["diag"][k] for r in c["runs"][arm] if r["diag"].get(k) is not None]) for _, k in columns]
            lines.append(f"| {name} | {arm} | " + " | ".join(fmt(v) for v in values) + " |")
    delta = [f"diag/delta_{g}/{s}" for g in ("missed", "hit") for s in ("mean", "p10", "p50", "p90")]
    delta += ["diag/weight_sd_missed", "diag/weight_sd_hit", "diag/gate_auroc_missed", "diag/gate_auroc_hit"]
    lines += ["", "Prompts whose z+ box misses the target vs the others: the trajectory score p (Eq. 18, mean "
              "Delta) of their rollouts (mean, 10th / 50th / 90th percentile of each step, averaged), the sd of "
              "the gate weights, the AUROC.", "",
              "| condition | arm | " + " | ".join(k[5:] for k in delta) + " |", "|---" * (len(delta) + 2) + "|"]
    for name, c in study.items():
        for arm in arms:
            values = [mean([r["diag"][k] for r in c["runs"][arm] if r["diag"].get(k) is not None]) for k in delta]
            if any(v is not None for v in values):
                lines.append(f"| {name} | {arm} | " + " | ".join(fmt(v, "{:.3f}") for v in values) + " |")
    return lines


def study(seeds=SEEDS, out=OUT, grid=GRID):
    """Run (or reuse) the grid and write results.md, results.json and one plot per condition."""
    results = {cond.name: run_condition(cond, seeds, out) for cond in grid}
    lines = tables(results, seeds)
    print("\n".join(lines))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"seeds": list(seeds), "arms": toy.STUDY_ARMS, "conditions": results}, f, indent=1)
    for name, c in results.items():
        toy.plot({arm: [r["curve"] for r in runs] for arm, runs in c["runs"].items()}, c["models"]["base student (x)"],
                 os.path.join(out, f"accuracy_{name}.png"),
                 title=f"{name}: held-out accuracy (greedy), mean and +-sd over seeds, by step")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    study(tuple(args.seeds), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
