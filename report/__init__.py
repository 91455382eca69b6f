"""cxr-gradcam-report: audit a Keras chest X-ray classifier with CAM heatmaps and a report.

    import report

    result = report.audit("models:/cxr-classifier@champion", "synthetic:120")
    result.metrics["accuracy"], result.predictions.head()
    result.to_pdf("audit.pdf")          # and to_html(...), log_to_mlflow()

    maps = report.explain(keras_model, images)   # the engine alone, one batch

    duel = report.compare("models:/cxr@champion", "models:/cxr@challenger", "synthetic")
    duel.verdict, duel.gate("shortcut"), duel.to_pdf("compare.pdf")

    ranking = report.rank_methods("models:/cxr@champion", "synthetic")  # which CAM method
    ranking.recommended, ranking.metrics()

`audit` and `explain` are documented on themselves (`help(report.audit)`); every keyword is
also a `python -m report explain --kebab-case` flag and an MLproject parameter. Bad values
raise `report.OptionError` (a ValueError) naming the keyword.

Not for clinical use. These results are exploratory and have no diagnostic value.
"""

from importlib import import_module

__all__ = ["Audit", "Comparison", "Explanation", "MethodsRanking", "OptionError", "UserError",
           "audit", "compare", "explain", "rank_methods"]

# Imported on first use: TensorFlow takes seconds to load, and `python -m report --help`
# (which imports this package first) should not wait for it.
_LAZY = {
    "audit": "report.api",
    "explain": "report.api",
    "compare": "report.api",
    "rank_methods": "report.api",
    "MethodsRanking": "report.methods",
    "Comparison": "report.comparison",
    "Audit": "report.result",
    "Explanation": "report.cam.engine",
    "OptionError": "report.errors",
    "UserError": "report.errors",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'report' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
