# comfyui with the plugins of this repository: the image of docker-compose.yml's frontend and workers.
#
#   docker build -t comfyui .
#   docker run -p 8188:8188 -v "$PWD:/workspace" comfyui            # one process, no broker
#
# torch comes from PyPI (CUDA builds on Linux x86-64). For a smaller CPU-only image:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t comfyui .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/comfyui
# Only what the distributions need, so a checkout's virtualenvs and outputs stay out of the image.
COPY pyproject.toml requirements.txt README.md ./
COPY kernel ./kernel
COPY plugins ./plugins
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
 && pip install -r requirements.txt

# Models, inputs, outputs and custom nodes live under the working directory (--cwd).
WORKDIR /workspace
EXPOSE 8188
CMD ["comfyui", "--listen", "0.0.0.0", "--port", "8188", "--cwd", "/workspace"]
