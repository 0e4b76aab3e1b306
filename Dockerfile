# edgetune images, one Dockerfile, two targets:
#   docker build --target api    -t edgetune-api .     # HTTP API + `edgetune db upgrade`; no torch
#   docker build --target worker -t edgetune-worker .  # probing worker, with torch (CUDA wheels)
# docker-compose.yml wires them to PostgreSQL: postgres → migrate (one-shot) → api, worker.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    EDGETUNE_DATA_ROOT=/data \
    EDGETUNE_DATA_DIR=/srv/edgetune/.edgetune
# The data dir is set, not the per-user default: a container may run as a UID with no home.
RUN useradd --create-home --uid 10001 edgetune
WORKDIR /srv/edgetune
# Packaging metadata and empty packages only: the dependency layers below are rebuilt when
# pyproject.toml changes, not on every code change (torch alone is gigabytes).
COPY pyproject.toml README.md ./
RUN mkdir -p app/static app/migrations/versions worker edgetune edgetune_cli \
    && touch app/__init__.py worker/__init__.py edgetune/__init__.py edgetune_cli/__init__.py \
    && mkdir .edgetune && chown edgetune .edgetune

# The API: the package without its `worker` extra, so no torch in this image. It also runs the
# one-shot migration (`edgetune db upgrade`) in docker-compose.yml.
FROM base AS api
# Editable, so the code copied below is what runs (alembic.ini too, for `alembic` from a shell).
RUN pip install -e '.[server]'
COPY alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY edgetune ./edgetune
COPY edgetune_cli ./edgetune_cli
# Listening beyond loopback: API keys are required (auth may be off only on loopback).
ENV EDGETUNE_HOST=0.0.0.0
USER edgetune
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
# The API alone (`edgetune serve` would also start a worker, which needs torch): the app factory,
# with Settings from the EDGETUNE_* variables.
CMD ["uvicorn", "--factory", "app.main:app_from_env", "--http", "app.main:ProblemHttpProtocol", "--host", "0.0.0.0", "--port", "8000"]

# A worker: one per GPU (`edgetune worker --device cuda:N`), any number on one database.
FROM base AS worker
RUN pip install -e '.[worker]'
COPY alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY edgetune ./edgetune
COPY edgetune_cli ./edgetune_cli
USER edgetune
CMD ["edgetune", "worker"]
