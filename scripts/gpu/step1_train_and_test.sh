#!/usr/bin/env bash
# GPU step 1: start both trainings (setsid: they outlive this call while the machine is held),
# evaluate the VAE when its run ends, and run the model and service suites on CUDA meanwhile.
set -u
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, bentoml, pydantic; print('torch', torch.__version__, 'bentoml', bentoml.__version__, 'pydantic', pydantic.__version__, torch.cuda.get_device_name())" || exit 1
DDPM_MINUTES=${DDPM_MINUTES:-13.5}
VAE_MINUTES=${VAE_MINUTES:-7}
setsid nohup python3 -m models.train ddpm --config configs/ddpm_fmnist_large.json \
    --out $RUNS/ddpm --device cuda --threads 4 --time-limit-minutes "$DDPM_MINUTES" \
    > $RUNS/ddpm_train.log 2>&1 < /dev/null &
setsid nohup bash -c "python3 -m models.train vae --config configs/vae_fmnist_large.json \
    --out $RUNS/vae --device cuda --threads 4 --time-limit-minutes $VAE_MINUTES \
    && python3 -m models.evaluate $RUNS/vae/checkpoint --device cuda --tf32 --threads 4 \
       --iwae-images 10000" > $RUNS/vae.log 2>&1 < /dev/null &
sleep 60
for kind in ddpm vae; do tail -c 400 $RUNS/${kind}*.log; echo; tail -n 1 $RUNS/$kind/train_log.jsonl; done
ELBO_SERVE_DEVICE=cuda timeout 400 python3 -m pytest -q -p no:cacheprovider -ra \
    --ignore=tests/service/test_load_smoke.py tests/models tests/service > $OUT/tests_cuda.log 2>&1
echo "pytest exit $?"; tail -n 40 $OUT/tests_cuda.log
python3 scripts/gpu/same_files_cpu_cuda.py | tee $OUT/same_files.txt
for kind in ddpm vae; do tail -n 1 $RUNS/$kind/train_log.jsonl; done
tail -c 1500 $RUNS/vae.log
snapshot; ls -la $OUT
