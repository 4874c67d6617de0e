#!/usr/bin/env bash
# Start the Distillery MLflow tracking server (UI + REST API + proxied artifact store).
#
# Every setting comes from the environment, with defaults that match what `distillery run` writes
# without a server (SQLite + artifacts under .distillery/, see pipelines/runtime.py):
#   DISTILLERY_STATE              state folder for the defaults below   (.distillery)
#   MLFLOW_BACKEND_STORE_URI      sqlite:///$DISTILLERY_STATE/mlflow.db
#                                 shared/concurrent use: postgresql+psycopg2://user@host:5432/db
#   MLFLOW_ARTIFACTS_DESTINATION  $DISTILLERY_STATE/mlartifacts  (or s3://bucket/prefix, ...)
#   MLFLOW_HOST                   127.0.0.1   (0.0.0.0 to listen on every interface)
#   MLFLOW_PORT                   5000
#   MLFLOW_ALLOWED_HOSTS          localhost,127.0.0.1,localhost:$MLFLOW_PORT,127.0.0.1:$MLFLOW_PORT
#                                 add the names clients use, e.g. mlflow.distillery.svc.cluster.local:5000
#   MLFLOW_WORKERS                4   (server worker processes)
#   MLFLOW_APP_NAME               unset; "basic-auth" turns on MLflow's basic auth (users and
#                                 permissions; its settings file is MLFLOW_AUTH_CONFIG_PATH, the
#                                 first admin's password MLFLOW_AUTH_ADMIN_PASSWORD)
# `python` on PATH must be the one with mlflow installed (the project's .venv, or the image's).
set -euo pipefail

STATE="${DISTILLERY_STATE:-.distillery}"
BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:///${STATE}/mlflow.db}"
ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-${STATE}/mlartifacts}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
ALLOWED_HOSTS="${MLFLOW_ALLOWED_HOSTS:-localhost,127.0.0.1,localhost:${PORT},127.0.0.1:${PORT}}"
WORKERS="${MLFLOW_WORKERS:-4}"
APP_ARGS=()
if [[ -n "${MLFLOW_APP_NAME:-}" ]]; then
    APP_ARGS=(--app-name "${MLFLOW_APP_NAME}")
fi

# Local stores need their folders; remote ones (postgresql://, s3://, ...) are left alone.
if [[ "${BACKEND_STORE_URI}" == sqlite:///* ]]; then
    mkdir -p "$(dirname "${BACKEND_STORE_URI#sqlite:///}")"
fi
if [[ "${ARTIFACTS_DESTINATION}" != *://* ]]; then
    mkdir -p "${ARTIFACTS_DESTINATION}"
fi

# Log where it stores things, with any password in the URI masked.
SHOWN_URI="$(printf '%s' "${BACKEND_STORE_URI}" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#')"
echo "mlflow server: backend ${SHOWN_URI}, artifacts ${ARTIFACTS_DESTINATION}, http://${HOST}:${PORT}" >&2

exec python -m mlflow server \
    --backend-store-uri "${BACKEND_STORE_URI}" \
    --artifacts-destination "${ARTIFACTS_DESTINATION}" \
    --serve-artifacts \
    --host "${HOST}" \
    --port "${PORT}" \
    --workers "${WORKERS}" \
    --allowed-hosts "${ALLOWED_HOSTS}" \
    "${APP_ARGS[@]}"
