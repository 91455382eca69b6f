"""Classification metrics from the streamed predictions (explanation quality comes later)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support


@dataclass(frozen=True)
class ClassificationQuality:
    accuracy: float
    per_class: list[dict]  # {"class", "precision", "recall", "f1", "support"}
    confusion: np.ndarray  # (C, C), rows true, columns predicted

    def metrics(self) -> dict[str, float]:
        """Flat, stable MLflow metric names: accuracy, precision.<class>, recall.<class>..."""
        flat = {"accuracy": self.accuracy}
        for row in self.per_class:
            for key in ("precision", "recall", "f1"):
                flat[f"{key}.{row['class']}"] = row[key]
        flat["macro_f1"] = float(np.mean([row["f1"] for row in self.per_class]))
        return flat


def classification_quality(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: tuple[str, ...]
) -> ClassificationQuality:
    labels = list(range(len(class_names)))
    if len(y_true) == 0:
        empty = np.zeros((len(labels), len(labels)), dtype=int)
        rows = [_row(name, 0.0, 0.0, 0.0, 0) for name in class_names]
        return ClassificationQuality(accuracy=0.0, per_class=rows, confusion=empty)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    rows = [
        _row(name, precision[i], recall[i], f1[i], support[i])
        for i, name in enumerate(class_names)
    ]
    return ClassificationQuality(
        accuracy=float(accuracy_score(y_true, y_pred)),
        per_class=rows,
        confusion=confusion_matrix(y_true, y_pred, labels=labels),
    )


def _row(name: str, precision, recall, f1, support) -> dict:
    return {
        "class": name,
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "support": int(support),
    }
