#!/usr/bin/env bash
# GPU step 3: the serving benchmark, on this session's trained runs when step 1 made them, else
# on the bundled checkpoints.
set -u
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, bentoml; print('torch', torch.__version__, 'bentoml', bentoml.__version__, torch.cuda.get_device_name())" || exit 1
while pgrep -f "models.evaluate" > /dev/null && [ "$SECONDS" -lt 300 ]; do sleep 10; done
if [ -d $RUNS/vae/checkpoint ] && [ -d $RUNS/ddpm/checkpoint ]; then
    export ELBO_SERVE_MODELS=vae=$RUNS/vae/checkpoint,ddpm=$RUNS/ddpm/checkpoint
fi
timeout "${BENCH_SECONDS:-330}" python3 -m load_tests.benchmark --parts raw,http \
    --batch-sizes 1,8,64,512 --raw-seconds 2 --http-seconds 3 --matmul-size 8192 \
    --torch-threads 0 --out $RUNS/benchmark_gpu.json > $RUNS/benchmark_gpu.log 2>&1
echo "benchmark exit $?"; tail -n 80 $RUNS/benchmark_gpu.log
snapshot; cp $RUNS/benchmark_gpu.json $RUNS/benchmark_gpu.log $OUT/ 2>/dev/null; ls -la $OUT
