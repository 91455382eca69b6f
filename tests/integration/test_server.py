"""The project against a real tracking server, as a team would run it.

1. `mlflow server` over a throw-away PostgreSQL cluster with proxied artifacts: train ->
   register -> report through the CLI, then check the run in the server and in the database.
2. The basic-auth app: a user with READ on the experiment cannot write a report run there (a
   one-line error naming the permission), while the owner can. Credentials only ever travel
   in MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import pytest

from tests.integration.servers import (
    HOST,
    PostgresCluster,
    base_env,
    forget_local_report,
    postgres_skip_reason,
    run_id_of,
    run_report,
    start_mlflow_server,
    temp_dir,
)

pytestmark = pytest.mark.slow

TINY = ["--epochs", "1", "--image-size", "64"]
REPORT_ARTIFACTS = {"report", "overlays", "cams", "predictions.csv"}


@contextlib.contextmanager
def credentials(username: str, password: str):
    """MLflow's clients in this process read these two variables, and only these."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME",
                                            "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client_for(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


# --- 1. PostgreSQL backend ------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres():
    reason = postgres_skip_reason()
    if reason:
        pytest.skip(reason)
    with temp_dir("cxr-pg-") as folder:
        cluster = PostgresCluster(folder)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture(scope="module")
def postgres_server(postgres):
    with temp_dir("cxr-pg-server-") as folder:
        (folder / "artifacts").mkdir()
        service, url = start_mlflow_server(postgres.uri, folder / "artifacts",
                                           folder / "server.log", PGPASSWORD=postgres.password)
        try:
            yield {"url": url, "folder": folder, "service": service}
        finally:
            service.stop()


def test_train_register_report_against_a_postgres_backed_server(postgres, postgres_server):
    import psycopg2

    url, folder = postgres_server["url"], postgres_server["folder"]
    env = base_env(MLFLOW_TRACKING_URI=url, MLFLOW_EXPERIMENT_NAME="server-tests")
    run_report(["train", "--data", "synthetic:45", *TINY, "--model-name", "pg-cxr"], env,
               folder)
    result = run_report(["explain", "--model-uri", "models:/pg-cxr@champion",
                         "--data", "synthetic:45"], env, folder)
    run_id = run_id_of(result)
    try:
        client = client_for(url)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied, not a path
        assert {a.path for a in client.list_artifacts(run_id)} >= REPORT_ARTIFACTS
        assert {a.path for a in client.list_artifacts(run_id, "report")} == {
            "report/report.html", "report/report.pdf"}
        assert run.data.params["model_name"] == "pg-cxr"
        assert client.get_model_version_by_alias("pg-cxr", "champion").version == "1"
        # The server wrote the files under --artifacts-destination ...
        stored = folder / "artifacts"
        assert list(stored.rglob(f"{run_id}/artifacts/report/report.pdf"))
        # ... and the run into PostgreSQL, not some fallback store.
        with psycopg2.connect(host=HOST, port=postgres.port, user=postgres.user,
                              password=postgres.password, dbname="mlflow") as db, \
                db.cursor() as cursor:
            cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
            assert cursor.fetchone() == ("FINISHED",)
            cursor.execute("SELECT name FROM registered_models")
            assert ("pg-cxr",) in cursor.fetchall()
    finally:
        forget_local_report(run_id)
    assert "Traceback" not in postgres_server["service"].log_tail(400)


# --- 2. basic-auth app ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server():
    with temp_dir("cxr-auth-") as folder:
        (folder / "artifacts").mkdir()
        admin_password = secrets.token_urlsafe(16)
        config = folder / "basic_auth.ini"
        config.write_text(
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
            "admin_username = admin\n"
            f"admin_password = {admin_password}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        config.chmod(0o600)
        service, url = start_mlflow_server(
            f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts", folder / "server.log",
            app_name="basic-auth", MLFLOW_AUTH_CONFIG_PATH=str(config),
            MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),  # CSRF; required
        )
        try:
            yield {"url": url, "folder": folder, "admin": ("admin", admin_password)}
        finally:
            service.stop()


@pytest.fixture(scope="module")
def auth_setup(auth_server):
    """The admin trains and registers `auth-cxr`; `reader` gets READ on its experiment (and
    on the registered model, so that reading the model is not what fails)."""
    from mlflow.server import get_app_client

    url, folder = auth_server["url"], auth_server["folder"]
    admin, admin_password = auth_server["admin"]
    admin_env = base_env(MLFLOW_TRACKING_URI=url, MLFLOW_EXPERIMENT_NAME="auth-tests",
                         MLFLOW_TRACKING_USERNAME=admin, MLFLOW_TRACKING_PASSWORD=admin_password)
    run_report(["train", "--data", "synthetic:45", *TINY, "--model-name", "auth-cxr"],
               admin_env, folder)
    reader_password = secrets.token_urlsafe(16)
    with credentials(admin, admin_password):
        experiment = client_for(url).get_experiment_by_name("auth-tests")
        auth = get_app_client("basic-auth", tracking_uri=url)
        auth.create_user("reader", reader_password)
        auth.grant_user_permission("reader", "experiment", experiment.experiment_id, "READ")
        auth.grant_user_permission("reader", "registered_model", "auth-cxr", "READ")
        granted = auth.get_user_permission("reader", "experiment", experiment.experiment_id)
    reader_env = {**admin_env, "MLFLOW_TRACKING_USERNAME": "reader",
                  "MLFLOW_TRACKING_PASSWORD": reader_password}
    return {"url": url, "folder": folder, "admin_env": admin_env, "reader_env": reader_env,
            "experiment_id": experiment.experiment_id, "granted": granted,
            "reader": ("reader", reader_password)}


def test_reader_can_read_but_not_write(auth_setup):
    """The set-up is what the next tests assume: READ works, writing is refused."""
    from mlflow.exceptions import MlflowException

    with credentials(*auth_setup["reader"]):
        client = client_for(auth_setup["url"])
        assert client.get_experiment(auth_setup["experiment_id"]).name == "auth-tests"
        assert client.get_model_version_by_alias("auth-cxr", "champion").version == "1"
        with pytest.raises(MlflowException, match="(?i)permission"):
            client.create_run(auth_setup["experiment_id"])


def test_report_as_a_reader_is_a_one_line_permission_error(auth_setup):
    result = run_report(["explain", "--model-uri", "models:/auth-cxr@champion",
                         "--data", "synthetic:45"], auth_setup["reader_env"],
                        auth_setup["folder"], check=False)
    assert result.returncode != 0, result.stdout
    secret = auth_setup["reader"][1]
    assert secret not in result.stdout + result.stderr  # never echoed back
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "permission" in errors[0].lower(), errors[0]


def test_report_as_the_owner_succeeds(auth_setup):
    from mlflow.tracking import MlflowClient

    result = run_report(["explain", "--model-uri", "models:/auth-cxr@champion",
                         "--data", "synthetic:45"], auth_setup["admin_env"],
                        auth_setup["folder"])
    run_id = run_id_of(result)
    try:
        env = auth_setup["admin_env"]
        with credentials(env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]):
            client = MlflowClient(tracking_uri=auth_setup["url"])
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED"
            assert {a.path for a in client.list_artifacts(run_id)} >= REPORT_ARTIFACTS
    finally:
        forget_local_report(run_id)


def test_report_without_credentials_says_so(auth_setup):
    """A forgotten MLFLOW_TRACKING_USERNAME/PASSWORD must not look like a missing model."""
    env = {k: v for k, v in auth_setup["admin_env"].items()
           if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    result = run_report(["explain", "--model-uri", "models:/auth-cxr@champion",
                         "--data", "synthetic:15"], env, Path(auth_setup["folder"]),
                        check=False)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "no registered model" not in errors[0], errors[0]
    assert any(word in errors[0].lower() for word in
               ("credential", "authenticat", "unauthorized", "401", "mlflow_tracking_username")
               ), errors[0]
