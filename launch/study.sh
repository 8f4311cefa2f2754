#!/usr/bin/env bash
# The real-data study of docs/study.md: Hacker News "Who is hiring?" postings, candidate pool of
# Bias-in-Bios + tech-speaker bios, a GPT-2-shaped model trained from scratch with BC, then ILQL
# and A-LoL from that BC policy, evaluated on the eval split against the original postings.
#
#   bash launch/study.sh cpu     # 2-core CPU budget (mini model, ~30 min)
#   bash launch/study.sh gpu     # one GPU (GPT-2 small shapes, bf16 + cuDNN attention)
#   bash launch/study.sh smoke   # seconds: checks the commands end to end
#
# DATA (default ../shared/data) holds hn_jobs/, bios/, tech_bios/; OUT (default runs/study-PROFILE)
# receives everything. The data never enters the repository. Every stage resumes when re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${1:-cpu}"
DATA="${DATA:-../shared/data}"
OUT="${OUT:-runs/study-$PROFILE}"
POOLS="$DATA/bios/bios.jsonl,$DATA/tech_bios/bios.jsonl"
LIMIT=0
case "$PROFILE" in
  smoke) MODEL=(--config.model.demo_size=tiny --config.model.demo_vocab_size=1000
                --config.data.max_len=128 "--config.data.buckets=(128,)" --config.optim.batch_size=8)
         BC=4; RL=4; NEW=16; PROMPT=96; EVAL_BATCH=8; LIMIT=8 ;;
  cpu)   MODEL=(--config.model.demo_size=mini --config.model.demo_vocab_size=4000
                --config.data.max_len=256 "--config.data.buckets=(128,256)" --config.optim.batch_size=8)
         BC=400; RL=200; NEW=0; PROMPT=0; EVAL_BATCH=16 ;;  # NEW=0: from the data, capped at half the context
  gpu)   MODEL=(--config.model.demo_size=small --config.model.demo_vocab_size=8000
                --config.model.dtype=bfloat16 --config.model.attention=cudnn
                --config.data.max_len=512 "--config.data.buckets=(256,512)" --config.optim.batch_size=32)
         BC=500; RL=200; NEW=0; PROMPT=0; EVAL_BATCH=64 ;;
  *) echo "usage: $0 smoke|cpu|gpu" >&2; exit 2 ;;
esac
mkdir -p "$OUT/data"

# 1. Rewards: every run trains on the diversity reward of the postings (candidate matching on the
# pool), scored when its data is built and cached under $OUT/cache (reward.scorer=diversity);
# ILQL standardises it, A-LoL min-max scales it (reward_spec.json in each run dir says so).
COMMON=(--config.data.train="$DATA/hn_jobs/train.jsonl" --config.data.eval="$DATA/hn_jobs/eval.jsonl"
        --config.reward.scorer=diversity --config.reward.pool="$POOLS"
        --config.reward.cache_dir="$OUT/cache/rewards"
        --config.train.progress=False --config.train.tensorboard=False --config.train.eval_every=100
        "${MODEL[@]}")

# 2. BC from scratch (BPE tokenizer trained on the train postings), 3. ILQL and A-LoL from it.
python -m fairjax.train --config=configs/bc.py "${COMMON[@]}" --config.train.steps=$BC \
    --config.optim.lr=1e-3 --config.run_dir="$OUT/bc"
python -m fairjax.train --config=configs/ilql.py "${COMMON[@]}" --config.train.steps=$RL \
    --config.init.policy="$OUT/bc" --config.pipeline.evaluate=False --config.run_dir="$OUT/ilql"
python -m fairjax.train --config=configs/alol.py "${COMMON[@]}" --config.train.steps=$RL \
    --config.optim.lr=1e-4 --config.init.policy="$OUT/bc" --config.run_dir="$OUT/alol"

# 4. Evaluation: original vs BC vs ILQL (beta 1, 4, 8) vs A-LoL on every eval posting.
python -m fairjax.evaluate --config=configs/eval.py --config.checkpoint="$OUT/ilql" \
    --config.variants=bc:0,ilql_b1:1,ilql_b4:4,ilql_b8:8 --config.extra_checkpoints="alol=$OUT/alol" \
    --config.data.eval="$DATA/hn_jobs/eval.jsonl" --config.scorer.pools="$POOLS" \
    --config.scorer.cache_dir="$OUT/cache" --config.generation.max_new_tokens=$NEW \
    --config.max_prompt_tokens=$PROMPT --config.batch_size=$EVAL_BATCH --config.limit=$LIMIT \
    --config.output_dir="$OUT/eval"
echo "study report: $OUT/eval/report/report.md"
