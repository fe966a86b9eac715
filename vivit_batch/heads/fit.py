"""Fitting a linear softmax classifier (multinomial logistic regression) on stored embeddings.

The rules, which the README states:

- Classes: the distinct truth values, sorted; each needs `MIN_VIDEOS_PER_CLASS` labelled videos.
- Held-out evaluation: a stratified split by video (`HELD_OUT_FRACTION` of each class's videos,
  at least one, drawn with `SEED`); a head fitted on the rest, with its own choice of C, labels
  them. Segments of one video never fall on both sides of a split.
- Regularisation: C from `C_GRID`, the one with the best mean log loss over a stratified k-fold
  by video (k = `MAX_FOLDS`, or fewer when a class has fewer videos), shuffled with `SEED`.
  (The standardisation is fitted on all the rows the cross-validation sees, as is usual; the
  held-out videos are never seen.)
- Class imbalance: class weights inversely proportional to class frequency (scikit-learn's
  `class_weight="balanced"`).
- Features are standardised; the scaling is folded into the weights, so the head is a plain
  linear layer on the raw embedding.
- The final head: C chosen by the same cross-validation on all labelled rows, then fitted on all.

Same examples, same head, bit for bit: fixed seeds, a deterministic solver (lbfgs) in float64 on
one BLAS thread, so the sums do not depend on how many cores the machine has.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from vivit_batch.errors import ConfigError
from vivit_batch.heads.examples import Examples

SEED = 0
HELD_OUT_FRACTION = 0.2
MAX_FOLDS = 5
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
MIN_VIDEOS_PER_CLASS = 3
"""one held out, and two left to choose C by a 2-fold cross-validation"""
TOP_K = 5
MAX_ITER = 1000


@dataclass
class ClassMetrics:
    precision: float
    recall: float
    support: int
    """held-out rows of the class"""


@dataclass
class Evaluation:
    """How a head fitted without the held-out videos labels their rows."""

    train_rows: int
    train_videos: int
    rows: int
    videos: int
    C: float
    """chosen by cross-validation on the training part"""
    cv_folds: int
    top1: float
    topk: float
    k: int
    """top-k accuracy's k: 5, or the number of classes when there are fewer"""
    per_class: dict[str, ClassMetrics]
    confusion: list[list[int]]
    """[true class][predicted class] row counts, classes in the head's order"""


@dataclass
class LinearHead:
    classes: list[str]
    weight: np.ndarray
    """(classes, hidden) float32: logits = weight @ embedding + bias"""
    bias: np.ndarray
    C: float
    cv_folds: int
    cv_log_loss: list[float]
    """mean cross-validated log loss at each C of `C_GRID`"""
    evaluation: Evaluation
    warnings: list[str]


def check_classes(examples: Examples, column: str) -> list[str]:
    """The classes (sorted truth values); `ConfigError` naming them when there are fewer than
    two, or when some have too few labelled videos for the evaluation."""
    videos = videos_per_class(examples)
    if len(videos) < 2:
        found = ", ".join(f"{name!r} ({count} videos)" for name, count in videos.items())
        raise ConfigError(
            f"--truth-column {column}: a head needs at least two classes, the labelled ok rows "
            f"have {len(videos)}{': ' + found if found else ''}. Label videos of at least one "
            "more class (for one class against everything else, label examples of the rest as "
            "e.g. `other`)"
        )
    few = {name: count for name, count in videos.items() if count < MIN_VIDEOS_PER_CLASS}
    if few:
        named = ", ".join(f"{name!r} ({count})" for name, count in few.items())
        raise ConfigError(
            f"--truth-column {column}: too few labelled videos for the held-out evaluation in "
            f"{named}; each class needs at least {MIN_VIDEOS_PER_CLASS} (one held out, two to "
            "choose the regularisation). Label more videos of these classes, or drop or merge "
            "them (empty their truth values, or give them another class)"
        )
    return list(videos)


def videos_per_class(examples: Examples) -> dict[str, int]:
    """Labelled videos of each class, classes sorted."""
    pairs = set(zip(examples.truth.tolist(), examples.videos.tolist(), strict=True))
    counts: dict[str, int] = {}
    for name, _ in pairs:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def fit_head(examples: Examples, classes: list[str]) -> LinearHead:
    """Evaluate on held-out videos, then fit on every labelled row (see the module's rules)."""
    features = examples.embeddings.astype(np.float64)
    target = np.searchsorted(np.asarray(classes, dtype=object), examples.truth)
    test = held_out(examples.videos, target)
    with threadpool_limits(limits=1):  # lbfgs's sums the same whatever the cores
        evaluated = ChosenFit.of(features[~test], target[~test], examples.videos[~test])
        final = ChosenFit.of(features, target, examples.videos)
    weight, bias = final.linear_on_raw_embedding()
    return LinearHead(
        classes=classes,
        weight=weight,
        bias=bias,
        C=final.C,
        cv_folds=final.folds,
        cv_log_loss=final.cv_log_loss(),
        evaluation=evaluate(evaluated, examples, target, test, classes),
        warnings=[
            w for w in (evaluated.not_converged("held-out"), final.not_converged("final")) if w
        ],
    )


def evaluate(
    fitted: ChosenFit,
    examples: Examples,
    target: np.ndarray,
    test: np.ndarray,
    classes: list[str],
) -> Evaluation:
    """The metrics of `fitted` (which never saw the `test` rows) on the `test` rows."""
    probabilities = fitted.predict_proba(examples.embeddings[test].astype(np.float64))
    predicted = probabilities.argmax(1)
    truth = target[test]
    k = min(TOP_K, len(classes))
    top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    labels = list(range(len(classes)))
    precision, recall, _, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    return Evaluation(
        train_rows=int((~test).sum()),
        train_videos=len(np.unique(examples.videos[~test])),
        rows=int(test.sum()),
        videos=len(np.unique(examples.videos[test])),
        C=fitted.C,
        cv_folds=fitted.folds,
        top1=float((predicted == truth).mean()),
        topk=float((top == truth[:, None]).any(1).mean()),
        k=k,
        per_class={
            name: ClassMetrics(float(p), float(r), int(s))
            for name, p, r, s in zip(classes, precision, recall, support, strict=True)
        },
        confusion=confusion_matrix(truth, predicted, labels=labels).tolist(),
    )


def held_out(videos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rows of the held-out videos: of each class, `HELD_OUT_FRACTION` of its videos (at
    least one), drawn with `SEED`."""
    rng = np.random.default_rng(SEED)
    video_class = class_of_videos(videos, target)
    chosen = []
    for name in range(target.max() + 1):
        members = np.flatnonzero(video_class == name)
        count = max(1, round(HELD_OUT_FRACTION * len(members)))
        chosen.append(rng.permutation(members)[:count])
    return np.isin(videos, np.concatenate(chosen))


def class_of_videos(videos: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The class of each video 0..max (-1 for numbers no row has): a truth value is a video's,
    repeated on each of its segments."""
    classes = np.full(videos.max() + 1, -1)
    classes[videos] = target
    return classes


@dataclass
class ChosenFit:
    """Standardised features, then a logistic regression whose C was chosen by cross-validation
    (scikit-learn's `LogisticRegressionCV`: each fold follows `C_GRID` from the strongest
    regularisation up, warm-started, and the final fit uses the C of the best mean log loss)."""

    scale: StandardScaler
    model: LogisticRegressionCV
    folds: int

    @classmethod
    def of(cls, features: np.ndarray, target: np.ndarray, videos: np.ndarray) -> ChosenFit:
        folds = list(video_folds(videos, target))
        model = LogisticRegressionCV(
            Cs=list(C_GRID),
            l1_ratios=(0.0,),  # L2 only
            cv=folds,
            scoring="neg_log_loss",
            class_weight="balanced",
            max_iter=MAX_ITER,
        )
        scale = StandardScaler().fit(features)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # see `not_converged`
            warnings.simplefilter("ignore", FutureWarning)  # attribute shapes: read either
            model.fit(scale.transform(features), target)
        return cls(scale, model, len(folds))

    @property
    def C(self) -> float:
        return float(np.ravel(self.model.C_)[0])

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(self.scale.transform(features))

    def cv_log_loss(self) -> list[float]:
        """Mean log loss over the folds at each C of `C_GRID`."""
        scores = self.model.scores_
        if isinstance(scores, dict):  # scikit-learn < 1.10: the same array under each class
            scores = next(iter(scores.values()))
        return [-float(s) for s in np.asarray(scores).reshape(self.folds, -1).mean(0)]

    def linear_on_raw_embedding(self) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias) float32 of the scaling + logistic regression as one linear layer on
        the raw embedding. A two-class fit has one logit z; the head gives -z/2 and z/2, whose
        softmax is the fit's probabilities."""
        weight = self.model.coef_ / self.scale.scale_
        bias = self.model.intercept_ - weight @ self.scale.mean_
        if len(self.model.classes_) == 2:
            weight = np.vstack([-weight / 2, weight / 2])
            bias = np.concatenate([-bias / 2, bias / 2])
        return weight.astype(np.float32), bias.astype(np.float32)

    def not_converged(self, which: str) -> str | None:
        if int(np.max(self.model.n_iter_)) < MAX_ITER:
            return None
        return (
            f"the {which} fit stopped at {MAX_ITER} lbfgs iterations before it converged: "
            "the head works, but may not be the best fit to these labels"
        )


def video_folds(videos: np.ndarray, target: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(training rows, validation rows) of a stratified k-fold over the videos, shuffled with
    `SEED`; k is `MAX_FOLDS`, or the fewest videos a class has."""
    present = np.unique(videos)
    video_class = class_of_videos(videos, target)[present]
    folds = min(MAX_FOLDS, int(np.bincount(video_class).min()))
    splitter = StratifiedKFold(folds, shuffle=True, random_state=SEED)
    for _, validation in splitter.split(present, video_class):
        rows = np.isin(videos, present[validation])
        yield np.flatnonzero(~rows), np.flatnonzero(rows)
