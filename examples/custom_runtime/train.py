"""Train the example sentiment model on the sentences below and save it with joblib.

    python -m examples.custom_runtime.train [PATH]   # default .mmgw/models/sentiment.joblib

TF-IDF over words and word pairs, then logistic regression: a real, if tiny,
text classifier, trained in well under a second with no download. The saved
pipeline holds only scikit-learn objects, so loading it runs no code of ours.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

POSITIVE = (
    "what a wonderful day",
    "i love this so much",
    "this is great",
    "absolutely fantastic work",
    "the food was delicious",
    "a beautiful and happy morning",
    "i am very pleased with the result",
    "excellent service and friendly staff",
    "best movie i have seen this year",
    "she was kind and helpful",
    "the concert was amazing",
    "i enjoyed every minute",
    "such a lovely surprise",
    "brilliant idea, well done",
    "the weather is nice and sunny",
    "thank you, this made my day",
    "a delightful little book",
    "we had a wonderful time",
    "perfect, exactly what i wanted",
    "great news, i am so happy",
    "the team did an awesome job",
    "it works beautifully",
)
NEGATIVE = (
    "what a terrible day",
    "i hate this so much",
    "this is awful",
    "absolutely horrible work",
    "the food was disgusting",
    "a gloomy and sad morning",
    "i am very disappointed with the result",
    "rude service and unfriendly staff",
    "worst movie i have seen this year",
    "he was mean and unhelpful",
    "the concert was boring",
    "i regretted every minute",
    "such a nasty shock",
    "stupid idea, badly done",
    "the weather is cold and miserable",
    "this ruined my day",
    "a dull and tedious book",
    "we had an awful time",
    "broken, not what i wanted at all",
    "bad news, i am so upset",
    "the team did a poor job",
    "it fails all the time",
)


def train() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = [*POSITIVE, *NEGATIVE]
    labels = ["positive"] * len(POSITIVE) + ["negative"] * len(NEGATIVE)
    pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2)), LogisticRegression(C=10.0))
    return pipeline.fit(texts, labels)


def save(path: Path) -> Path:
    import joblib

    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(train(), path)
    return path


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".mmgw/models/sentiment.joblib")
    print(f"saved {save(target)}")
