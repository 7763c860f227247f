#!/usr/bin/env bash
# Fills wheelhouse/ (the image's build context) with the torch wheel and a constraints file of
# the versions installed in the project's virtual environment, so the image runs the versions
# the test suite passed with.
#   deploy/docker/wheelhouse.sh VENV [TORCH_INDEX_URL]
# Without TORCH_INDEX_URL, pip's own configuration finds the wheel (here: a local CPU build);
# elsewhere pass https://download.pytorch.org/whl/cpu, since PyPI's default torch is the CUDA one.
set -euo pipefail
venv="$1"
index="${2:-}"
mkdir -p wheelhouse
if ! ls wheelhouse/torch-2.13.0*.whl >/dev/null 2>&1; then
    "$venv/bin/pip" download --quiet --no-deps --only-binary=:all: -d wheelhouse \
        ${index:+--index-url "$index"} torch==2.13.0
fi
# torch is left out: the wheel above decides its build (+cpu here, +cuXXX for a CUDA image).
"$venv/bin/pip" freeze --exclude-editable | grep -v -i '^torch==' > wheelhouse/constraints.txt
# Behind a TLS-intercepting proxy pip inside the build needs the proxy's CA, as pip here does.
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
    cp "$PIP_CERT" wheelhouse/pip-ca.crt
else
    rm -f wheelhouse/pip-ca.crt
fi
ls -l wheelhouse
