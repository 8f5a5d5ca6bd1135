"""Downstream metrics, named as GLUE and Hugging Face `evaluate` name them.

Small on purpose: each is a few lines of numpy with the reference it must equal in the tests
(scikit-learn, scipy.stats, seqeval). Entity scores follow conlleval / seqeval's default mode:
entities are read IOB1/IOB2-leniently (an I- after O or after another type starts an entity),
and an entity counts only when its type, start and end all match.
"""

from __future__ import annotations

import math

import numpy as np


def accuracy(labels, predictions) -> float:
    """Fraction of exact matches."""
    y, p = np.asarray(labels), np.asarray(predictions)
    return float((y == p).mean()) if y.size else 0.0


def f1_positive(labels, predictions, positive=1) -> float:
    """F1 of the positive class (GLUE's MRPC/QQP F1; sklearn's binary f1_score)."""
    y, p = np.asarray(labels) == positive, np.asarray(predictions) == positive
    tp = float((y & p).sum())
    denominator = float(y.sum() + p.sum())
    return 2 * tp / denominator if denominator else 0.0


def matthews_correlation(labels, predictions) -> float:
    """Matthews correlation for any number of classes (sklearn's matthews_corrcoef)."""
    y, p = np.asarray(labels), np.asarray(predictions)
    classes = np.union1d(y, p)
    c = np.zeros((len(classes), len(classes)))
    np.add.at(c, (np.searchsorted(classes, y), np.searchsorted(classes, p)), 1)
    t, q = c.sum(axis=1), c.sum(axis=0)  # true and predicted counts per class
    n, correct = c.sum(), np.trace(c)
    cov_yp = correct * n - t @ q
    cov_yy, cov_pp = n * n - t @ t, n * n - q @ q
    if cov_yy * cov_pp == 0:
        return 0.0
    return float(cov_yp / math.sqrt(cov_yy * cov_pp))


def pearson(labels, predictions) -> float:
    """Pearson's r (scipy.stats.pearsonr); 0 when either side is constant."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    y, p = y - y.mean(), p - p.mean()
    denominator = math.sqrt(float(y @ y) * float(p @ p))
    return float(y @ p / denominator) if denominator else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank (scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 … end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearmanr(labels, predictions) -> float:
    """Spearman's rho: Pearson's r of the ranks (scipy.stats.spearmanr)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(predictions, dtype=np.float64)
    return pearson(_ranks(y), _ranks(p))


def _split(tag: str) -> tuple[str, str]:
    if tag in ("O", ""):
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind or "_"


def entities(sequences: list[list[str]]) -> set[tuple[int, str, int, int]]:
    """(sentence, type, first, last) of every entity, read as conlleval reads IOB tags."""
    found = set()
    for s, tags in enumerate(sequences):
        prev_tag, prev_type, begin = "O", "", 0
        for i, tag in enumerate([*tags, "O"]):
            prefix, kind = _split(tag)
            ends = prev_tag != "O" and (prefix in ("B", "O") or prev_type != kind)
            starts = prefix == "B" or (prefix == "I" and (prev_tag == "O" or prev_type != kind))
            if ends:
                found.add((s, prev_type, begin, i - 1))
            if starts:
                begin = i
            prev_tag, prev_type = prefix, kind
    return found


def entity_scores(labels: list[list[str]], predictions: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision, recall and F1 (seqeval's default mode)."""
    true, pred = entities(labels), entities(predictions)
    correct = len(true & pred)
    precision = correct / len(pred) if pred else 0.0
    recall = correct / len(true) if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def sequence_metrics(names: tuple[str, ...], labels, predictions) -> dict[str, float]:
    """The named metrics of one eval set (classification ids or regression values)."""
    functions = {
        "accuracy": accuracy,
        "f1": f1_positive,
        "matthews_correlation": matthews_correlation,
        "pearson": pearson,
        "spearmanr": spearmanr,
    }
    return {name: functions[name](labels, predictions) for name in names}
