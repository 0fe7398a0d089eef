# The dispatcher image: the Celery worker by default; the same image runs the
# `dispatcher` command (status, dlq, simulate, ...).
#
#   docker build -t vicidial-lead-dispatcher .
#   docker run --env-file .env vicidial-lead-dispatcher            # a worker
#   docker run --env-file .env vicidial-lead-dispatcher dispatcher status
#   docker build --target monitoring -t vicidial-lead-dispatcher-monitoring .   # + Flower
#
# No configuration or secret is baked in: everything comes from DISPATCHER_*
# variables at run time (docker-compose.yml passes .env). .dockerignore is an
# allow-list, so a .env lying in the checkout never reaches the build context.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: wheels for the dependencies and the project ----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers stay in this stage: a dependency without a wheel for the target
# platform is compiled here, never shipped.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# The dependencies, read from the project's own metadata (pyproject.toml), in a
# layer of their own: rebuilt when pyproject.toml changes, not on a code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; \
deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip wheel --wheel-dir /wheels/deps -r requirements.txt \
    && cp requirements.txt /wheels/deps/requirements.txt

# Then the code.
COPY README.md ./
COPY dispatcher ./dispatcher
COPY workers ./workers
RUN pip wheel --no-deps --wheel-dir /wheels/project .

# --- runtime: what every variant of the image holds ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 dispatcher \
    && useradd --system --uid 10001 --gid dispatcher --create-home \
       --shell /usr/sbin/nologin dispatcher

COPY --from=build /wheels/deps /wheels/deps
RUN pip install --no-index --find-links /wheels/deps -r /wheels/deps/requirements.txt \
    && rm -rf /wheels/deps
COPY --from=build /wheels/project /wheels/project
RUN pip install --no-index --no-deps /wheels/project/*.whl \
    && rm -rf /wheels

USER dispatcher
WORKDIR /home/dispatcher

# --- monitoring: the same plus Flower (the `monitoring` extra of pyproject.toml),
# built from this Dockerfile so that no third-party image has to be pulled. Not
# the default target: the worker image carries no web UI it does not use.
FROM runtime AS monitoring
USER root
COPY --from=build /wheels/project /wheels/project
RUN whl=$(ls /wheels/project/*.whl) \
    && pip install "${whl}[monitoring]" \
    && rm -rf /wheels
USER dispatcher
EXPOSE 5555

# --- the worker image (the default target) ------------------------------------
FROM runtime

# Healthy = Redis answers, this container's worker wrote a heartbeat in the last
# 30 s (its scheduler thread runs) and its consumer loop answers a ping sent
# through the broker: it consumes, not merely exists.
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
    CMD ["dispatcher", "health", "--worker", "--timeout", "5"]

# Celery's warm shutdown on SIGTERM finishes the calls in flight: give it the
# stop timeout of docker-compose.yml (stop_grace_period) when run by hand, e.g.
# `docker stop -t 40`. Pool and concurrency: measured, see docs/DEPLOYING.md.
STOPSIGNAL SIGTERM
CMD ["celery", "-A", "workers", "worker", "--loglevel", "INFO", "--pool", "threads", "--concurrency", "64", "--without-gossip", "--without-mingle"]
