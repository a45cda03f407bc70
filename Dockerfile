# The VX11 image: the gateway (gunicorn), the Celery workers and Flower all run from it;
# compose.yaml gives each service its command.
#
# BASE_IMAGE: any Debian-based image with python3 (3.11 or later) and its venv module.
# The default is the official one; the compose test (scripts/test-compose) builds on a
# stand-in made from Debian's packages, where no image registry is reachable.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# VX11 lives in its own virtualenv, on PATH: the same on either base, and apart from
# the base's own Python packages.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/vx11 \
    PATH=/opt/vx11/bin:$PATH

# bubblewrap gives the workers their strongest sandbox level, bwrap (docs/security.md);
# it needs 0.8.0 or later (--disable-userns). Debian's bwrap is not setuid: it relies on
# unprivileged user namespaces, so installing it gives no program in the image new
# privileges. The gateway and Flower share the image and never run it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# Installed as a regular (non-editable) package, with the PostgreSQL driver, at the
# versions of requirements.lock: the ones the test suite ran. The source tree is not kept.
WORKDIR /src
COPY pyproject.toml setup.cfg README.md celeryconfig.py requirements.lock ./
COPY vx11/ vx11/
COPY workers/ workers/
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install -c requirements.lock ".[postgres]" \
    && rm -rf /src \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin vx11

WORKDIR /app

# The gateway and Flower run as this unprivileged user. The worker service runs as root
# (compose.yaml sets `user: root`) only so that the sandbox can switch each spawn to an
# unprivileged uid of its own (VX11_SANDBOX_UIDS); spawned code never runs as root.
USER vx11

EXPOSE 8000 5555

# The gateway's command, as compose.yaml gives it (vx11.cli.stack.gunicorn_argv).
CMD ["gunicorn", "--worker-class", "gthread", "--workers", "2", "--threads", "32", \
     "--bind", "0.0.0.0:8000", "--graceful-timeout", "10", \
     "--logger-class", "vx11.gateway.request_log.GunicornLogger", "vx11:create_app()"]
