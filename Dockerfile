# The ops image the self-management pipeline runs its jobs in (built by the build-ops-image job,
# pinned per commit): the bidsflux CLI, the docker CLI for `docker stack deploy`, and age and
# rclone for `bidsflux backup`.
#   docker build --build-arg BASE_IMAGE=debian:bookworm-slim -t ops .
# BASE_IMAGE is any Debian bookworm image (a local mirror on air-gapped sites; tests use a local
# one). Layers go from what changes least to what changes most: a changed Python file rebuilds
# only the last layer. An optional `extra-ca.crt` in the build context is the CA bundle pip uses
# (sites behind a TLS-inspecting proxy); it never reaches the final image.
ARG BASE_IMAGE=debian:bookworm-slim

# The docker CLI alone, unpacked from Debian's docker.io package (bookworm has no CLI-only
# package); the daemon, containerd and runc it would pull in never run in a job.
FROM ${BASE_IMAGE} AS docker-cli
RUN apt-get update -qq \
 && cd /tmp && apt-get download -qq docker.io \
 && dpkg-deb --fsys-tarfile docker.io_*.deb | tar -x ./usr/bin/docker \
 && mv /tmp/usr/bin/docker /docker && rm -rf /tmp/* /var/lib/apt/lists/*

# Dependencies only (from pyproject.toml), so code changes reuse this layer.
FROM ${BASE_IMAGE} AS deps
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml extra-ca.cr[t] /tmp/build/
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/build/requirements.txt \
 && python3 -m venv /opt/bidsflux/venv \
 && cert=/etc/ssl/certs/ca-certificates.crt && if [ -f /tmp/build/extra-ca.crt ]; then cert=/tmp/build/extra-ca.crt; fi \
 && /opt/bidsflux/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check --cert "$cert" \
      -r /tmp/build/requirements.txt \
 && /opt/bidsflux/venv/bin/pip uninstall --quiet -y pip setuptools \
 && find /opt/bidsflux/venv -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /tmp/build

FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends python3 ca-certificates age rclone >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
COPY --from=docker-cli /docker /usr/local/bin/docker
COPY --from=deps /opt/bidsflux/venv /opt/bidsflux/venv
# The package itself: plain source on the path, no build step, so this layer is the code alone.
ENV PATH=/opt/bidsflux/venv/bin:$PATH PYTHONPATH=/opt/bidsflux/lib PYTHONDONTWRITEBYTECODE=1
RUN printf '#!/opt/bidsflux/venv/bin/python\nfrom bidsflux.cli import main\nmain()\n' > /opt/bidsflux/venv/bin/bidsflux \
 && chmod 755 /opt/bidsflux/venv/bin/bidsflux
COPY scripts/bidsflux /opt/bidsflux/lib/bidsflux
# `bidsflux --version` names the commit (the image has no .git): docker build --build-arg BIDSFLUX_COMMIT=$CI_COMMIT_SHA
ARG BIDSFLUX_COMMIT=""
ENV BIDSFLUX_COMMIT=$BIDSFLUX_COMMIT
RUN bidsflux --version && docker --version
# Jobs run in their checkout, which holds stack/ and schemas/.
ENTRYPOINT []
