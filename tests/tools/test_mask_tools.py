"""tools/bootstrap_masks.py (offline round) and tools/visualize_masks.py (Fig. 4 panels)."""

from __future__ import annotations

from pathlib import Path

import bootstrap_masks  # tools/ (tests/conftest.py)
import numpy as np
import visualize_masks
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

CONFIG = str(ROOT / "pretrain_configs" / "demo_R18.yaml")


def _opts(out: Path) -> list[str]:
    return [
        "OUTPUT_DIR", str(out),
        "CYBORGS.PROJECTOR_HIDDEN_DIM", "32",
        "CYBORGS.PROJECTOR_OUT_DIM", "16",
        "CYBORGS.BOOTSTRAP.INPUT_SIZE", "64",
        "CYBORGS.BOOTSTRAP.K_MIN", "2",
        "CYBORGS.BOOTSTRAP.K_MAX", "6",
        "CYBORGS.BOOTSTRAP.KMEANS_ITERS", "3",
        "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip


def test_offline_round_writes_a_complete_current_round_with_quality(tiny_data_root, tmp_path):
    from detectron2.data import DatasetCatalog

    from cyborgs.masks.store import MaskStore

    name = "demo_coco_2017_train_unlabeled"
    out = bootstrap_masks.main(
        ["--config-file", CONFIG, "--round", "7", "--dataset", name, *_opts(tmp_path)]
    )
    stats = out[name]
    store = MaskStore(stats["store"])
    assert store.current_round() == 7 and store.is_complete(7)
    dicts = DatasetCatalog.get(name)
    man = store.manifest(7)
    assert man["num_images"] == len(dicts)
    # the settings of the config, recorded as the in-training hook records them
    assert man["settings"]["k_max"] == 6 and man["settings"]["kmeans_iters"] == 3
    maps = [store.read(d["image_id"]) for d in dicts]
    assert all(m.dtype == np.uint8 and m.max() < 6 for m in maps)
    assert 0.0 <= stats["quality"]["miou"] <= 1.0  # the demo set has a labeled twin


def test_visualize_writes_three_panels_per_image(tiny_data_root, tmp_path):
    from detectron2.data import DatasetCatalog

    import cyborgs.data.datasets  # noqa: F401

    image = DatasetCatalog.get("demo_coco_2017_train_unlabeled")[0]["file_name"]
    written = visualize_masks.main(
        ["--config-file", CONFIG, "--input", image, "--output", str(tmp_path / "vis"), "--k", "3",
         *_opts(tmp_path)]
    )  # fmt: skip
    assert len(written) == 1
    panel = np.asarray(Image.open(written[0]))
    h, w = panel.shape[:2]
    assert panel.ndim == 3 and w >= 3 * h * 0.5  # image | k-means | CRF side by side


def _refused(argv: list[str], capsys) -> str:
    """bootstrap_masks must exit 2 with one ``error:`` line on stderr (returned)."""
    try:
        bootstrap_masks.main(argv)
        rc = 0
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_negative_round_is_refused_in_one_line(tiny_data_root, tmp_path, capsys):
    line = _refused(["--config-file", CONFIG, "--round", "-1", *_opts(tmp_path / "o")], capsys)
    assert "--round -1" in line and "0 or more" in line
    assert not (tmp_path / "o").exists()


def test_python_tag_in_the_config_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "marker"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f'SEED: !!python/object/apply:builtins.open ["{marker}", "w"]\n_BASE_: {CONFIG}\n'
    )
    line = _refused(["--config-file", str(cfg), *_opts(tmp_path / "o")], capsys)
    assert line.startswith(f"error: {cfg}: line 1, column 7: tag !!python/object/apply:")
    assert not marker.exists() and not (tmp_path / "o").exists()


def _refused_after_logs(argv: list[str], capsys) -> str:
    """As :func:`_refused` for requests refused after the config loaded: the tool's log lines
    (and, in a long session, a closed handler's "Logging error" noise) may come first; exactly
    one ``error:`` line, the last one."""
    try:
        bootstrap_masks.main(argv)
        rc = 0
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    errors = [x for x in err if x.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and err[-1] == errors[0], err[-5:]
    return errors[0]


def test_unusable_requests_are_one_line_and_delete_nothing(tiny_data_root, tmp_path, capsys):
    """A missing or non-checkpoint --weights, an unknown --dataset and a round folder holding a
    user's file: one ``error:`` line and exit 2 each (they were tracebacks), the file kept."""
    out = tmp_path / "o"
    line = _refused_after_logs(
        ["--config-file", CONFIG, "--weights", str(tmp_path / "nope.pth"), *_opts(out)], capsys
    )
    assert line == f"error: --weights {tmp_path / 'nope.pth'} does not exist"
    text = tmp_path / "notes.pth"
    text.write_text("not weights\n")
    line = _refused_after_logs(
        ["--config-file", CONFIG, "--weights", str(text), *_opts(out)], capsys
    )
    assert str(text) in line and "not a checkpoint" in line
    line = _refused_after_logs(
        ["--config-file", CONFIG, "--dataset", "no_such_set", *_opts(out)], capsys
    )
    assert "'no_such_set' not registered" in line
    name = "demo_coco_2017_train_unlabeled"
    mine = out / "masks" / "bootstrap" / name / "round_0003" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("mine\n")
    line = _refused_after_logs(
        ["--config-file", CONFIG, "--round", "3", "--dataset", name, *_opts(out)], capsys
    )
    assert str(mine.parent) in line and "notes.txt" in line and "nothing was deleted" in line
    assert mine.read_text() == "mine\n"
