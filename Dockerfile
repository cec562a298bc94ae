# The node agent / control plane image. The same install script as the README and CI.
# bcc compiles the BPF programs at agent start, so the node's kernel headers must be mounted at
# /lib/modules and /usr/src (see deploy/), or the kernel must provide IKHEADERS.
FROM debian:12-slim
ENV ZTUNNEL_VENV=/opt/ztunnel-py
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts ./scripts
COPY ztunnel_py ./ztunnel_py
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 ca-certificates \
    && bash scripts/install.sh --no-dev \
    && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["/opt/ztunnel-py/bin/ztunnel-py"]
CMD ["agent"]
