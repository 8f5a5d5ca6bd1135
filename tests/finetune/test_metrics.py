"""Downstream metrics against scikit-learn, scipy.stats and seqeval on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest

from bertcli.finetune import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")
seqeval = pytest.importorskip("seqeval.metrics")


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, classes = int(rng.integers(5, 200)), int(rng.integers(2, 5))
    y, p = rng.integers(0, classes, n), rng.integers(0, classes, n)
    p[: n // 2] = y[: n // 2]  # better than chance
    assert metrics.accuracy(y, p) == pytest.approx(sklearn_metrics.accuracy_score(y, p))
    assert metrics.matthews_correlation(y, p) == pytest.approx(
        sklearn_metrics.matthews_corrcoef(y, p)
    )
    yb, pb = y % 2, p % 2
    assert metrics.f1_positive(yb, pb) == pytest.approx(sklearn_metrics.f1_score(yb, pb))


def test_degenerate_cases_equal_sklearn():
    y, p = np.array([1, 1, 1]), np.array([1, 1, 1])
    assert metrics.matthews_correlation(y, p) == sklearn_metrics.matthews_corrcoef(y, p) == 0
    y, p = np.array([0, 0]), np.array([0, 0])
    assert metrics.f1_positive(y, p) == sklearn_metrics.f1_score(y, p, zero_division=0) == 0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=50)
    p = y + rng.normal(size=50)
    if seed % 2:  # ties, as STS-B's 0.2-step gold scores have
        y, p = np.round(y, 0), np.round(p, 1)
    assert metrics.pearson(y, p) == pytest.approx(stats.pearsonr(y, p)[0])
    assert metrics.spearmanr(y, p) == pytest.approx(stats.spearmanr(y, p)[0])


CASES = [
    # IOB2
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-ORG"]]),
    # IOB1: an I- after O starts an entity; I- of another type starts a new one
    ([["I-PER", "I-PER", "O", "I-LOC", "I-ORG"]], [["B-PER", "I-PER", "O", "I-LOC", "B-ORG"]]),
    # B- then I- of another type; two B- in a row; entity at the very end
    ([["B-PER", "I-LOC", "B-PER", "B-PER"]], [["B-PER", "I-LOC", "B-PER", "I-PER"]]),
    # multi-word types with hyphens (WNUT-17's creative-work) and several sentences
    (
        [["B-creative-work", "I-creative-work", "O"], ["O", "B-group"]],
        [["B-creative-work", "I-creative-work", "O"], ["B-group", "I-group"]],
    ),
    # nothing predicted / nothing true
    ([["O", "O"]], [["B-X", "O"]]),
    ([["B-X", "O"]], [["O", "O"]]),
]


@pytest.mark.parametrize(("true", "pred"), CASES)
def test_entity_scores_equal_seqeval(true, pred):
    got = metrics.entity_scores(true, pred)
    assert got["precision"] == pytest.approx(seqeval.precision_score(true, pred, zero_division=0))
    assert got["recall"] == pytest.approx(seqeval.recall_score(true, pred, zero_division=0))
    assert got["f1"] == pytest.approx(seqeval.f1_score(true, pred, zero_division=0))


@pytest.mark.parametrize("seed", range(20))
def test_random_tag_sequences_equal_seqeval(seed):
    rng = np.random.default_rng(seed)
    tags = ["O", "B-a", "I-a", "B-b", "I-b", "B-long-type", "I-long-type"]
    true = [list(rng.choice(tags, int(rng.integers(1, 12)))) for _ in range(8)]
    pred = [[t if rng.random() < 0.6 else str(rng.choice(tags)) for t in s] for s in true]
    got = metrics.entity_scores(true, pred)
    assert got["precision"] == pytest.approx(seqeval.precision_score(true, pred, zero_division=0))
    assert got["recall"] == pytest.approx(seqeval.recall_score(true, pred, zero_division=0))
    assert got["f1"] == pytest.approx(seqeval.f1_score(true, pred, zero_division=0))
