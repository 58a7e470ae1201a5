"""CI, after the tests: run the no-argument demo (`python train.py`) from this clean checkout, which
builds the toy models from scratch, and fail if the base or the V-Zero student's held-out accuracy
it prints differs from the numbers the README states by more than 2 points.

    python .ci/check_demo.py
The README states them in a marker beside its prose: <!-- demo: base B vzero V --> (percent)
"""

import os
import re
import subprocess
import sys

TOLERANCE = 2.0   # points: the same code on another CPU kind can round differently along 20 steps

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
stated = re.search(r"<!-- demo: base ([\d.]+) vzero ([\d.]+) -->", open(os.path.join(root, "README.md")).read())
if not stated:
    sys.exit("README.md has no '<!-- demo: base X vzero Y -->' marker: nothing to check the demo against")
run = subprocess.run([sys.executable, "train.py"], cwd=root, capture_output=True, text=True)
print(run.stdout[-3000:])
if run.returncode:
    sys.exit(f"the demo failed:\n{run.stderr[-3000:]}")
printed = {name: float(re.search(rf"{re.escape(name)}\s+([\d.]+)%", run.stdout).group(1))
           for name in ("base student (x)", "V-Zero student (x)")}
for name, want in zip(printed, map(float, stated.groups())):
    got = printed[name]
    status = "ok" if abs(got - want) <= TOLERANCE else "DIFFERS"
    print(f"{name}: printed {got:.1f}%, README {want:.1f}%: {status}")
    if status != "ok":
        sys.exit(f"the demo's {name} accuracy {got:.1f}% is more than {TOLERANCE} points from the README's {want:.1f}%")
