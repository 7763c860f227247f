# Sourced by every step of a GPU session (see scripts/gpu/README.md): the service's Python
# dependencies from the carried wheelhouse (the GPU machine has no registry), the carried
# Fashion-MNIST files, unbuffered output.
export PYTHONUNBUFFERED=1 BENTOML_DO_NOT_TRACK=true
export ELBO_SERVE_FASHION_MNIST="$PWD/.data/fashion-mnist"
if [ ! -d /tmp/site/bentoml ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD"
# The real-server tests start `bentoml` from the interpreter's bin directory, and the data
# tests read Debian's path: give both what a `make install data` machine has.
BENTOML_CLI="$(python3 -c 'import sys; print(sys.prefix)')/bin/bentoml"
if [ ! -x "$BENTOML_CLI" ]; then
    printf '#!/bin/sh\nexec python3 -m bentoml "$@"\n' > "$BENTOML_CLI" && chmod +x "$BENTOML_CLI"
fi
if [ ! -e /usr/share/datasets/fashion-mnist ]; then
    mkdir -p /usr/share/datasets && ln -s "$ELBO_SERVE_FASHION_MNIST" /usr/share/datasets/fashion-mnist
fi
RUNS=/tmp/runs
mkdir -p "$RUNS"

# What this call brings back: each run's export (with its card once evaluated) and train log,
# and every log of the session, as at most three files under $OUT.
snapshot() {
    for kind in vae ddpm; do
        if [ -d "$RUNS/$kind/checkpoint" ]; then
            tar cf "$OUT/$kind.tar" -C "$RUNS/$kind" checkpoint train_log.jsonl
        fi
    done
    tar cf "$OUT/logs.tar" -C "$RUNS" $(cd "$RUNS" && ls *.log *.json 2>/dev/null)
}
