#!/usr/bin/env bash
# GPU step 3: the serving benchmark on the trained checkpoints, after their evaluation ends.
set -u
source scripts/gpu/env.sh
while pgrep -f "models.evaluate" > /dev/null && [ "$SECONDS" -lt 300 ]; do sleep 10; done
tail -n 30 $RUNS/ddpm_eval.log
export ELBO_SERVE_MODELS=vae=$RUNS/vae/checkpoint,ddpm=$RUNS/ddpm/checkpoint
timeout "${BENCH_SECONDS:-330}" python3 -m load_tests.benchmark --parts raw,http \
    --batch-sizes 1,8,64,512 --raw-seconds 2 --http-seconds 3 --matmul-size 8192 \
    --torch-threads 0 --out $RUNS/benchmark_gpu.json > $RUNS/benchmark_gpu.log 2>&1
echo "benchmark exit $?"; tail -n 60 $RUNS/benchmark_gpu.log
snapshot; ls -la $OUT
