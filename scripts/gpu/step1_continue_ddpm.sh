#!/usr/bin/env bash
# GPU step 1, second form: train the bundled DDPM further instead of from scratch. The first
# GPU session's 11,000 steps left DDIM-50 at 15.8x the real-data floor (goal 3x) with the loss
# still falling; a session's state.pt (optimizer and EMA, ~100 MB) cannot come back from the
# machine, so each session starts from the committed weights (--start-from: fresh optimizer
# and warm-up, EMA from those weights) and adds what its minutes allow. Meanwhile: the CUDA
# tests of what changed since the last GPU run, and whether the CUDA peak gauge moves.
set -u
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, bentoml; print('torch', torch.__version__, 'bentoml', bentoml.__version__, torch.cuda.get_device_name())" || exit 1
DDPM_MINUTES=${DDPM_MINUTES:-12}
setsid nohup python3 -m models.train ddpm --config configs/ddpm_fmnist_large.json \
    --start-from checkpoints/ddpm --out $RUNS/ddpm --device cuda --threads 4 \
    --time-limit-minutes "$DDPM_MINUTES" > $RUNS/ddpm_train.log 2>&1 < /dev/null &
sleep 45
tail -c 400 $RUNS/ddpm_train.log; echo; tail -n 1 $RUNS/ddpm/train_log.jsonl
ELBO_SERVE_DEVICE=cuda timeout 240 python3 -m pytest -q -p no:cacheprovider -ra \
    tests/models/test_respacing.py tests/models/test_samplers.py tests/models/test_train.py \
    tests/service/test_metrics.py tests/service/test_endpoints.py tests/service/test_bad_input_catalogue.py \
    > $OUT/tests_cuda.log 2>&1
echo "pytest exit $?"; tail -n 30 $OUT/tests_cuda.log
timeout 120 python3 scripts/gpu/cuda_memory_gauges.py | tee $OUT/cuda_memory_gauges.txt
tail -n 1 $RUNS/ddpm/train_log.jsonl
snapshot; ls -la $OUT
