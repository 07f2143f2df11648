# The ops image the self-management pipeline runs its jobs in (built by the build-ops-image job,
# pinned per commit). It holds the bidsflux CLI and the docker CLI for `docker stack deploy`.
FROM python:3.11-slim-bookworm
# docker.io is Debian's only package with the docker CLI in bookworm; the daemon in it never runs here.
RUN apt-get update \
 && apt-get install -y --no-install-recommends docker.io docker-compose git ca-certificates age rclone \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/bidsflux
# `bidsflux --version` names the commit (the image has no .git): docker build --build-arg BIDSFLUX_COMMIT=$CI_COMMIT_SHA
ARG BIDSFLUX_COMMIT=""
ENV BIDSFLUX_COMMIT=$BIDSFLUX_COMMIT
COPY pyproject.toml README.md ./
COPY scripts ./scripts
RUN pip install --no-cache-dir . && bidsflux --version
# Jobs run in their checkout, which holds stack/ and schemas/.
ENTRYPOINT []
