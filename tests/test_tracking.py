import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

from report.tracking import access_problem, explain_mlflow_error


@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (MlflowException("API request to endpoint /api/2.0/mlflow/runs/create failed with "
                         "error code 403 != 200. Response body: 'Permission denied'"),
         "permission denied"),
        (MlflowException("API request to endpoint /x failed with error code 401 != 200"),
         "unauthenticated"),
        (MlflowException("denied", error_code=PERMISSION_DENIED), "permission denied"),
        # A number in a name is not a status code.
        (MlflowException("Registered Model with name=model-401 not found",
                         error_code=RESOURCE_DOES_NOT_EXIST), None),
    ],
)
def test_access_problems_are_told_apart_from_other_errors(error, problem):
    assert access_problem(error) == problem


def test_credentials_are_asked_for_by_environment_variable(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
    error = MlflowException("API request to endpoint /x failed with error code 403 != 200")
    message = explain_mlflow_error(error)
    assert "denied permission" in message and "(reader)" in message and "\n" not in message
    unauthenticated = explain_mlflow_error(
        MlflowException("API request to endpoint /x failed with error code 401 != 200"))
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in unauthenticated
