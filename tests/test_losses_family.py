"""The loss family: the same value and gradient as sentence-transformers on identical logits,
hand-checked toy values, fp32 results under bf16 autocast, GradCache gradients, and errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from workbench import BinaryCrossEntropyLoss, CrossEncoder
from workbench.losses import (
    CachedMultipleNegativesRankingLoss,
    CrossEntropyLoss,
    LambdaLoss,
    ListMLELoss,
    ListNetLoss,
    MarginMSELoss,
    MSELoss,
    MultipleNegativesRankingLoss,
    PListMLELoss,
    RankNetLoss,
    detect_format,
    suggest_losses,
)

st_losses = pytest.importorskip("sentence_transformers.cross_encoder.losses")


class TableModel:
    """Stands in for a `CrossEncoder`: pair i's logits are row i of one leaf tensor, so every
    loss's gradient lands on that tensor and two implementations can be compared exactly."""

    def __init__(self, pairs: list[tuple[str, str]], logits: torch.Tensor) -> None:
        self.rows = {pair: i for i, pair in enumerate(pairs)}
        self.values = logits.detach().clone().requires_grad_()  # (pairs, num_labels)
        self.num_labels = logits.shape[1]
        self.device = torch.device("cpu")

    def tokenize(self, pairs):
        return {"pairs": list(pairs)}

    def logits(self, features):
        return self.lookup(features["pairs"])

    def lookup(self, pairs) -> torch.Tensor:
        return self.values[[self.rows[tuple(pair)] for pair in pairs]]


class ReferenceTable(nn.Module):
    """The same table behind the sentence-transformers model interface."""

    def __init__(self, table: TableModel) -> None:
        super().__init__()
        self.table = table
        self.num_labels = table.num_labels

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def preprocess(self, pairs, prompt=None, task=None):
        return {"pairs": list(pairs)}

    def forward(self, features):
        return {"scores": self.table.lookup(features["pairs"])}


@pytest.fixture(scope="module")
def st_model(tmp_path_factory, tiny_model):
    """A real sentence-transformers CrossEncoder: reference losses check their model's type."""
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder

    folder = tmp_path_factory.mktemp("tiny")
    tiny_model.save_pretrained(folder)
    return STCrossEncoder(str(folder), device="cpu")


def table_for(queries: list[str], passages: list[str], num_labels: int = 1) -> TableModel:
    """Random logits for every (query, passage) combination."""
    pairs = [(q, p) for q in queries for p in passages]
    return TableModel(pairs, 2 * torch.randn(len(pairs), num_labels))


def value_and_grad(loss_fn, table: TableModel) -> tuple[float, torch.Tensor]:
    table.values.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.item(), table.values.grad.clone()


def assert_same(ours, reference, table: TableModel) -> None:
    value, grad = value_and_grad(ours, table)
    expected, expected_grad = value_and_grad(reference, table)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6)


def reference(st_model, table: TableModel, cls, **kwargs):
    loss = cls(st_model, **kwargs)
    loss.model = ReferenceTable(table)  # after the constructor's type check
    return loss


# Pairs


def test_cross_entropy_matches_sentence_transformers(st_model):
    torch.manual_seed(0)
    queries, passages = [f"q{i}" for i in range(6)], [f"p{i}" for i in range(6)]
    table = table_for(queries, passages, num_labels=3)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    ours = CrossEntropyLoss(table)
    theirs = reference(st_model, table, st_losses.CrossEntropyLoss)
    assert_same(
        lambda: ours({"query": queries, "passage": passages}, labels.float()),
        lambda: theirs([queries, passages], labels),
        table,
    )


def test_mse_matches_sentence_transformers(st_model):
    torch.manual_seed(1)
    queries, passages = [f"q{i}" for i in range(6)], [f"p{i}" for i in range(6)]
    table = table_for(queries, passages)
    labels = 3 * torch.randn(6)
    ours, theirs = MSELoss(table), reference(st_model, table, st_losses.MSELoss)
    assert_same(
        lambda: ours({"query": queries, "passage": passages}, labels),
        lambda: theirs([queries, passages], labels),
        table,
    )


def test_cross_entropy_and_mse_match_hand_values():
    pairs = [("a", "x"), ("b", "y")]
    texts = {"query": ["a", "b"], "passage": ["x", "y"]}
    classes = TableModel(pairs, torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    value = CrossEntropyLoss(classes)(texts, torch.tensor([0.0, 1.0]))
    assert value.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2)
    scores = TableModel(pairs, torch.tensor([[1.0], [2.0]]))
    assert MSELoss(scores)(texts, torch.tensor([0.0, 4.0])).item() == pytest.approx(2.5)


# Tuples


@pytest.fixture()
def tuples():
    """Four queries with a positive and two hard negatives each; logits for every combination."""
    torch.manual_seed(2)
    queries = [f"q{i}" for i in range(4)]
    columns = {
        name: [f"{name}{i}" for i in range(4)] for name in ("positive", "negative_1", "negative_2")
    }
    table = table_for(queries, [p for column in columns.values() for p in column])
    return {"query": queries, **columns}, table


@pytest.mark.parametrize("teacher", ["margins", "scores"])
def test_margin_mse_matches_sentence_transformers(st_model, tuples, teacher):
    inputs, table = tuples
    labels = torch.randn(4, 2 if teacher == "margins" else 3)
    ours, theirs = MarginMSELoss(table), reference(st_model, table, st_losses.MarginMSELoss)
    assert_same(lambda: ours(inputs, labels), lambda: theirs([*inputs.values()], labels), table)


def test_margin_mse_matches_hand_value():
    table = TableModel([("q", "p"), ("q", "n1"), ("q", "n2")], torch.tensor([[3.0], [1.0], [2.0]]))
    inputs = {"query": ["q"], "positive": ["p"], "negative_1": ["n1"], "negative_2": ["n2"]}
    # Student margins (2, 1) against teacher margins (1, 1).
    assert MarginMSELoss(table)(inputs, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.5)


@pytest.mark.parametrize("hard_negatives", [True, False])
@pytest.mark.parametrize(
    ("options", "st_options"),
    [
        ({}, {}),
        ({"num_negatives": None}, {"num_negatives": None}),
        ({"scale": 1.0, "activation": "identity"}, {"scale": 1.0, "activation_fn": nn.Identity()}),
    ],
    ids=["defaults", "all-negatives", "identity"],
)
@pytest.mark.parametrize("cached", [False, True], ids=["plain", "cached"])
def test_mnrl_matches_sentence_transformers(
    st_model, tuples, hard_negatives, options, st_options, cached
):
    inputs, table = tuples
    if not hard_negatives:
        inputs = {"query": inputs["query"], "positive": inputs["positive"]}
    if cached:
        ours = CachedMultipleNegativesRankingLoss(table, mini_batch_size=5, **options)
        cls, st_options = (
            st_losses.CachedMultipleNegativesRankingLoss,
            st_options | {"mini_batch_size": 5},
        )
    else:
        ours, cls = (
            MultipleNegativesRankingLoss(table, **options),
            st_losses.MultipleNegativesRankingLoss,
        )
    theirs = reference(st_model, table, cls, **st_options)

    def seeded(loss_fn):
        # Both draw their in-batch negatives with one `torch.multinomial` call.
        torch.manual_seed(3)
        return loss_fn()

    assert_same(
        lambda: seeded(lambda: ours(inputs, None)),
        lambda: seeded(lambda: theirs([*inputs.values()], None)),
        table,
    )


def test_mnrl_matches_hand_value():
    scores = {("a", "x"): 2.0, ("a", "y"): 0.0, ("b", "y"): 0.0, ("b", "x"): 0.0}
    table = TableModel(list(scores), torch.tensor(list(scores.values()))[:, None])
    loss = MultipleNegativesRankingLoss(table, scale=1.0, activation="identity")
    value = loss({"query": ["a", "b"], "positive": ["x", "y"]}, None)
    assert value.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2)) / 2)


# Lists


@pytest.fixture()
def lists():
    """Three queries with 5, 3 and 4 documents; distinct graded labels; labels padded by -1."""
    torch.manual_seed(4)
    queries = ["q0", "q1", "q2"]
    documents = [[f"d{i}_{j}" for j in range(n)] for i, n in enumerate([5, 3, 4])]
    grades = [torch.randperm(len(row)).float() for row in documents]
    padded = torch.full((3, 5), -1.0)
    for row, values in enumerate(grades):
        padded[row, : len(values)] = values
    pairs = [(q, d) for q, row in zip(queries, documents, strict=True) for d in row]
    table = TableModel(pairs, 2 * torch.randn(len(pairs), 1))
    return {"query": queries, "documents": documents}, padded, grades, table


LIST_CASES = {
    "lambda-ndcg2pp": (LambdaLoss, {}, "LambdaLoss", {}),
    "lambda-ndcg2pp-k2-mu5": (
        LambdaLoss,
        {"k": 2, "mu": 5.0, "sigma": 0.5},
        "LambdaLoss",
        {"k": 2, "sigma": 0.5, "weighting_scheme": st_losses.NDCGLoss2PPScheme(mu=5.0)},
    ),
    "lambda-ndcg2": (
        LambdaLoss,
        {"weighting_scheme": "ndcg_loss2"},
        "LambdaLoss",
        {"weighting_scheme": st_losses.NDCGLoss2Scheme()},
    ),
    "lambda-ndcg1": (
        LambdaLoss,
        {"weighting_scheme": "ndcg_loss1", "k": 3},
        "LambdaLoss",
        {"weighting_scheme": st_losses.NDCGLoss1Scheme(), "k": 3},
    ),
    "lambda-lambdarank-natural": (
        LambdaLoss,
        {"weighting_scheme": "lambdarank", "reduction_log": "natural"},
        "LambdaLoss",
        {"weighting_scheme": st_losses.LambdaRankScheme(), "reduction_log": "natural"},
    ),
    "lambda-none": (
        LambdaLoss,
        {"weighting_scheme": None},
        "LambdaLoss",
        {"weighting_scheme": st_losses.NoWeightingScheme()},
    ),
    "ranknet": (RankNetLoss, {"mini_batch_size": 5}, "RankNetLoss", {"mini_batch_size": 5}),
    "listnet": (ListNetLoss, {}, "ListNetLoss", {}),
    "listmle": (ListMLELoss, {}, "ListMLELoss", {}),
    "listmle-by-label": (
        ListMLELoss,
        {"respect_input_order": False},
        "ListMLELoss",
        {"respect_input_order": False},
    ),
    "plistmle": (PListMLELoss, {"mini_batch_size": 4}, "PListMLELoss", {}),
    "plistmle-by-label": (
        PListMLELoss,
        {"respect_input_order": False},
        "PListMLELoss",
        {"respect_input_order": False},
    ),
}


@pytest.mark.parametrize("case", list(LIST_CASES))
def test_listwise_losses_match_sentence_transformers(st_model, lists, case):
    inputs, padded, grades, table = lists
    cls, options, st_name, st_options = LIST_CASES[case]
    ours = cls(table, **options)
    theirs = reference(st_model, table, getattr(st_losses, st_name), **st_options)
    assert_same(
        lambda: ours(inputs, padded),
        lambda: theirs([inputs["query"], inputs["documents"]], grades),
        table,
    )


def test_listnet_matches_sentence_transformers_on_teacher_scores(st_model, lists):
    inputs, padded, grades, table = lists
    scores = [3 * torch.randn(len(row)) for row in grades]
    for row, values in enumerate(scores):
        padded[row, : len(values)] = values
    ours, theirs = ListNetLoss(table), reference(st_model, table, st_losses.ListNetLoss)
    assert_same(
        lambda: ours(inputs, padded),
        lambda: theirs([inputs["query"], inputs["documents"]], scores),
        table,
    )


def one_list(logits: list[float]) -> tuple[dict, TableModel]:
    documents = [f"d{i}" for i in range(len(logits))]
    table = TableModel([("q", d) for d in documents], torch.tensor(logits)[:, None])
    return {"query": ["q"], "documents": [documents]}, table


def test_listwise_losses_match_hand_values():
    # A misordered pair: the relevant document (label 1) scores 0, the other 1.
    inputs, table = one_list([0.0, 1.0])
    labels = torch.tensor([[1.0, 0.0]])
    delta = 1 - 1 / math.log2(3)  # LambdaRank's and NDCG-Loss2's weight for ranks 1 and 2
    pair_loss = math.log(1 + math.e) / math.log(2)  # -log2(sigmoid(0 - 1))
    assert LambdaLoss(table)(inputs, labels).item() == pytest.approx(11 * delta * pair_loss)
    assert RankNetLoss(table)(inputs, labels).item() == pytest.approx(pair_loss)
    # Target softmax (e, 1) / (1 + e); predicted log-softmax -log(1 + e) + (0, 1).
    expected = math.log(1 + math.e) - 1 / (1 + math.e)
    assert ListNetLoss(table)(inputs, labels).item() == pytest.approx(expected)

    # Plackett-Luce with equal logits: log-probabilities -log 3, -log 2, 0 by rank.
    inputs, table = one_list([0.0, 0.0, 0.0])
    labels = torch.tensor([[2.0, 1.0, 0.0]])
    assert ListMLELoss(table)(inputs, labels).item() == pytest.approx(math.log(6))
    # Rank weights 2^(3 - r) - 1 = 3, 1, 0, normalized by 4.
    plist = PListMLELoss(table)(inputs, labels).item()
    assert plist == pytest.approx((3 * math.log(3) + math.log(2)) / 4, rel=1e-6)


@pytest.mark.parametrize("cls", [ListNetLoss, ListMLELoss, PListMLELoss])
def test_listwise_losses_mask_padding(lists, cls):
    # Per-query losses: the padded batch gives the mean of each list scored alone.
    inputs, padded, grades, table = lists
    loss = cls(table)
    alone = [
        loss({"query": [q], "documents": [row]}, values[None, :])
        for q, row, values in zip(inputs["query"], inputs["documents"], grades, strict=True)
    ]
    assert loss(inputs, padded).item() == pytest.approx(torch.stack(alone).mean().item())


# Real model: bf16 autocast, gradients, GradCache


@pytest.fixture(scope="module")
def real_batches(scifact_train):
    """Pairs, tuples and lists from real SciFact queries, positives and unjudged passages.

    Two queries, passages cut to 100 characters: bf16 is emulated on most CPUs, and slow.
    """
    corpus = {d: text[:100] for d, text in scifact_train.corpus.items()}
    items = list(scifact_train.qrels.items())[:2]
    corpus_ids = list(corpus)
    queries, positives, negatives = [], [], []
    for i, (query_id, judged) in enumerate(items):
        queries.append(scifact_train.queries[query_id])
        positives.append(corpus[next(iter(judged))])
        unjudged = [d for d in corpus_ids[3 * i : 3 * i + 6] if d not in judged]
        negatives.append([corpus[d] for d in unjudged[:2]])
    pairs = {"query": queries * 2, "passage": positives + [n[0] for n in negatives]}
    tuples = {"query": queries, "positive": positives, "negative_1": [n[0] for n in negatives]}
    lists = {
        "query": queries,
        "documents": [[positives[0], *negatives[0]], [positives[1], negatives[1][0]]],
    }
    return {
        "pairs": (pairs, torch.tensor([1.0, 1.0, 0.0, 0.0])),
        "tuples": (tuples, torch.tensor([2.0, -0.5])),
        "lists": (lists, torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, -1.0]])),
    }


@pytest.fixture(scope="module")
def three_label_model():
    return CrossEncoder("minilm-l6-tiny", num_labels=3, max_length=128)


REAL_CASES = {
    "cross_entropy": (CrossEntropyLoss, "pairs"),
    "mse": (MSELoss, "pairs"),
    "margin_mse": (MarginMSELoss, "tuples"),
    "mnrl": (MultipleNegativesRankingLoss, "tuples"),
    "cached_mnrl": (lambda m: CachedMultipleNegativesRankingLoss(m, mini_batch_size=4), "tuples"),
    "lambda": (lambda m: LambdaLoss(m, mini_batch_size=2), "lists"),
    "ranknet": (RankNetLoss, "lists"),
    "listnet": (ListNetLoss, "lists"),
    "listmle": (ListMLELoss, "lists"),
    "plistmle": (PListMLELoss, "lists"),
}


@pytest.mark.parametrize("case", list(REAL_CASES))
def test_losses_stay_fp32_and_finite_under_bf16_autocast(
    tiny_model, three_label_model, real_batches, case
):
    build, data_format = REAL_CASES[case]
    model = three_label_model if case == "cross_entropy" else tiny_model
    inputs, labels = real_batches[data_format]
    if case == "cross_entropy":
        labels = torch.tensor([2.0, 1.0, 0.0, 1.0])
    model.model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = build(model)(inputs, labels)
    loss.backward()  # outside autocast, as in the Trainer
    grad = model.model.base_model.embeddings.word_embeddings.weight.grad
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    model.model.zero_grad()


@pytest.fixture(scope="module")
def fresh_model():
    from transformers import set_seed

    set_seed(0)
    return CrossEncoder("minilm-l6-tiny", max_length=128)


def parameter_grads(model, loss_fn, *, scale: float = 1.0) -> dict[str, torch.Tensor]:
    model.model.zero_grad()
    (loss_fn() * scale).backward()
    grads = {n: p.grad.clone() for n, p in model.model.named_parameters() if p.grad is not None}
    model.model.zero_grad()
    return grads


def seeded(loss, inputs):
    torch.manual_seed(5)
    return loss(inputs, None)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_cached_mnrl_gradients_equal_plain_mnrl(fresh_model, real_batches, mode):
    inputs, _ = real_batches["tuples"]
    getattr(fresh_model.model, mode)()
    # With dropout on, one mini-batch holding every pair makes both draw the same masks; the
    # cached loss must replay them in its backward pass.
    size = 3 if mode == "eval" else 100
    plain = MultipleNegativesRankingLoss(fresh_model, num_negatives=None)
    cached = CachedMultipleNegativesRankingLoss(
        fresh_model, num_negatives=None, mini_batch_size=size
    )
    # A scaled loss (as under gradient accumulation) must scale the replayed gradients too.
    expected = parameter_grads(fresh_model, lambda: seeded(plain, inputs), scale=0.5)
    grads = parameter_grads(fresh_model, lambda: seeded(cached, inputs), scale=0.5)
    fresh_model.model.eval()
    assert grads.keys() == expected.keys() and len(grads) > 10
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_cached_mnrl_replays_autocast_in_backward(fresh_model, real_batches):
    inputs, _ = real_batches["tuples"]
    inputs = {"query": inputs["query"], "positive": inputs["positive"]}
    fresh_model.model.eval()
    grads = []
    for loss in (
        MultipleNegativesRankingLoss(fresh_model),
        CachedMultipleNegativesRankingLoss(fresh_model),
    ):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(inputs)
        grads.append(parameter_grads(fresh_model, lambda value=value: value))
    # In fp32, the replay would differ from the bf16 first pass by far more than this.
    classifier = "classifier.weight"
    torch.testing.assert_close(grads[1][classifier], grads[0][classifier], rtol=1e-3, atol=1e-5)


def test_cached_mnrl_returns_the_plain_value_without_grad(fresh_model, real_batches):
    inputs, _ = real_batches["tuples"]
    fresh_model.model.eval()
    with torch.no_grad():
        plain = MultipleNegativesRankingLoss(fresh_model, num_negatives=None)(inputs)
        cached = CachedMultipleNegativesRankingLoss(fresh_model, num_negatives=None)(inputs)
    assert cached.item() == pytest.approx(plain.item(), rel=1e-5)


# Formats and errors

ALL_LOSSES = {
    CrossEntropyLoss: "pairs",
    MSELoss: "pairs",
    MarginMSELoss: "tuples",
    MultipleNegativesRankingLoss: "tuples",
    CachedMultipleNegativesRankingLoss: "tuples",
    RankNetLoss: "lists",
    LambdaLoss: "lists",
    ListNetLoss: "lists",
    ListMLELoss: "lists",
    PListMLELoss: "lists",
}
COLUMNS = {
    "pairs": ["query", "passage", "label"],
    "tuples": ["query", "positive", "negative_1", "labels"],
    "lists": ["query", "documents", "labels"],
}


@pytest.mark.parametrize("cls", list(ALL_LOSSES), ids=lambda cls: cls.__name__)
def test_losses_reject_other_formats(cls):
    table = TableModel([], torch.zeros(0, 3 if cls is CrossEntropyLoss else 1))
    loss = cls(table)
    loss.check_columns(COLUMNS[ALL_LOSSES[cls]])
    for data_format, columns in COLUMNS.items():
        if data_format != ALL_LOSSES[cls]:
            with pytest.raises(ValueError, match=rf"`{cls.__name__}` expects {ALL_LOSSES[cls]} "):
                loss.check_columns(columns)


def test_cross_entropy_rejects_single_label_model():
    with pytest.raises(
        ValueError, match=r"`num_labels` >= 2.*got 1\. Use `BinaryCrossEntropyLoss`"
    ):
        CrossEntropyLoss(TableModel([], torch.zeros(0, 1)))


def test_cross_entropy_rejects_labels_outside_the_classes():
    table = TableModel([("a", "x")], torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), but got 3\.0"):
        CrossEntropyLoss(table)({"query": ["a"], "passage": ["x"]}, torch.tensor([3.0]))


@pytest.mark.parametrize("cls", [c for c in ALL_LOSSES if c is not CrossEntropyLoss])
def test_single_score_losses_reject_multi_label_model(cls):
    with pytest.raises(ValueError, match=r"expects a model with `num_labels=1`, but got 3"):
        cls(TableModel([], torch.zeros(0, 3)))


def test_mse_rejects_missing_labels():
    table = TableModel([("a", "x")], torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"one float label per pair \(1\), but got labels of"):
        MSELoss(table)({"query": ["a"], "passage": ["x"]}, None)


def test_margin_mse_rejects_labels_of_another_shape(tuples):
    inputs, table = tuples
    with pytest.raises(ValueError, match=r"shape \(4, 2\) \(margins\) or \(4, 3\).*got \(4, 5\)"):
        MarginMSELoss(table)(inputs, torch.zeros(4, 5))


def test_margin_mse_requires_negatives_and_teacher_labels():
    loss = MarginMSELoss(TableModel([], torch.zeros(0, 1)))
    with pytest.raises(
        ValueError, match=r"expects tuples with negative_1\.\.n columns and teacher"
    ):
        loss.check_columns(["query", "positive", "negative_1"])


def test_listwise_losses_reject_labels_longer_than_documents(lists):
    inputs, padded, _, table = lists
    padded[1, 4] = 2.0  # row 1 has 3 documents
    with pytest.raises(ValueError, match=r"row 1 has more labels than its 3 documents"):
        ListNetLoss(table)(inputs, padded)


def test_listwise_losses_reject_unpadded_labels(lists):
    inputs, _, _, table = lists
    with pytest.raises(
        ValueError, match=r"labels of shape \(3, 5\) for this batch, but got \(3,\)"
    ):
        LambdaLoss(table)(inputs, torch.zeros(3))


@pytest.mark.parametrize(
    ("cls", "options", "message"),
    [
        (LambdaLoss, {"weighting_scheme": "ndcg"}, "weighting_scheme must be one of"),
        (LambdaLoss, {"k": 0}, "k must be a positive cutoff"),
        (ListNetLoss, {"mini_batch_size": 0}, "mini_batch_size must be a positive"),
        (MultipleNegativesRankingLoss, {"activation": "tanh"}, "activation must be one of"),
        (MultipleNegativesRankingLoss, {"scale": 0}, "scale must be positive"),
        (CachedMultipleNegativesRankingLoss, {"mini_batch_size": 0}, "mini_batch_size must be"),
    ],
)
def test_losses_reject_bad_options(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls(TableModel([], torch.zeros(0, 1)), **options)


def test_detect_format_accepts_query_positive_for_in_batch_losses():
    assert detect_format(["query", "positive"]) == "tuples"
    assert detect_format(["query", "passage", "label"]) == "pairs"
    with pytest.raises(ValueError, match="expects pairs"):
        BinaryCrossEntropyLoss(TableModel([], torch.zeros(0, 1))).check_columns(
            ["query", "positive"]
        )


def test_suggest_losses_fits_the_columns():
    assert list(suggest_losses(["query", "passage", "label"]))[0] == "BinaryCrossEntropyLoss"
    in_batch = suggest_losses(["query", "positive"])
    assert "MultipleNegativesRankingLoss" in in_batch and "MarginMSELoss" not in in_batch
    assert "MarginMSELoss" in suggest_losses(["query", "positive", "negative_1", "labels"])
    assert list(suggest_losses(["query", "documents", "labels"]))[0] == "LambdaLoss"
    assert suggest_losses(["text"]) == {}


def test_recommend_losses_sets_bce_pos_weight_from_real_labels():
    from workbench.job import JobConfig, prepare_data, training_pairs
    from workbench.losses import recommend_losses

    data = prepare_data(JobConfig(dev_queries=0, max_train_queries=30, max_test_queries=1))
    pairs = training_pairs(data, negatives=3)
    best = recommend_losses(pairs)[0]
    positives = sum(1 for y in pairs["label"] if y == 1.0)
    assert best["loss"] == "BinaryCrossEntropyLoss"
    assert best["settings"]["pos_weight"] == pytest.approx(
        (len(pairs) - positives) / positives, abs=1e-3
    )
    assert 2.0 < best["settings"]["pos_weight"] <= 3.0
