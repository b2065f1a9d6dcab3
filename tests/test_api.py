"""The public API is pinned: a change to it is a deliberate change to this list."""

import workbench


def test_public_api_is_pinned():
    assert sorted(workbench.__all__) == [
        "BM25Retriever",
        "BinaryCrossEntropyLoss",
        "CachedMultipleNegativesRankingLoss",
        "CrossEncoder",
        "CrossEncoderTrainer",
        "CrossEntropyLoss",
        "DataValidationError",
        "LambdaLoss",
        "ListMLELoss",
        "ListNetLoss",
        "MSELoss",
        "MarginMSELoss",
        "MultiDatasetBatchSampler",
        "MultipleNegativesRankingLoss",
        "NamedConcatDataset",
        "NoDuplicatesBatchSampler",
        "PListMLELoss",
        "RankNetLoss",
        "RerankingEvaluator",
        "RerankingLoss",
        "add_teacher_scores",
        "distill",
        "load_beir",
        "load_pairs",
        "load_tuples",
    ]
    for name in workbench.__all__:
        assert getattr(workbench, name) is not None
