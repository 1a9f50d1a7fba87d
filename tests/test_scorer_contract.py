"""The `Scorer` contract: every scorer (zero-shot classifier, few-shot head, open set) honours it, so no caller asks
what kind of scorer it holds, and what a scorer adds to a header or a record comes through its hooks."""

import typing

import numpy as np

from clipcli.batches import BatchItem
from clipcli.classifier import ZeroShotClassifier
from clipcli.heads import FewShotHead
from clipcli.openset import OpenSetScorer
from clipcli.scoring import Scorer, score_records


def unit(rows, dim=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scorers():
    text = unit(3, seed=1)
    classifier = ZeroShotClassifier(["a", "b", "c"], text, 50.0)
    head = FewShotHead(["a", "b", "c"], "zero-shot", text, 50.0)
    negatives = unit(4, seed=2)
    return classifier, head, OpenSetScorer(classifier, ["w", "x", "y", "z"], negatives, "other", 0.5)


def test_every_scorer_has_every_member_of_the_contract():
    members = [name for name in vars(Scorer) if not name.startswith("_")] + list(typing.get_type_hints(Scorer))
    assert {"labels", "label_embeddings", "logit_scale", "logit_bias", "logits", "check_score", "scores", "header",
            "leading"} <= set(members)
    features = unit(5, seed=3)
    for scorer in scorers():
        for name in members:
            assert hasattr(scorer, name), (type(scorer).__name__, name)
        assert scorer.scores(features).shape == (5, 3) and scorer.label_embeddings.shape == (3, 8)
        assert len(scorer.leading(features)) == 5


def test_the_open_set_adds_through_the_hooks_and_scores_as_its_base():
    classifier, head, open_set = scorers()
    features = np.concatenate([unit(3, seed=1), open_set.negative_embeddings[:2]])  # 3 label-like, 2 negative-like
    assert classifier.header() == {} and head.header() == {}
    assert open_set.header() == {"other": {"label": "other", "threshold": 0.5, "method": "negative labels",
                                           "negatives": 4}}
    assert np.array_equal(open_set.scores(features), classifier.scores(features))
    firsts = open_set.leading(features)
    expected = (open_set.other_scores(features) >= 0.5).tolist()
    assert [first is not None for first in firsts] == expected == [False, False, False, True, True]
    records = list(score_records(open_set, [BatchItem(f"{i}.png") for i in range(5)], features))
    assert [r["predictions"][0]["label"] == "other" for r in records] == expected
    assert records[3]["predictions"][0]["score"] == firsts[3]["score"]
