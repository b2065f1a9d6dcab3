"""Calibration on real reranker scores (WikiQA), checked against scipy and scikit-learn; saving
with the model and applying it in `predict`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import optimize
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import precision_recall_curve
from transformers import AutoModelForSequenceClassification

from tests.conftest import shared_data
from workbench import CrossEncoder
from workbench.calibration import (
    CALIBRATION_FILE,
    Calibration,
    best_f1_threshold,
    calibrate,
    expected_calibration_error,
    fit_calibration,
)


def _wikiqa(split: str, count: int) -> tuple[list[tuple[str, str]], np.ndarray]:
    """The first `count` pairs of questions that have an answer (as WikiQA is evaluated)."""
    rows = [json.loads(x) for x in (shared_data("wikiqa") / f"{split}.jsonl").open()]
    answered = {row["query_id"] for row in rows if row["label"] == 1}
    rows = [row for row in rows if row["query_id"] in answered][:count]
    return [(r["query"], r["passage"]) for r in rows], np.array([r["label"] for r in rows])


@pytest.fixture(scope="module")
def scored(reranker):
    """ms-marco-MiniLM-L-12 raw scores: WikiQA train pairs to fit, test pairs held out."""
    fit_pairs, fit_labels = _wikiqa("train", 300)
    held_pairs, held_labels = _wikiqa("test", 300)
    # In float64, as calibration fits: references fed float32 round differently (1e-7).
    fit_scores = reranker.predict(fit_pairs, activation="identity").astype(np.float64)
    held_scores = reranker.predict(held_pairs, activation="identity").astype(np.float64)
    return fit_scores, fit_labels, held_scores, held_labels


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibration_lowers_held_out_ece_on_wikiqa(scored, method):
    fit_scores, fit_labels, held_scores, held_labels = scored
    calibration = fit_calibration(
        fit_scores, fit_labels, method=method, held_out=(held_scores, held_labels)
    )
    assert calibration.ece_pairs == "held-out"
    # The MS MARCO reranker's sigmoid is far off on WikiQA (about 0.23 here).
    assert calibration.ece_before > 0.15
    assert calibration.ece_after < calibration.ece_before / 2
    probabilities = calibration(held_scores)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert np.all(np.diff(probabilities[np.argsort(held_scores)]) >= 0)  # monotone


def test_platt_equals_scipy_minimiser_of_platts_loss(scored):
    scores, labels, _, _ = scored
    calibration = fit_calibration(scores, labels, method="platt")
    positives, negatives = labels.sum(), len(labels) - labels.sum()
    targets = np.where(labels == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(params):
        z = params[0] * scores + params[1]
        return np.sum(targets * np.logaddexp(0, -z) + (1 - targets) * np.logaddexp(0, z))

    reference = optimize.minimize(loss, x0=[0.0, 0.0], method="BFGS", options={"gtol": 1e-10})
    ours = [calibration.parameters["a"], calibration.parameters["b"]]
    assert ours == pytest.approx(reference.x, rel=1e-4)
    assert loss(ours) <= reference.fun + 1e-9


def test_isotonic_predictions_equal_sklearn(scored):
    fit_scores, fit_labels, held_scores, _ = scored
    calibration = fit_calibration(fit_scores, fit_labels, method="isotonic")
    reference = IsotonicRegression(out_of_bounds="clip").fit(fit_scores, fit_labels)
    np.testing.assert_allclose(calibration(held_scores), reference.predict(held_scores), atol=1e-12)
    np.testing.assert_allclose(calibration(fit_scores), reference.predict(fit_scores), atol=1e-12)


def test_ece_equals_a_calibration_curve_reference(scored):
    _, _, scores, labels = scored
    probabilities = 1 / (1 + np.exp(-scores))
    share, mean_probability = calibration_curve(labels, probabilities, n_bins=10)
    counts, _ = np.histogram(probabilities, bins=np.linspace(0, 1, 11))
    counts = counts[counts > 0]
    reference = np.sum(counts * np.abs(share - mean_probability)) / len(labels)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(reference, abs=1e-12)
    assert expected_calibration_error([0.2, 0.8], [0, 1]) == pytest.approx(0.2)


def test_best_f1_threshold_equals_sklearn(scored):
    scores, labels, _, _ = scored
    probabilities = fit_calibration(scores, labels, method="isotonic")(scores)
    threshold, f1 = best_f1_threshold(probabilities, labels)
    precision, recall, thresholds = precision_recall_curve(labels, probabilities)
    f1s = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    assert f1 == pytest.approx(f1s.max(), abs=1e-12)
    assert threshold == pytest.approx(thresholds[np.argmax(f1s[:-1])])


def test_calibration_is_saved_with_the_model_and_applied_by_predict(tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    pairs, labels = _wikiqa("test", 40)
    model = CrossEncoder("minilm-l6-tiny", max_length=64)
    calibration = calibrate(model, pairs, labels, method="platt")
    assert model.calibration is calibration
    model.save_pretrained(tmp_path)
    assert (tmp_path / CALIBRATION_FILE).is_file()

    reloaded = CrossEncoder(tmp_path)
    assert reloaded.calibration == calibration
    raw = reloaded.predict(pairs, activation="identity")
    np.testing.assert_allclose(
        reloaded.predict(pairs, calibrated=True), calibration(raw), rtol=1e-6
    )
    # The folder still loads unchanged in sentence-transformers and transformers.
    theirs = STCrossEncoder(str(tmp_path), device="cpu").predict(pairs)
    np.testing.assert_allclose(theirs, reloaded.predict(pairs), atol=1e-5)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path).num_labels == 1


def test_predict_calibrated_needs_a_calibration():
    model = CrossEncoder("minilm-l6-tiny", max_length=32)
    assert model.calibration is None
    with pytest.raises(RuntimeError, match="calibration"):
        model.predict([("q", "p")], calibrated=True)
    model.calibration = Calibration("platt", {"a": 1.0, "b": 0.0}, 0.5, 1.0, 0, 0, "fit", 10, 2)
    with pytest.raises(ValueError, match="activation='sigmoid'"):
        model.predict([("q", "p")], calibrated=True, activation="sigmoid")


def test_fit_calibration_rejects_bad_labels():
    with pytest.raises(ValueError, match="both relevant"):
        fit_calibration([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="labels 0 or 1"):
        fit_calibration([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="method must be"):
        fit_calibration([0.1, 0.2], [0, 1], method="beta")


def test_calibration_file_with_an_unknown_method_is_refused(tmp_path):
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "beta"}))
    with pytest.raises(ValueError, match="expected a method"):
        Calibration.load(tmp_path)
    assert Calibration.load(tmp_path / "elsewhere") is None
