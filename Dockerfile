# elbo-serve on CPU: the BentoML service on the bundled checkpoints at port 3000.
#   docker build -t elbo-serve . && docker run -p 3000:3000 elbo-serve
# Your own models: mount a model repository and point at it, e.g.
#   docker run -p 3000:3000 -v /srv/models:/models -e ELBO_SERVE_MODEL_DIR=/models elbo-serve
FROM python:3.11-slim

ENV BENTOML_DO_NOT_TRACK=true \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    ELBO_SERVE_MODEL_DIR=/app/checkpoints
WORKDIR /app

# torch first, from the CPU wheel index (the default index pulls CUDA packages).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY models ./models
COPY service ./service
RUN pip install .

COPY checkpoints/vae ./checkpoints/vae
COPY checkpoints/ddpm ./checkpoints/ddpm

EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://localhost:3000/readyz', timeout=4).status != 200)"
CMD ["bentoml", "serve", "--host", "0.0.0.0", "--port", "3000"]
