"""Where the project keeps its tracking store and local report copies."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REPORTS_DIR = PROJECT_ROOT / "reports"

# Absolute, so the store is the same whatever folder a command runs from (DESIGN.md §3).
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"
DEFAULT_ARTIFACT_ROOT = PROJECT_ROOT / "mlruns"
