"""VOC07 SVM cost selection matches VirTex's scripts/clf_voc07.py (METHOD.md §6).

VirTex picks each class's cost with ``cross_val_score(clf, X, y, cv=3,
scoring="average_precision")``; for a classifier and binary y, sklearn resolves ``cv=3`` through
``check_cv`` to an unshuffled StratifiedKFold(3). The reference below is that script's loop run
by hand, not our implementation restated.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import average_precision_score
from sklearn.model_selection import StratifiedKFold, check_cv, cross_val_score
from sklearn.svm import LinearSVC

import cyborgs.transfer.voc07_svm as voc07_svm
from cyborgs.transfer.voc07_svm import train_test_class

VIRTEX_COSTS = [0.01, 0.1, 1.0, 10.0]


def noisy_class(seed: int, n: int = 60, dim: int = 8):
    """Weakly separable binary labels (so the cost choice depends on the folds)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dim))
    x[:, 0] += np.where(y == 1, 0.7, -0.7)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def virtex_choice(x, y01, x_test, y_test01, cv=3):
    """scripts/clf_voc07.py's train_test_single_svm, by hand: (best cost, test AP)."""
    labels = np.where(y01 == 0, -1, 1)
    best_ap, best_clf, best_cost = 0.0, None, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for cost in VIRTEX_COSTS:
            clf = LinearSVC(C=cost, class_weight={1: 2, -1: 1}, penalty="l2",
                            loss="squared_hinge", max_iter=2000)  # fmt: skip
            ap = cross_val_score(clf, x, labels, cv=cv, scoring="average_precision")
            clf.fit(x, labels)
            if ap.mean() > best_ap:
                best_ap, best_clf, best_cost = ap.mean(), clf, cost
    return best_cost, average_precision_score(y_test01 > 0, best_clf.decision_function(x_test))


def test_folds_are_sklearn_cv3_unshuffled(monkeypatch):
    x, y = noisy_class(1)
    x_te, y_te = noisy_class(101)
    seen = []
    real = voc07_svm.cross_val_score

    def spy(clf, X, yy, cv, **kw):
        seen.append([te.tolist() for _, te in cv.split(X, yy)])
        return real(clf, X, yy, cv=cv, **kw)

    monkeypatch.setattr(voc07_svm, "cross_val_score", spy)
    train_test_class(x, y, x_te, y_te, np.ones(len(y_te), bool))
    labels = np.where(y > 0, 1, -1)
    # what cross_val_score(..., cv=3) uses for a classifier on binary labels
    reference = [te.tolist() for _, te in check_cv(3, labels, classifier=True).split(x, labels)]
    assert len(seen) == len(VIRTEX_COSTS)
    assert all(folds == reference for folds in seen)


def test_chosen_cost_and_ap_match_virtex_clf_voc07():
    keep = None
    differs_from_shuffled = False
    for seed in range(1, 6):
        x, y = noisy_class(seed)
        x_te, y_te = noisy_class(100 + seed)
        keep = np.ones(len(y_te), bool)
        ap, cost = train_test_class(x, y, x_te, y_te, keep)
        ref_cost, ref_ap = virtex_choice(x, y, x_te, y_te)
        assert cost == ref_cost, seed
        assert np.isclose(ap, ref_ap), seed
        shuffled = StratifiedKFold(3, shuffle=True, random_state=0)
        differs_from_shuffled |= virtex_choice(x, y, x_te, y_te, cv=shuffled)[0] != ref_cost
    # the data are such that the fold assignment matters (the test can tell the two apart)
    assert differs_from_shuffled
