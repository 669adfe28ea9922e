#!/usr/bin/env bash
# DASD with verl 0.9 on one 8-GPU node (see examples/verl/dasd_countdown.yaml).
# Needs a separate environment with verl (pip install 'dasd[verl]' plus verl's vllm extra);
# verl pins transformers<5.11 and, in its GPU extras, torch==2.11, so it cannot share the
# project's .venv. Extra hydra overrides pass through, e.g. actor_rollout_ref.model.path=...
set -euo pipefail
cd "$(dirname "$0")/../.."
export DASD_VERL_DATA="${DASD_VERL_DATA:-data/verl-countdown}"
python examples/verl/prepare_data.py --out "$DASD_VERL_DATA"
python -m verl.trainer.main_ppo \
    --config-path="$PWD/examples/verl" --config-name=dasd_countdown "$@"
# Then, in the project environment:
#   dasd-analyze import verl runs-verl/dasd-countdown/rollouts --task countdown --method dasd
#   dasd-analyze import verl runs-verl/dasd-countdown/validation --split eval --task countdown \
#       --method dasd --name verl-dasd-countdown-eval
