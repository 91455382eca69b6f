"""Where the project keeps its tracking store when it runs from a checkout.

Run from a checkout (the folder with MLproject), the default store is the project's own
absolute sqlite database, whatever folder a command runs from. Installed as a package there is
no project folder: MLflow's own default applies (MLFLOW_TRACKING_URI, else a sqlite:///mlflow.db
in the current folder).
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
IN_CHECKOUT = (PROJECT_ROOT / "MLproject").is_file()

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}" if IN_CHECKOUT else None
DEFAULT_ARTIFACT_ROOT = PROJECT_ROOT / "mlruns"
