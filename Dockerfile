# The signing platform's image: one image for every process (web, card gateway, webhook worker,
# the one-shot `platform_prepare`), chosen by the command (see docker-compose.yml).
#
# The base is pinned to an exact tag, the CPython the project is tested with. To pin it to the
# digest as well: docker buildx imagetools inspect python:3.11.7-slim-bookworm, then
# FROM python:3.11.7-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# Every requirement has a manylinux wheel: no compiler in the image.
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIGNPLATFORM_VAR_DIR=/var/lib/signplatform \
    SIGNPLATFORM_ENV_FILE=
# An unprivileged user owns var/ (the SQLite file when there is no DATABASE_URL, the key files,
# the simulator's keys); the code is root's and read-only for it.
RUN groupadd --system --gid 10001 signplatform \
 && useradd --system --uid 10001 --gid signplatform --home-dir /var/lib/signplatform --shell /usr/sbin/nologin signplatform \
 && install -d -m 0700 -o signplatform -g signplatform /var/lib/signplatform
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY . /app
# Static files collected at build time (nginx can serve them from a copy: deploy/nginx); the
# throw-away keys only let the settings load here and are not kept.
RUN SIGNPLATFORM_VAR_DIR=/tmp/build-var DJANGO_SECRET_KEY=build-only AUDIT_CHAIN_KEY=build-only \
    python manage.py collectstatic --noinput -v0 \
 && rm -rf /tmp/build-var \
 && python -m compileall -q /app
USER signplatform
VOLUME ["/var/lib/signplatform"]
EXPOSE 8000
STOPSIGNAL SIGTERM
CMD ["python", "manage.py", "runplatform", "--web-only", "--host", "0.0.0.0", "--port", "8000"]
