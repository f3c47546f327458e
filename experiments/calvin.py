"""DiWA on CALVIN (task D) or the embedded play-table.

Usage: ``python launch.py --config experiments/calvin.py[:preset] --workdir runs/NAME``

Presets are arguments of this file, not copies of it:
  (none)  the paper's settings (``../shared/diwa_spec.md`` Appendix A and section 9), for an accelerator;
  quick   the README's main job: the whole pipeline on the embedded play-table on a 2-core CPU;
  tiny    seconds-long sizes for tests.

Every default is a field; override any of them from the command line, e.g.
``--config.ppo.actor_lr=3e-5``. Values that follow from others (latent size, batch sizes, ...) are
not set here: ``diwa_jax.config.finalize`` derives them into ``config.derived`` after overrides.
"""
import ml_collections

from diwa_jax.envs.tasks.diwa import TASKS  # the benchmark's 8 tasks; config.tasks may name any registered task

PRESETS = ("paper", "quick", "tiny")


def _paper() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.preset = "paper"
    c.seed = 0
    c.seeds = 1  # fine-tuning seeds per task (seed index k: its own PPO key and start pool), evaluated alike
    c.tasks = TASKS

    # ---- data set (CALVIN on-disk format) -----------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.path = ""  # a CALVIN split root (e.g. .../task_D_D); empty: stage `collect` makes one
    # Fine-tune and evaluate in config.env.backend although the data set was recorded in another simulator
    # (refused otherwise: the models would learn one scene and be judged in another).
    c.data.allow_simulator_mismatch = False
    c.data.image_size = 64  # both cameras area-resized to this (the WM's conv geometry needs 64)
    c.data.rot6d = True  # Euler angles in robot/scene state -> rot6d (18-D proprio)
    c.data.cache_dir = ""  # preprocessed 64x64 cache; empty: <workdir>/cache
    c.data.cache_workers = 2  # processes decoding npz frames while the cache is built
    c.data.cache_chunk_frames = 512  # frames per resumable build chunk

    # ---- simulator (collect and evaluate) -----------------------------------------------------
    c.env = ml_collections.ConfigDict()
    c.env.backend = "playtable"  # playtable | calvin_env
    c.env.static_size = 200
    c.env.gripper_size = 84
    c.env.renderer = "tiny"  # tiny (pybullet TinyRenderer) | egl
    c.env.calvin_env_conf_dir = ""  # calvin_env's conf/ folder; empty: the installed package's

    # ---- scripted play collection (in the simulator of env.backend) ---------------------------
    c.collect = ml_collections.ConfigDict()
    c.collect.train_frames = 500_000
    c.collect.val_frames = 100_000
    c.collect.segment_frames = 2_000  # frames per recorded segment (ep_start_end_ids row)
    c.collect.workers = 2
    c.collect.skill_noise = 0.3  # play-like variation: speed, approach, hesitation, small errors
    c.collect.failure_prob = 0.1  # fraction of skills deliberately left unfinished
    c.collect.window = 64  # annotation window length (CALVIN's)
    c.collect.post_completion_frames = 4  # frames an annotation window runs past the task's completion

    # ---- world model (DreamerV2-style RSSM; spec section 2) -----------------------------------
    c.wm = ml_collections.ConfigDict()
    c.wm.variant = "vision"  # vision | hybrid | state
    c.wm.cnn_depth = 48
    c.wm.deter = 1024
    c.wm.stoch = 32
    c.wm.classes = 32
    c.wm.hidden = 1000
    c.wm.state_hidden = 400  # hybrid/state encoder and state head
    c.wm.state_embed = 512
    c.wm.ln_eps = 1e-3
    c.wm.temperature = 1.0
    c.wm.kl_balance = 0.8
    c.wm.kl_weight = 0.3
    c.wm.free_nats = 0.0  # off, as the paper
    c.wm.image_weight = 1.0
    c.wm.state_weight = 1.0
    c.wm.inverse_dynamics_weight = 0.0  # a_{t-1} from the camera embeddings of t-1 and t; 0 = off (paper)
    c.wm.inverse_dynamics_hidden = 400
    c.wm.lr = 3e-4
    c.wm.adam_eps = 1e-5
    c.wm.weight_decay = 0.05
    c.wm.clip_norm = 100.0
    c.wm.batch_size = 50
    c.wm.seq_len = 50
    c.wm.steps = 2_000_000
    c.wm.reset_prob = 0.01
    c.wm.carry_state = True  # equidistant streams with the RSSM state carried across windows
    c.wm.log_every = 1000
    c.wm.image_every = 20_000
    c.wm.ckpt_every = 10_000
    c.wm.openloop_context = 5
    c.wm.openloop_horizon = 50

    # ---- featurize ----------------------------------------------------------------------------
    c.featurize = ml_collections.ConfigDict()
    c.featurize.chunk_frames = 4096
    c.featurize.batch_streams = 64

    # ---- diffusion policy (spec section 3) ----------------------------------------------------
    c.policy = ml_collections.ConfigDict()
    c.policy.horizon = 4  # Ta, actions per chunk
    c.policy.act_steps = 4
    c.policy.action_dim = 7
    c.policy.denoising_steps = 20  # K
    c.policy.ft_denoising_steps = 10  # K'
    c.policy.time_dim = 16
    c.policy.mlp_dim = 512
    c.policy.cosine_s = 0.008
    c.policy.denoised_clip = 1.0
    c.policy.bc_randn_clip = 10.0
    c.policy.deterministic_min_std = 1e-3  # "deterministic" eval sampling: DDPM std floor for t > 0, 0 at t = 0
    c.policy.n_train_windows = 50
    c.policy.window_seed = 42
    c.policy.lr = 1e-4
    c.policy.min_lr = 1e-5
    c.policy.weight_decay = 1e-6
    c.policy.batch_size = 256
    c.policy.epochs = 5000
    c.policy.warmup_epochs = 100
    c.policy.cosine_epochs = 10_000
    c.policy.ema_decay = 0.995
    c.policy.ema_every = 10
    c.policy.ema_start = 20
    c.policy.ckpt_every = 500

    # ---- reward classifier (spec section 5) ---------------------------------------------------
    c.reward = ml_collections.ConfigDict()
    c.reward.embed_hidden = 1024
    c.reward.embed_dim = 256
    c.reward.head_hidden = 1024
    c.reward.tau = 0.5
    c.reward.ce_weight = 0.5
    c.reward.lr = 1e-6
    c.reward.batch_size = 32
    c.reward.epochs = 100
    c.reward.n_train_windows = 50  # the expert windows of stage 3 (the policy's 50, same seed)
    c.reward.window_seed = 42
    c.reward.negatives_per_episode = 10
    c.reward.hard_negatives = 0  # the negative frames just before success always trained on; 0 = off (paper)
    c.reward.other_task_windows = 0  # per other task: their windows (real and imagined) as labelled examples; 0 = off (paper)
    c.reward.balance_quirk = True  # negatives drawn by position within the negative list (original); False: uniform
    c.reward.use_imagined = True
    c.reward.eval_every = 5

    # ---- PPO in imagination (spec sections 4 and 6) -------------------------------------------
    c.ppo = ml_collections.ConfigDict()
    c.ppo.n_envs = 50
    c.ppo.n_steps = 36  # chunk steps per iteration and env
    c.ppo.episode_len = 72  # world-model steps before truncation
    c.ppo.iterations = 800
    c.ppo.eval_every = 25
    c.ppo.critic_warmup = 2
    c.ppo.gamma = 0.999
    c.ppo.gae_lambda = 0.95
    c.ppo.gamma_denoising = 0.99
    c.ppo.update_epochs = 10
    c.ppo.batch_size = 7500
    c.ppo.minibatch_mode = "sample"  # sample (released) | denoising_step (current DPPO)
    c.ppo.clip = 0.01
    c.ppo.clip_base = 0.001
    c.ppo.clip_rate = 3.0
    c.ppo.vf_coef = 0.5
    c.ppo.target_kl = 1.0
    c.ppo.norm_adv = True
    c.ppo.max_grad_norm = 0.0  # 0: no clipping
    c.ppo.actor_lr = 1e-5
    c.ppo.critic_lr = 1e-3
    c.ppo.critic_dim = 256
    c.ppo.min_sampling_std = 0.1
    c.ppo.min_logprob_std = 0.1
    c.ppo.randn_clip = 3.0
    c.ppo.logprob_min = -5.0
    c.ppo.logprob_max = 2.0
    c.ppo.clamp_logprob = True  # DPPO quirk (spec 9 row 7): clamp each element to [logprob_min, logprob_max]
    c.ppo.logprob_reduce = "mean"  # mean (DPPO quirk) | sum: how per-element log-probs become one per step
    c.ppo.reward_scaling = True
    c.ppo.reward_scale_gamma = 0.99
    c.ppo.reward_scale_clip = 10.0
    c.ppo.reward_mode = "binary"  # binary | probability
    c.ppo.reward_source = "classifier"  # classifier | decoded_state (the oracle on decoded scenes; hybrid/state)
    c.ppo.success_hold = 1  # last world-model steps of a chunk the classifier must all call success (1: paper)
    c.ppo.alpha_bc = 0.05
    # per-task alpha_BC, "TASK=VALUE,..." (e.g. the paper's "open_drawer=0.1,close_drawer=0.025"); the tasks
    # it does not name take ppo.alpha_bc
    c.ppo.alpha_bc_by_task = ""
    c.ppo.binarize_gripper = False
    c.ppo.start_source = "simulator"  # simulator | dataset
    c.ppo.n_start_states = 200
    # Transfer diagnostic (diwa_jax/transfer.py) on the first starts of the fine-tuning start pool's states, at
    # iteration 0 and at the end: real vs imagined vs replayed success, evaluation steps counted apart; 0 = off
    c.ppo.transfer_starts = 16
    c.ppo.ckpt_every = 100
    # devices the imagined envs and PPO minibatches are split over (a mesh with a `data` axis, parameters
    # replicated): 1 = one device; 0 = every device of every process (TPU pods, multi-GPU; n_envs must divide)
    c.ppo.devices = 1

    # ---- online DPPO, the baseline (stage `online`, run with --stages=online) ---------------------
    # The same diffusion policy and PPO (config.ppo: losses, optimisers, ppo.n_steps chunk steps per
    # iteration, ppo.episode_len simulator steps per episode), rollouts collected in online.envs simulators
    # (in online.workers processes, 0: this one) seeing the frozen world model's filter, the oracle's
    # success as the reward. Every simulator step is counted.
    c.online = ml_collections.ConfigDict()
    c.online.tasks = ()  # () = every task of config.tasks
    c.online.init = "pretrained"  # pretrained (DPPO from the BC policy) | finetuned (DiWA's, then online)
    c.online.envs = 50
    c.online.workers = 8
    c.online.iterations = 100  # simulator steps: at most iterations x envs x ppo.n_steps x policy.act_steps
    c.online.eval_every = 10
    c.online.ckpt_every = 10

    # ---- closed-loop evaluation (spec section 7) ----------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.max_steps = 72
    # Fixed start lists per task, made once in <workdir>/starts/ and shared by every policy, seed and rerun:
    # `validation` = the first state of each validation window of the task (CALVIN's protocol; the periodic
    # list is taken out of them first), `simulator` = starts sampled from the task's start distribution
    # with a stream of eval.start_seed (never config.seed), disjoint from fine-tuning's start pools.
    c.eval.start_source = "validation"
    c.eval.episodes = 0  # final list size (validation: at most; 0 = every window left)
    c.eval.periodic_episodes = 10  # the smaller list of fine-tuning's periodic evaluations (the curves)
    c.eval.start_seed = 0
    c.eval.deterministic = True
    c.eval.filter_every_frame = True  # 4-frame WM filtering per chunk (paper era)
    # Episodes run on eval.envs simulators in lockstep (each takes the next start when its episode ends),
    # built in eval.workers processes (0: in this one); every episode's numbers are the same for any
    # eval.envs and eval.workers (README, Evaluation), so these only set the speed.
    c.eval.envs = 16
    c.eval.workers = 2

    # ---- sweeps (experiments/ablation.py) -----------------------------------------------------
    # Values of a key to fine-tune and evaluate side by side, one run per point of the grid of every swept key;
    # stages no point changes (collect ... reward here) run once and are shared (diwa_jax/sweep.py).
    # Empty: not swept (the single value above).
    c.sweep = ml_collections.ConfigDict()
    c.sweep.alpha_bc = ()  # values of config.ppo.alpha_bc
    c.sweep.reward_source = ()  # values of config.ppo.reward_source

    # ---- logging ------------------------------------------------------------------------------
    c.log = ml_collections.ConfigDict()
    c.log.tensorboard = True
    c.log.progress = True
    c.log.video = False  # needs the `video` extra
    return c


def _quick(c: ml_collections.ConfigDict) -> None:
    """The whole pipeline on the embedded play-table on a 2-core CPU."""
    c.collect.train_frames = 24_000
    c.collect.val_frames = 8_000  # ~6-20 validation windows (evaluation episodes) per task
    c.collect.segment_frames = 1_000
    c.env.static_size = 96
    c.env.gripper_size = 64
    # 8 channels, 8x32 frames a step; as many steps as fit the world-model stage's share of the main job's
    # 45-minute budget on 2 cores (README, Benchmarks)
    c.wm.cnn_depth = 8
    c.wm.deter = 256
    c.wm.stoch = 16
    c.wm.classes = 16
    c.wm.hidden = 256
    c.wm.state_hidden = 128
    c.wm.state_embed = 128
    c.wm.inverse_dynamics_weight = 100.0  # latents that see what the actions did (README, Evaluation: levers)
    c.wm.inverse_dynamics_hidden = 128
    c.wm.batch_size = 8
    c.wm.seq_len = 32
    c.wm.steps = 1_300
    c.wm.log_every = 50
    c.wm.image_every = 250
    c.wm.ckpt_every = 250
    c.policy.mlp_dim = 256
    c.policy.epochs = 300
    c.policy.warmup_epochs = 10
    c.policy.cosine_epochs = 600
    # the paper's EMA (0.995 every 10 epochs) makes ~500 updates over 5000 epochs; over 300 epochs it
    # would make 28 and leave the EMA near the epoch-20 copy (final EMA eps-loss 0.86 in a quick run)
    c.policy.ema_every = 1
    c.policy.ema_decay = 0.98
    c.policy.ckpt_every = 100
    c.reward.embed_hidden = 256
    c.reward.embed_dim = 64
    c.reward.head_hidden = 256
    c.reward.lr = 1e-4
    c.reward.epochs = 30
    c.ppo.n_envs = 32
    c.ppo.n_steps = 18
    # ~0.8 s per iteration at these sizes; imagined success still rises after 60 iterations at the paper's lr
    c.ppo.iterations = 150
    c.ppo.eval_every = 50
    c.ppo.n_start_states = 64
    c.ppo.ckpt_every = 25
    c.ppo.critic_dim = 128
    c.eval.start_source = "simulator"
    c.eval.episodes = 100
    c.eval.periodic_episodes = 10
    c.online.envs = 8
    c.online.workers = 2
    c.online.iterations = 100
    c.online.eval_every = 10


def _tiny(c: ml_collections.ConfigDict) -> None:
    """Seconds-long sizes for tests: every stage runs, nothing learns much."""
    _quick(c)
    c.tasks = ("move_slider_left",)  # a task the tiny play data holds in both splits
    c.collect.train_frames = 600
    c.collect.val_frames = 300
    c.collect.segment_frames = 150
    c.collect.workers = 1
    c.env.static_size = 64
    c.env.gripper_size = 64
    c.wm.cnn_depth = 4
    c.wm.deter = 32
    c.wm.stoch = 4
    c.wm.classes = 4
    c.wm.hidden = 32
    c.wm.state_hidden = 16
    c.wm.state_embed = 16
    c.wm.inverse_dynamics_weight = 0.0  # the paper's objective, so tests may switch to the state variant
    c.wm.inverse_dynamics_hidden = 16
    c.wm.batch_size = 4
    c.wm.seq_len = 8
    c.wm.steps = 20
    c.wm.log_every = 5
    c.wm.image_every = 10
    c.wm.ckpt_every = 10
    c.wm.openloop_context = 2
    c.wm.openloop_horizon = 6
    c.featurize.chunk_frames = 64
    c.featurize.batch_streams = 4
    c.policy.mlp_dim = 32
    c.policy.time_dim = 8
    c.policy.denoising_steps = 6
    c.policy.ft_denoising_steps = 3
    c.policy.n_train_windows = 4
    c.policy.batch_size = 32
    c.policy.epochs = 4
    c.policy.warmup_epochs = 1
    c.policy.cosine_epochs = 8
    c.policy.ema_every = 1
    c.policy.ema_start = 1
    c.policy.ckpt_every = 2
    c.reward.embed_hidden = 32
    c.reward.embed_dim = 16
    c.reward.head_hidden = 32
    c.reward.epochs = 2
    c.reward.batch_size = 16
    c.reward.n_train_windows = 4
    c.ppo.n_envs = 4
    c.ppo.n_steps = 3
    c.ppo.episode_len = 12
    c.ppo.iterations = 3
    c.ppo.eval_every = 2
    c.ppo.update_epochs = 2
    c.ppo.batch_size = 64
    c.ppo.n_start_states = 4
    c.ppo.transfer_starts = 2
    c.ppo.ckpt_every = 1
    c.ppo.critic_dim = 16
    c.eval.max_steps = 12
    c.eval.start_source = "simulator"
    c.eval.episodes = 3
    c.eval.periodic_episodes = 2
    c.eval.envs = 2
    c.eval.workers = 0
    c.online.envs = 2
    c.online.workers = 0
    c.online.iterations = 3
    c.online.eval_every = 2
    c.online.ckpt_every = 1
    c.log.progress = False


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    preset = preset or "paper"
    if preset not in PRESETS:
        raise ValueError(f"experiments/calvin.py: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    c = _paper()
    c.preset = preset
    if preset == "quick":
        _quick(c)
    elif preset == "tiny":
        _tiny(c)
    return c
