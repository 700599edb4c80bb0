# dicomnode for CUDA hosts.
#   docker build -t dicomnode .
#   docker run --gpus all -p 11112:11112 -v dicomnode-storage:/app/storage dicomnode
# The base image brings CUDA, cuDNN and a CUDA build of PyTorch; pip is told to keep it.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TCP_NODELAY=1

# dcmtk: echoscu/storescu for the health check and for operators inside the container.
RUN apt-get update \
    && apt-get install -y --no-install-recommends dcmtk \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 dicomnode \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/dicomnode dicomnode

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY dicomnode/ dicomnode/
COPY ai/ ai/
COPY storage/ storage/
COPY config/ config/

# Pin torch to the version already in the base image so that pip never swaps
# the CUDA build for another one.
RUN python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > /tmp/torch.txt \
    && pip install --no-cache-dir -c /tmp/torch.txt ".[postgres]" \
    && mkdir -p /app/storage/incoming \
    && chown -R 10001:10001 /app/storage /app/config

USER 10001:10001
VOLUME ["/app/storage", "/app/config"]
EXPOSE 11112

# A real DICOM round trip (C-ECHO), not just "the process exists".
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["dicomnode", "echo", "DICOMNODE@127.0.0.1:11112", "--timeout", "5"]

ENTRYPOINT ["dicomnode"]
CMD ["serve", "--config", "config/dicomnode.toml"]
