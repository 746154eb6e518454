"""Per-method hyperparameters that make every registered method quick on the tiny models.

Adding a method: add its entry here; the contract tests then run it on every tiny
architecture (a guard test fails when a registered method has no entry).
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
}

#: methods whose effect needs a pretrained model (in-context learning does not exist in random
#: weights): on tiny models the contract checks that the edit changes predictions; the rise of
#: the target is checked on SmolLM2 in tests/test_real_model.py
IN_CONTEXT = {"ike"}
