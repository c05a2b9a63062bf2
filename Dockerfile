# syntax=docker/dockerfile:1
# eventmill: the service image. Build:  docker build -t eventmill .
# Run:  docker run -p 8080:8080 eventmill   (embedded SQLite bus and store in /var/lib/eventmill)
# Configuration is the EVENTMILL_* environment (see docs/operations/deployment.md).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- stage 1: build the eventmill wheel and the wheels of its dependencies ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels .

# -- stage 2: install the wheels into a virtual environment; no compiler, no sources -------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/eventmill/bin:$PATH \
    EVENTMILL_HOST=0.0.0.0 \
    EVENTMILL_PORT=8080 \
    EVENTMILL_DATA_DIR=/var/lib/eventmill
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/eventmill \
    && /opt/eventmill/bin/pip install --no-index --find-links=/wheels /wheels/eventmill-*.whl \
    && groupadd --system --gid 10001 eventmill \
    && useradd --system --uid 10001 --gid eventmill --home-dir /var/lib/eventmill \
       --no-create-home --shell /usr/sbin/nologin eventmill \
    && install -d -o eventmill -g eventmill -m 0750 /var/lib/eventmill
WORKDIR /var/lib/eventmill
USER 10001:10001
EXPOSE 8080
# The image has no curl: the health check is Python's own urllib against /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('EVENTMILL_PORT', '8080') + '/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["eventmill"]
CMD ["serve"]
