"""Run-dir records across relaunches: config history with diffs, and metrics/TensorBoard rows of
re-run steps dropped on resume (fairjax.io.run_dir)."""
import json

from ml_collections import ConfigDict

from fairjax.io import run_dir as rd


def test_every_launch_keeps_its_config_and_diff(tmp_path):
    cfg = ConfigDict({"optim": {"lr": 1e-3, "batch_size": 8}, "seed": 0})
    rd.save_config(cfg, tmp_path)
    cfg.optim.lr = 5e-4
    rd.save_config(cfg, tmp_path)
    rd.save_config(cfg, tmp_path)
    hist = tmp_path / rd.CONFIG_HISTORY
    assert sorted(p.name for p in hist.iterdir()) == ["0.json", "1.diff.json", "1.json",
                                                      "2.diff.json", "2.json"]
    assert json.loads((hist / "0.json").read_text())["optim"]["lr"] == 1e-3
    assert json.loads((hist / "1.diff.json").read_text()) == {"optim.lr": [1e-3, 5e-4]}
    assert json.loads((hist / "2.diff.json").read_text()) == {}
    assert json.loads((tmp_path / rd.CONFIG_JSON).read_text())["optim"]["lr"] == 5e-4


def test_prune_metrics_drops_rows_after_the_resume_step(tmp_path):
    from tensorboardX import SummaryWriter

    rows = [{"step": s, "split": "train", "loss": float(s)} for s in range(1, 6)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 6, "spl'  # cut by a crash
    (tmp_path / rd.METRICS_FILE).write_text(text)
    w = SummaryWriter(str(tmp_path / rd.TB_DIR))
    for s in range(1, 6):
        w.add_scalar("train/loss", float(s), s)
    w.close()
    assert rd.prune_metrics(tmp_path, 3) == 3 + 2
    kept = [json.loads(line) for line in (tmp_path / rd.METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 2, 3]
    w = SummaryWriter(str(tmp_path / rd.TB_DIR))  # the resumed run logs 4, 5 again
    for s in (4, 5):
        w.add_scalar("train/loss", float(s), s)
    w.close()
    steps = [s for tag, s, _, _ in rd.read_tb_scalars(tmp_path / rd.TB_DIR)]
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert rd.prune_metrics(tmp_path, 5) == 0
