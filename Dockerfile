# elbo-serve: the BentoML service on the bundled checkpoints, port 3000. `make image` builds it
# (here: a Debian base built by debootstrap and PyTorch from a local wheelhouse, since no image
# registry is reachable); `make image-test` runs it and checks every part a user touches.
#
# The same file builds unchanged where the public registries are reachable:
#   docker build -t elbo-serve .
# which starts from debian:bookworm-slim and takes the CPU wheel from PyTorch's CPU index.
# CUDA: the PyTorch CUDA wheel brings its CUDA libraries with it, so only the wheel changes:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 \
#       -t elbo-serve:cuda .   (an empty wheelhouse/, or one holding the CUDA wheel)
#   docker run --gpus all -p 3000:3000 elbo-serve:cuda
# Your own models: mount a model repository read-only and point at it:
#   docker run -p 3000:3000 -v /srv/models:/models:ro -e ELBO_SERVE_MODEL_DIR=/models elbo-serve
ARG BASE_IMAGE=debian:bookworm-slim

# Stage 1: the virtual environment, built where the wheelhouse is, so that neither the wheel
# nor pip's build files end up in the image's layers.
FROM ${BASE_IMAGE} AS build
# Used only when wheelhouse/ holds no torch wheel; the default index would pull CUDA packages.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# bookworm's Python is 3.11, the version the project pins.
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /build
# wheelhouse/ may hold a torch wheel (used as is), constraints.txt (the versions the test
# suite passed with, written by `make image`) and pip-ca.crt (the CA bundle pip needs behind a
# TLS-intercepting proxy, used for this stage only); all three are optional.
COPY wheelhouse/ wheelhouse/
COPY pyproject.toml ./
# The project's dependencies, not the project: its code is copied as is into the final stage.
# pyproject.toml names README.md as the readme; an empty one will do, so that editing the
# README does not reinstall every package.
RUN set -eu; \
    touch README.md; \
    if [ -f wheelhouse/pip-ca.crt ]; then export PIP_CERT="$PWD/wheelhouse/pip-ca.crt"; fi; \
    constraints=""; \
    if [ -f wheelhouse/constraints.txt ]; then constraints="-c wheelhouse/constraints.txt"; fi; \
    wheel="$(ls wheelhouse/torch-2.13.0*.whl 2>/dev/null | head -n 1)"; \
    if [ -n "$wheel" ]; then pip install $constraints "./$wheel"; \
    else pip install $constraints --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi; \
    mkdir -p models service; touch models/__init__.py service/__init__.py; \
    pip install $constraints .; \
    pip uninstall -y elbo-serve
# The code and checkpoints, owned by root with files 0644 and folders 0755 whatever their modes
# in the build context (safetensors writes weights 0600), so the service's user can read but
# not change them.
COPY models /app/models
COPY service /app/service
COPY pyproject.toml /app/
COPY checkpoints/vae /app/checkpoints/vae
COPY checkpoints/ddpm /app/checkpoints/ddpm
# Compiled here because the service cannot write its bytecode at run time.
RUN find /app -name __pycache__ -prune -exec rm -rf {} + \
    && python -m compileall -q /app/models /app/service \
    && chmod -R u=rwX,go=rX /app

# Stage 2: the service.
FROM ${BASE_IMAGE}
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin elbo
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    BENTOML_DO_NOT_TRACK=true \
    BENTOML_HOME=/tmp/bentoml \
    ELBO_SERVE_MODEL_DIR=/app/checkpoints
WORKDIR /app
# The service writes only under /tmp (BentoML's home and its Prometheus files), so the
# container also runs with a read-only root (--read-only --tmpfs /tmp).
COPY --from=build /app /app

USER 10001:10001
EXPOSE 3000
# BentoML finishes the requests in flight on SIGTERM, then exits (README: Faults).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://localhost:3000/readyz', timeout=4).status != 200)"
CMD ["bentoml", "serve", "--host", "0.0.0.0", "--port", "3000"]
