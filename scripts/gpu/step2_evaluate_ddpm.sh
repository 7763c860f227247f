#!/usr/bin/env bash
# GPU step 2: when the DDPM run reaches its time limit, evaluate it (setsid: the evaluation
# outlives this call while the machine is held); bring back whatever is finished by the end.
set -u
source scripts/gpu/env.sh
while pgrep -f "models.train ddpm" > /dev/null && [ "$SECONDS" -lt 400 ]; do sleep 10; done
tail -n 2 $RUNS/ddpm/train_log.jsonl; tail -c 300 $RUNS/ddpm_train.log; echo
if ! pgrep -f "models.evaluate $RUNS/ddpm" > /dev/null; then
    setsid nohup python3 -m models.evaluate $RUNS/ddpm/checkpoint --device cuda --tf32 \
        --threads 8 --network-batch 2048 > $RUNS/ddpm_eval.log 2>&1 < /dev/null &
fi
while pgrep -f "models.evaluate" > /dev/null && [ "$SECONDS" -lt "${STEP_SECONDS:-570}" ]; do
    sleep 15
    tail -c 200 $RUNS/ddpm_eval.log | tr '\r' '\n' | tail -n 1
done
tail -n 30 $RUNS/ddpm_eval.log; tail -n 30 $RUNS/vae.log
snapshot; ls -la $OUT
