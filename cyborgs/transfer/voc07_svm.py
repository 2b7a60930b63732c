"""VOC07 linear classification with per-class SVMs (VirTex protocol; METHOD.md §6).

Frozen features: res5, global-average-pooled, L2-normalised, from images resized to shorter side
256 and center-cropped to 224. One ``LinearSVC`` per class, its cost picked among
0.01/0.1/1/10 by 3-fold cross-validated AP, ``class_weight {1: 2, -1: 1}``; test AP per class
excluding that class's difficult images; mAP over classes. As in VirTex, an image whose only
instances of a class are difficult counts as a negative when training.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.svm import LinearSVC
from torch.utils.data import DataLoader

from cyborgs.transfer.image_data import ImageList, eval_transform
from cyborgs.utils.progress import Progress

logger = logging.getLogger(__name__)

COSTS = (0.01, 0.1, 1.0, 10.0)


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dicts: list[dict],
    resize: int,
    crop: int,
    batch_size: int = 64,
    num_workers: int = 2,
) -> np.ndarray:
    """[N, D] res5 GAP features, L2-normalised, in the order of ``dicts``."""
    model.eval()
    loader = DataLoader(
        ImageList(dicts, eval_transform(resize, crop)),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    device = next(model.parameters()).device
    out = []
    progress = Progress(len(dicts), "VOC07 SVM: extracting res5 features", logger)
    for images, _ in loader:
        f = model(images.to(device))["res5"].mean(dim=(2, 3))
        if not torch.isfinite(f).all():
            raise FloatingPointError("non-finite res5 features: are the backbone weights sane?")
        out.append(torch.nn.functional.normalize(f, dim=1).cpu())
        progress.update(len(images))
    progress.close()
    return torch.cat(out).numpy()


def train_test_class(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    keep_test: np.ndarray,
    costs=COSTS,
    folds: int = 3,
) -> tuple[float, float]:
    """(test AP, chosen cost) for one class; y in {0, 1}; ``keep_test`` drops difficult.

    The cost is chosen as VirTex's scripts/clf_voc07.py does: ``cross_val_score(..., cv=3,
    scoring="average_precision")``, i.e. sklearn's unshuffled ``StratifiedKFold(3)`` (contiguous
    folds in image order, deterministic, so no seed); fewer folds only when a class has fewer
    than 3 positives (or negatives).
    """
    y = np.where(y_train > 0, 1, -1)
    n_pos, n_neg = int((y == 1).sum()), int((y == -1).sum())
    if n_pos == 0 or y_test[keep_test].sum() == 0:
        return float("nan"), float("nan")
    k = min(folds, n_pos, n_neg)
    best_ap, best_cost = -1.0, costs[0]
    for cost in costs:
        clf = LinearSVC(
            C=cost, class_weight={1: 2, -1: 1}, loss="squared_hinge", penalty="l2", max_iter=2000
        )
        if k >= 2:
            cv = StratifiedKFold(n_splits=k)  # unshuffled, as cross_val_score(cv=3) builds
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                ap = cross_val_score(clf, x_train, y, cv=cv, scoring="average_precision").mean()
        else:  # too few samples of one side to cross-validate: keep the first cost
            ap = 0.0
        if ap > best_ap:
            best_ap, best_cost = ap, cost
    clf = LinearSVC(C=best_cost, class_weight={1: 2, -1: 1}, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x_train, y)
    scores = clf.decision_function(x_test[keep_test])
    return float(average_precision_score(y_test[keep_test] > 0, scores)), best_cost


def voc07_svm_map(
    x_train: np.ndarray,
    labels_train: np.ndarray,
    x_test: np.ndarray,
    labels_test: np.ndarray,
    difficult_test: np.ndarray,
    class_names: list[str],
    costs=COSTS,
) -> dict[str, float]:
    """{"mAP": ..., "AP-<class>": ...} in percent; classes without positives are skipped."""
    res: dict[str, float] = {}
    aps = []
    progress = Progress(len(class_names), "VOC07 SVM: per-class SVMs", logger, unit="classes")
    for c, name in enumerate(class_names):
        progress.update()
        ap, cost = train_test_class(
            x_train,
            labels_train[:, c],
            x_test,
            labels_test[:, c],
            difficult_test[:, c] == 0,
            costs,
        )
        if np.isnan(ap):
            logger.warning("class %s has no positives in train or test; skipped", name)
            continue
        res[f"AP-{name}"] = 100 * ap
        res[f"cost-{name}"] = cost
        aps.append(ap)
    progress.close()
    if not aps:
        raise ValueError("no class has positives in both train and test sets")
    res["mAP"] = 100 * float(np.mean(aps))
    return res
