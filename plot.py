"""
Look at a run: its metrics.jsonl as one PNG of small charts against the step.

    python plot.py out/vzero                    # -> out/vzero/metrics.png
    python plot.py out/vzero --out run.png

Panels: the loss; the teacher KL estimate (Eq. 5, k1); the spread of the gate weights (Eq. 20:
mean, std, min, max); answer length (mean, max); with answer-carrying data the rollouts' accuracy
and the gate weight's AUROC as a detector of correct answers (diagnostics only); seconds per
phase. Pillow only (matplotlib is not a dependency); `panel` also draws toy.py's result plot.
"""

import argparse
import json
import math
import os
import sys

from PIL import Image, ImageDraw

COLOURS = [(30, 110, 220), (230, 120, 20), (40, 160, 60), (200, 40, 40), (130, 80, 180), (120, 120, 120)]
# panel title -> [(metric key, label)]; a panel whose keys no line of the log holds is left out
PANELS = {
    "loss": [("loss", "loss")],
    "teacher KL (k1 estimate)": [("kl/k1_mean", "k1")],
    "gate weight w (Eq. 20)": [("gate/weight_mean", "mean"), ("gate/weight_std", "std"),
                               ("gate/weight_min", "min"), ("gate/weight_max", "max")],
    "answer length (tokens)": [("rollout/len_mean", "mean"), ("rollout/len_max", "max")],
    "rollout accuracy (diagnostic)": [("diag/rollout_acc", "accuracy")],
    "gate AUROC vs correctness (diagnostic)": [("diag/gate_auroc", "AUROC")],
    "seconds per phase": [("time/rollout", "rollout"), ("time/teacher", "teacher"), ("time/update", "update"),
                          ("time/data_wait", "data wait")],
}


def panel(draw, box, xs, lines, title, *, bands=None, hline=None, y_format="{:.3g}"):
    """One line chart inside box = (x0, y0, x1, y1). lines: {label: ([y per x, None = missing],
    colour)}; bands: {label: [(low, high) per x]} drawn as vertical bars (e.g. +- sd over seeds);
    hline: (label, y) a horizontal reference line. Axes are scaled to the data."""
    x0, y0, x1, y1 = box
    left, bottom, top, right = x0 + 52, y1 - 22, y0 + 18, x1 - 8
    values = [y for ys, _ in lines.values() for y in ys if y is not None]
    values += [v for b in (bands or {}).values() for pair in b if pair for v in pair] + ([hline[1]] if hline else [])
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad
    X = lambda x: left + (right - left) * (x - xs[0]) / max(xs[-1] - xs[0], 1e-9)
    Y = lambda y: top + (bottom - top) * (hi - y) / (hi - lo)
    draw.text((x0 + 4, y0 + 2), title, fill=(0, 0, 0))
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    for k in range(5):                                            # 5 y ticks
        y = lo + (hi - lo) * k / 4
        draw.line((left, Y(y), right, Y(y)), fill=(232, 232, 232))
        draw.text((x0 + 2, Y(y) - 6), y_format.format(y), fill=(0, 0, 0))
    ticks = sorted({xs[0], xs[-1], *xs[:: max(1, len(xs) // 6)]})
    for x in ticks:                                               # a few x ticks
        draw.text((X(x) - 6, bottom + 4), str(x), fill=(0, 0, 0))
    if hline:
        draw.line((left, Y(hline[1]), right, Y(hline[1])), fill=(0, 0, 0))
        draw.text((right - 6 * len(hline[0]) - 4, Y(hline[1]) - 14), hline[0], fill=(0, 0, 0))
    for i, (label, (ys, colour)) in enumerate(lines.items()):
        for x, pair in zip(xs, (bands or {}).get(label, [])):
            if pair:
                draw.line((X(x), Y(pair[0]), X(x), Y(pair[1])), fill=colour)
        points = [(X(x), Y(y)) for x, y in zip(xs, ys) if y is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points if len(points) < 30 else []:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        if len(lines) > 1:
            draw.text((left + 6 + 70 * i, top + 3), label, fill=colour)


def plot_metrics(records, path, columns=4, size=(340, 230)):
    """metrics.jsonl records -> one PNG; returns the panels drawn."""
    if not records:
        raise ValueError("no metrics to plot: the run has not finished a step")
    steps = [r["step"] for r in records]
    panels = {title: keys for title, keys in PANELS.items() if any(r.get(k) is not None for k, _ in keys for r in records)}
    rows = math.ceil(len(panels) / columns)
    img = Image.new("RGB", (size[0] * min(columns, len(panels)), size[1] * rows), "white")
    draw = ImageDraw.Draw(img)
    for i, (title, keys) in enumerate(panels.items()):
        x, y = size[0] * (i % columns), size[1] * (i // columns)
        lines = {label: ([r.get(key) for r in records], COLOURS[j]) for j, (key, label) in enumerate(keys)}
        panel(draw, (x, y, x + size[0], y + size[1]), steps, lines, title)
    img.save(path)
    return list(panels)


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a train.py --out-dir holding metrics.jsonl")
    ap.add_argument("--out", help="PNG path (default: RUN_DIR/metrics.png)")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(args.run_dir, "metrics.png")
    panels = plot_metrics(read_metrics(args.run_dir), out)
    print(f"{out}: {', '.join(panels)}")


if __name__ == "__main__":
    main(sys.argv[1:])
