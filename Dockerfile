# bytropix server (CPU). Build:  docker build -t bytropix-serve .
# Run an export:                 docker run --rm -p 8000:8000 -v $PWD/exports/small:/model:ro bytropix-serve
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 OMP_NUM_THREADS=4
WORKDIR /app
# CPU wheels of PyTorch first (the default index would pull the CUDA build)
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch
COPY pyproject.toml README.md ./
COPY bytropix ./bytropix
RUN pip install ".[serve]"
RUN useradd --create-home --uid 10001 bytropix
USER bytropix
EXPOSE 8000
# /health answers without an API key; the slim image has no curl, so Python asks
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
# the container's network namespace is the boundary: bind to all its interfaces; set BYTROPIX_API_KEYS when exposed
ENTRYPOINT ["bytropix", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
