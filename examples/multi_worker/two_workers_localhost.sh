#!/usr/bin/env bash
# Two `tfmm train` workers on this machine, synchronised by MultiWorkerMirroredStrategy.
#
#   examples/multi_worker/two_workers_localhost.sh [TRAIN.csv VAL.csv] [RUN_DIR]
#
# Environment: PORT0/PORT1 (free localhost ports), EPOCHS (3), EXTRA_ARGS (more flags for
# `tfmm train`, e.g. "--text-encoder keras_nlp:/path/to/preset --modalities image").
# Without manifests it generates the small offline demo dataset first. Worker 0 is the
# chief: it alone writes RUN_DIR (config.yaml, model.keras, logs/, ...); worker 1 writes
# only its crash-recovery backup (RUN_DIR/backup/worker-1) and temporary files. Kill either
# worker (or both) and run this script again: training resumes at the interrupted epoch.
set -euo pipefail

TRAIN=${1:-}
VAL=${2:-}
RUN_DIR=${3:-runs/two_workers}
PORT0=${PORT0:-12345}
PORT1=${PORT1:-12346}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

if [[ -z "$TRAIN" ]]; then
  DATA=${DATA:-data/multi_worker_demo}
  python -c "from tfmm.data.demo_data import write_demo_dataset; write_demo_dataset('$DATA', n_train=360, n_val=90, n_test=90)"
  TRAIN=$DATA/train.csv VAL=$DATA/val.csv
fi

CLUSTER="{\"worker\": [\"localhost:$PORT0\", \"localhost:$PORT1\"]}"
pids=()
for INDEX in 0 1; do
  # Same command on every worker; only TF_CONFIG's task index differs.
  TF_CONFIG="{\"cluster\": $CLUSTER, \"task\": {\"type\": \"worker\", \"index\": $INDEX}}" \
    tfmm train --data "$TRAIN" --val-data "$VAL" --output-dir "$RUN_DIR" \
      --strategy multi_worker --batch-size 16 --epochs "${EPOCHS:-3}" --save-every 20 \
      --image-weights none --image-size 32 --sequence-length 16 ${EXTRA_ARGS:-} \
      > "worker$INDEX.log" 2>&1 &
  pids+=($!)
done
echo "workers started (logs: worker0.log, worker1.log)"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 2 worker0.log
exit $status
