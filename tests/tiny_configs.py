"""Per-method hyperparameters for methods whose defaults do not fit the tiny models (a layer
the 2-layer models do not have, a data pool that needs the benchmark data, too slow a search).

Adding a method: add an entry here only if its defaults do not fit; the contract tests run every
registered method on every tiny architecture either way.
"""

#: a quick v* search and a small key-statistics sample, for every method built on them
QUICK_VALUE = {
    "v_num_grad_steps": 12,
    "mom2_n_samples": 300,
    "context_template_length_params": [[3, 2]],
    "v_weight_decay": 0.0,
    "clamp_norm_factor": 1e4,
}

TINY = {
    "rome": {
        "layer": 0,
        **QUICK_VALUE,
    },
    "r-rome": {
        "layer": 0,
        **QUICK_VALUE,
    },
    # lambda and the null-space threshold are scaled to the tiny models' small keys
    "memit": {
        "layers": [0, 1],
        **QUICK_VALUE,
        "mom2_update_weight": 1.0,
    },
    "emmet": {
        "layers": [0, 1],
        **QUICK_VALUE,
        "mom2_update_weight": 1.0,
        "emmet_lambda": 0.0,
    },
    "alphaedit": {
        "layers": [0, 1],
        **QUICK_VALUE,
        "nullspace_threshold": 1e-5,
        "l2_weight": 1e-4,
    },
    "pmet": {
        "layers": [0, 1],
        **QUICK_VALUE,
        "mom2_update_weight": 1.0,
        "kl_factor": 0.0625,
    },
    # random weights give embedding-sized value changes little leverage: a large new_scale on
    # the last layer's top neurons (see tests/test_kn.py)
    "kn": {
        "layers": [-1],
        "new_scale": 1000.0,
        "adaptive_threshold": 0.8,
        "steps": 4,
        "batch_size": 2,
    },
    "ft-l": {"layer": 1, "num_steps": 10, "lr": 2e-2, "norm_constraint": 0.1},
    "ft-m": {"layer": 1, "num_steps": 8, "lr": 1e-2},
    "grace": {"layer": 1, "n_iter": 15, "eps_init": 0.02, "edit_lr": 1.0},
    "ike": {"pool": "demo", "k": 4, "embedder": "lexical"},
    # the contract edits one request whose target is one token: UltraEdit's standardisation
    # needs two positions, so every position is kept; a step sized for 32-wide keys
    "ultraedit": {"modules": {"mlp_in": [0, 1]}, "lr": 0.01, "tokens": "all"},
    # two blocks only: key in block 0, LoRA in block 1; few, larger steps for 32-wide layers
    "melo": {"layer": 0, "lora_offsets": [1], "num_block": 8, "num_iter": 20, "edit_lr": 1e-2},
    # activation margins (5-20) out of reach of 32-wide outputs: scaled down; a short search
    "wise": {
        "n_iter": 20,
        "context_template_length_params": [[3, 2]],
        "act_margin": [0.05, 0.5, 0.2],
    },
    # 32-wide keys and a 300-token toy memory: larger, fewer steps and a coarser early stop
    "t-patcher": {
        "lr": 0.1,
        "max_steps": 80,
        "start_check_step": 10,
        "check_every": 10,
        "early_threshold": 0.05,
        "memory_size": 300,
    },
    # no benchmark prompt in the test environment (and none fits 1,024 positions); a random
    # model never ends its text, so short generations and a small search
    "mello": {"shots": 0, "max_new_tokens": 8, "chunk_tokens": 8, "embedder": "lexical"},
    "deepedit": {
        "shots": 0,
        "max_new_tokens": 6,
        "chunk_tokens": 6,
        "max_steps": 2,
        "max_expansions": 3,
        "embedder": "lexical",
    },
    # a small network on the last block, trained for 20 steps (tests/conftest.trained_editor):
    # steps sized so that 32-wide matrices move within those steps
    "mend": {
        "modules": {"mlp_in": [-1], "mlp_out": [-1]},
        "rank": 16,
        "edit_lr": 1e-3,
        "lr": 1e-4,
        "lr_lr": 1e-3,
        "accumulate": 1,
        "batch_size": 2,
        "val_size": 8,
        "max_steps": 20,
        "val_every": 10,
    },
    # 20 steps on both blocks; ridge e^-8 for tiny keys (|u|^2: 0.003 llama, 0.2 gpt2; ref e^0)
    "malmen": {
        "modules": {"mlp_out": [0, 1]},
        "rank": 16,
        "edit_lr": 1e-2,
        "log_ridge": -8.0,
        "lr": 1e-3,
        "batch_size": 2,
        "pass_size": 2,
        "val_size": 8,
        "max_steps": 20,
        "val_every": 20,
    },
    # KE starts as the step -max_scale/(2 d_out) * grad: max_scale for 32-64-wide outputs; small lr
    "ke": {
        "modules": {"mlp_in": [-1], "mlp_out": [-1]},
        "hidden_dim": 16,
        "condition_dim": 16,
        "max_scale": 128.0,
        "lr": 1e-3,
        "warmup_steps": 4,
        "val_size": 4,
        "max_steps": 12,
        "val_every": 12,
    },
    # a small random BERT as the classifier (MiniLM's 22M weights are too slow to train here);
    # 10 steps at a rate that moves 32-wide models
    "serac": {
        "classifier": "tiny",
        "lr": 1e-3,
        "accumulate": 1,
        "val_size": 4,
        "max_steps": 10,
        "val_every": 10,
    },
}


def tiny_config(name: str) -> dict:
    """The overrides a method needs on the tiny models (none if its defaults fit)."""
    return dict(TINY.get(name, {}))
