"""plot.py on a short real run: one PNG of the metrics, the diagnostic panels only where the log has them.

    python -m pytest -q tests/test_plot.py
"""

from PIL import Image

import plot
import train
from test_train import TINY


def test_plot_of_a_short_run(tmp_path):
    train.train(train.parse_args(TINY + ["--max-steps", "3", "--out-dir", str(tmp_path)]))
    plot.main([str(tmp_path)])
    img = Image.open(tmp_path / "metrics.png")
    assert img.size == (4 * 340, 2 * 230) and len(img.getcolors(1 << 16)) > 20    # 2 rows of panels, lines drawn
    records = plot.read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == [1, 2, 3] and "diag/rollout_acc" in records[0]
    records[1]["diag/gate_auroc"] = 0.7        # the tiny model's rollouts may all be wrong: no AUROC then
    assert plot.plot_metrics(records, str(tmp_path / "all.png")) == list(plot.PANELS)
    # Without answers in the data there are no diagnostics: those panels are left out.
    stripped = [{k: v for k, v in r.items() if not k.startswith("diag/")} for r in records]
    drawn = plot.plot_metrics(stripped, str(tmp_path / "plain.png"))
    assert drawn == [p for p in plot.PANELS if "diagnostic" not in p]
    assert Image.open(tmp_path / "plain.png").size == (4 * 340, 2 * 230)
