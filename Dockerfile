# dicomnode for CUDA hosts (docs/deploy.md).
#   docker build -t dicomnode .
#   docker run --gpus all -p 11112:11112 -p 127.0.0.1:8080:8080 \
#       -v dicomnode-storage:/app/storage -v /etc/dicomnode:/app/config:ro dicomnode
#   docker compose up -d            # the node with Orthanc as a demo PACS (docker-compose.yml)
# The base image brings CUDA, cuDNN and a CUDA build of PyTorch; pip is told to keep it.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

# DICOMNODE_CONFIG: the configuration file (a missing file is an error, not silent defaults).
# DICOMNODE_WEB__HOST: the status page must listen on the container's interface to be
# published; publish it on an internal address only (it shows job details without a login).
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TCP_NODELAY=1 \
    DICOMNODE_CONFIG=/app/config/dicomnode.toml \
    DICOMNODE_WEB__HOST=0.0.0.0

# dcmtk: echoscu/storescu for operators inside the container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 dicomnode \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/dicomnode dicomnode

# Build from /src and remove it, so that /app/storage holds data only (not the storage package).
COPY setup.cfg pyproject.toml README.md /src/
COPY dicomnode/ /src/dicomnode/
COPY ai/ /src/ai/
COPY storage/ /src/storage/

# Pin torch to the version already in the base image so that pip never swaps
# the CUDA build for another one.
RUN python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > /tmp/torch.txt \
    && pip install --no-cache-dir -c /tmp/torch.txt "/src[postgres]" \
    && rm -rf /src /tmp/torch.txt

WORKDIR /app
COPY --chown=10001:10001 config/ config/
RUN mkdir -p /app/storage && chown 10001:10001 /app/storage

USER 10001:10001
# storage: incoming/, quarantine/, outputs/, the SQLite database and the audit log.
# config: dicomnode.toml (and TLS files); mount your own, read-only.
VOLUME ["/app/storage", "/app/config"]
# 11112: DICOM (node.port); 8080: status page, JSON API, /metrics, /healthz (web.port).
EXPOSE 11112 8080

# A real DICOM round trip (C-ECHO), not just "the process exists". If you change
# node.ae_title or node.port, or restrict allowed_calling_aes/allowed_hosts, make
# sure DICOMNODE from 127.0.0.1 is still let in, or override the health check.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["dicomnode", "echo", "DICOMNODE@127.0.0.1:11112", "--timeout", "5"]

# SIGTERM stops the listener, lets running jobs finish (up to 60 s each) and exits:
# give it time (docker stop -t 300; compose: stop_grace_period).
ENTRYPOINT ["dicomnode"]
CMD ["serve"]
