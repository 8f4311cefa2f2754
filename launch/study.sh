#!/usr/bin/env bash
# The study of docs/study.md on a pretrained base: Hacker News "Who is hiring?" postings, the
# candidate pool of Bias-in-Bios + tech-speaker bios, SmolLM2-135M-Instruct (LoRA) fine-tuned
# with BC, then grown rewrites scored with the faithful-rewrite reward (reward.scorer=constrained)
# for ReST, ILQL (shared-base LoRA), A-LoL and DPO; GRPO on the smooth constrained reward; all
# evaluated on the eval split beside the original and the baselines (lexicon swap, inclusion
# statement, the prompted instruct model, best-of-n), with FL under the pretrained base.
#
#   bash launch/study.sh smoke      # minutes: a toy model, every command end to end
#   bash launch/study.sh baselines  # original + lexicon_swap + inclusion_statement on all eval postings
#   bash launch/study.sh cpu        # the budget of docs/study.md "CPU budget" (2 cores: days)
#   bash launch/study.sh gpu        # one GPU: the whole study, all 772 eval postings
#
# DATA (default ../shared/data) holds hn_jobs/, bios/, tech_bios/; OUT (default runs/study-PROFILE)
# receives everything. The data never enters the repository. Every stage resumes when re-run
# (training from its checkpoints, ReST rounds from their stats.json, evaluation from its log).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${1:-cpu}"
DATA="${DATA:-../shared/data}"
OUT="${OUT:-runs/study-$PROFILE}"
PY="${PYTHON:-python}"
POOLS="$DATA/bios/bios.jsonl,$DATA/tech_bios/bios.jsonl"
BASE=smollm2-135m-instruct
EMBED=all-minilm-l6-v2
TAU=0.9765          # reward.constrained.tau under MiniLM (configs/common.py)
LIMIT=0             # eval postings (0 = all 772)
case "$PROFILE" in
  smoke) MODEL=(--config.model.demo_size=tiny --config.model.demo_vocab_size=1000
                --config.data.max_len=256 "--config.data.buckets=(256,)")
         BASE_ARGS=(--config.lora.enabled=True); FLUENCY=""; EMBED=tfidf; TAU=0.9588
         BATCH=4; BC=4; GROW=8; K=2; RL=4; ONLINE=2; ROLLOUT=(192 32); NEW=32; LIMIT=8; EVAL_BATCH=8
         BASELINES=lexicon_swap,inclusion_statement,best_of_n ;;
  baselines|cpu)
         MODEL=(--config.data.max_len=1024 "--config.data.buckets=(512,768,1024)")
         BASE_ARGS=(--config.model.init=$BASE --config.lora.enabled=True)
         FLUENCY=$BASE; BATCH=2; BC=200; GROW=256; K=2; RL=100; ONLINE=20; ROLLOUT=(640 448)
         NEW=0; EVAL_BATCH=16; BASELINES=lexicon_swap,inclusion_statement,prompted,best_of_n ;;
  gpu)   MODEL=(--config.data.max_len=1024 "--config.data.buckets=(512,768,1024)"
                --config.model.dtype=bfloat16 --config.model.attention=cudnn)
         BASE_ARGS=(--config.model.init=$BASE --config.lora.enabled=True)
         FLUENCY=$BASE; BATCH=16; BC=600; GROW=5854; K=4; RL=400; ONLINE=200; ROLLOUT=(640 448)
         NEW=0; EVAL_BATCH=64; BASELINES=lexicon_swap,inclusion_statement,prompted,best_of_n ;;
  *) echo "usage: $0 smoke|baselines|cpu|gpu" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
EVAL=(--config.data.eval="$DATA/hn_jobs/eval.jsonl" --config.scorer.pools="$POOLS"
      --config.scorer.embedder=$EMBED --config.scorer.constrained_tau=$TAU
      --config.scorer.cache_dir="$OUT/cache" --config.generation.max_new_tokens=$NEW
      --config.batch_size=$EVAL_BATCH --config.limit=$LIMIT --config.fluency_model="$FLUENCY"
      --config.nll_columns=$([ -n "$FLUENCY" ] && echo False || echo True))  # FL under the base

if [ "$PROFILE" = baselines ]; then  # no training: the systems a hiring team tries first
  $PY -m fairjax.evaluate --config=configs/eval.py --config.checkpoint= --config.variants= \
      --config.baselines=lexicon_swap,inclusion_statement "${EVAL[@]}" \
      --config.output_dir="$OUT/eval_baselines"
  echo "study report: $OUT/eval_baselines/report/report.md"; exit 0
fi

# Every run trains on the faithful-rewrite reward (hard form offline, smooth online), scored when
# its data is built and cached under $OUT/cache/rewards; reward_spec.json in each run dir says so.
REWARD=(--config.reward.scorer=constrained --config.reward.pool="$POOLS"
        --config.reward.embedder=$EMBED --config.reward.constrained.tau=$TAU
        --config.reward.cache_dir="$OUT/cache/rewards")
COMMON=(--config.data.train="$DATA/hn_jobs/train.jsonl" --config.data.eval="$DATA/hn_jobs/eval.jsonl"
        --config.train.progress=False --config.train.tensorboard=False --config.train.eval_every=100
        --config.optim.batch_size=$BATCH "${MODEL[@]}" "${BASE_ARGS[@]}")

# 1. BC: the base learns to copy a posting in the job layout (the instruct model zero-shot does not).
$PY -m fairjax.train --config=configs/bc.py "${COMMON[@]}" --config.train.steps=$BC \
    --config.optim.lr=1e-4 --config.run_dir="$OUT/bc"

# 2. Grow -> improve (ReST, one round): K rewrites of the first GROW train postings sampled from
#    BC, scored with the constrained reward; PHF filtering trains on the better ones. The round's
#    data (augmented/scored/pairs JSONL) is the rewrite-augmented data of steps 3-5.
$PY -m fairjax.rest --config=configs/rest.py "${COMMON[@]}" "${REWARD[@]}" \
    --config.rest.initial="$OUT/bc" --config.rest.rounds=1 --config.rest.k=$K \
    --config.rest.limit=$GROW --config.rest.tau=$TAU --config.train.steps=$RL \
    --config.init.policy="$OUT/bc" --config.run_dir="$OUT/rest"
AUG="$OUT/rest/round_0/data"

# 3-5. Offline objectives on the rewrite-augmented data, each from the BC policy.
OFF=(--config.data.train="$AUG/augmented.jsonl" --config.init.policy="$OUT/bc"
     --config.train.steps=$RL)
$PY -m fairjax.train --config=configs/ilql.py "${COMMON[@]}" "${REWARD[@]}" "${OFF[@]}" \
    --config.pipeline.evaluate=False --config.run_dir="$OUT/ilql"
$PY -m fairjax.train --config=configs/alol.py "${COMMON[@]}" "${REWARD[@]}" "${OFF[@]}" \
    --config.pipeline.evaluate=False --config.optim.lr=1e-4 --config.run_dir="$OUT/alol"
EXTRA="rest=$OUT/rest/round_0/train,alol=$OUT/alol"
if [ -s "$AUG/pairs.jsonl" ]; then  # pairs need two distinct faithful responses of a posting
  $PY -m fairjax.train --config=configs/dpo.py "${COMMON[@]}" "${REWARD[@]}" "${OFF[@]}" \
      --config.dpo.pairs="$AUG/pairs.jsonl" --config.run_dir="$OUT/dpo"
  EXTRA="$EXTRA,dpo=$OUT/dpo"
else
  echo "study: $AUG/pairs.jsonl has no pairs (no posting with two faithful responses): DPO skipped" >&2
fi

# 6. GRPO from BC on the smooth constrained reward (similarity and header penalties in the loop).
$PY -m fairjax.train --config=configs/grpo.py "${COMMON[@]}" "${REWARD[@]}" \
    --config.reward.constrained.form=smooth --config.train.steps=$ONLINE \
    --config.init.policy="$OUT/bc" --config.pipeline.evaluate=False --config.run_dir="$OUT/grpo" \
    --config.grpo.group_size=4 --config.optim.lr=1e-5 \
    --config.grpo.max_prompt_tokens=${ROLLOUT[0]} --config.grpo.max_new_tokens=${ROLLOUT[1]} \
    --config.train.save_every=10 --config.train.log_every=5

# 7. Evaluation: every system on every eval posting, scored the same way; FL under the base.
$PY -m fairjax.evaluate --config=configs/eval.py --config.checkpoint="$OUT/ilql" \
    --config.variants=bc:0,ilql_b4:4 --config.baselines=$BASELINES \
    --config.extra_checkpoints="$EXTRA,grpo=$OUT/grpo" \
    "${EVAL[@]}" --config.output_dir="$OUT/eval"
echo "study report: $OUT/eval/report/report.md"
