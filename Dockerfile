# Teller worker image.
#   build:   docker build -t teller:0.1.0 .
#            release builds pin the base image by digest in both FROM lines:
#            FROM python:3.11.7-slim-bookworm@sha256:<digest> (docs/operations.md "Supply chain")
#   run:     teller serve (the default); migrations are a separate one-off: `teller migrate`
#            (deploy/kustomize/base/migrate-job.yaml), never run by each replica.
# Stage 1 builds wheels for Teller and every dependency with the toolchain at hand,
# from the locked, hashed set (requirements/lock.txt, made by `./run lock`).
FROM python:3.11.7-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements/lock.txt ./requirements/lock.txt
RUN pip wheel --require-hashes --wheel-dir /wheels -r requirements/lock.txt
COPY pyproject.toml README.md LICENSE ./
COPY service ./service
COPY clients ./clients
RUN pip wheel --no-deps --wheel-dir /wheels .

# Stage 2 runs them: no compiler, no sources, no tests, no keys; a non-root user.
FROM python:3.11.7-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 teller \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin teller
COPY --from=build /wheels /wheels
# --no-index: only the wheels built (and hash-checked) above.
RUN pip install --no-index --no-deps /wheels/*.whl && rm -rf /wheels
USER 10001:10001
ENV TELLER_LISTEN=0.0.0.0:7402 TELLER_DATA_DIR=/tmp/teller
EXPOSE 7402 7403 9402
ENTRYPOINT ["teller"]
CMD ["serve"]
