# syntax=docker/dockerfile:1
# The ztunnel-py image: one runtime-only image that runs as the node agent, the control plane,
# a waypoint or the CNI node installer, chosen by its arguments (deploy/ passes them):
#   ztunnel-py agent | controlplane run ... | waypoint run ... | cni-node ...
#
# BASE_IMAGE defaults to Debian 12 slim from a registry. Where no registry is reachable,
# scripts/build-image.sh builds the same base from Debian's archive with debootstrap and passes
# it here (see the README, "Install on Kubernetes").
#
# Neither bcc (LLVM and clang: about 220 MB) nor kernel headers are in the image: the capture
# programs ship as a bytecode bundle (ztunnel_py/redirect/bpf/redirect.bundle.json), which
# scripts/build-image.sh compiles on the build host with bcc before this build (or run
# `ztunnel-py bpf bundle -o ztunnel_py/redirect/bpf/redirect.bundle.json` before `docker
# build`); the agent loads it with bpf(2). The build fails when the bundle is missing or was
# built from other sources.
ARG BASE_IMAGE=debian:12-slim

FROM ${BASE_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's stable archive keeps only the current version of each package, so pinning exact
# versions would break the build at every point release; the base image pins the release.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 python3-venv gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ztunnel_py ./ztunnel_py
# A regular (not editable) install: the venv holds the package and its pinned dependencies.
# Then what never runs here goes: the Kubernetes client's asyncio twin (kubernetes/aio, 68 MB
# with its bytecode; we use the synchronous client) and aiohttp and the packages only it needs
# (the client requires them for kubernetes/aio alone), the packages' own test suites, and the
# symbols of the compiled extensions. The import check after it fails the build if any of that
# was needed after all. The bytecode stays: the image's filesystem is read-only at run time,
# so without it every start would compile the sources again.
# The CNI host shim is C, linked statically: it runs on the node, outside this image.
# The optional build secret `pip-ca` is a CA bundle for reaching the package index through a
# TLS-inspecting proxy (scripts/build-image.sh passes the build machine's); it stays out of
# the image.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && python3 -m venv /opt/ztunnel-py \
    && /opt/ztunnel-py/bin/pip install --no-cache-dir --disable-pip-version-check -q . \
    && /opt/ztunnel-py/bin/pip uninstall -y -q aiohttp aiohttp-retry aiosignal aiohappyeyeballs \
        frozenlist multidict yarl propcache \
    && /opt/ztunnel-py/bin/pip uninstall -y -q setuptools pip \
    && site="$(/opt/ztunnel-py/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
    && rm -rf "$site/kubernetes/aio" \
    && find "$site" -type d \( -name tests -o -name _tests \) -prune -exec rm -rf {} + \
    && find "$site" -name '*.so' -exec strip --strip-unneeded {} + \
    && /opt/ztunnel-py/bin/python -c 'import kubernetes, kubernetes.client, ztunnel_py.cli' \
    && /opt/ztunnel-py/bin/python -c 'import sys; from ztunnel_py.redirect import compile as c; \
sys.exit(c.mismatch(c.read_bundle(c.packaged_bundle()), c.build_key(c.packaged_sources())))' \
    && mkdir -p /opt/ztunnel-py/cni \
    && gcc -O2 -static -Wall -Wextra -Werror -o /opt/ztunnel-py/cni/ztunnel-py-cni \
        ztunnel_py/cni/shim/ztunnel-py-cni.c

FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Same reason as above for not pinning versions.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb
COPY --from=build /opt/ztunnel-py /opt/ztunnel-py
RUN /opt/ztunnel-py/bin/python -c 'import ztunnel_py.cli' \
    && ln -s /opt/ztunnel-py/bin/ztunnel-py /usr/local/bin/ztunnel-py
ENV PATH=/opt/ztunnel-py/bin:$PATH
ENTRYPOINT ["/opt/ztunnel-py/bin/ztunnel-py"]
CMD ["agent"]
