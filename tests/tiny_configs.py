"""Per-method hyperparameters that make every registered method quick on the tiny models.

Adding a method: add its entry here; the contract tests then run it on every tiny
architecture (a guard test fails when a registered method has no entry).
"""

TINY = {
    "rome": {
        "layer": 0,
        "v_num_grad_steps": 12,
        "mom2_n_samples": 300,
        "context_template_length_params": [[3, 2]],
        "v_weight_decay": 0.0,
        "clamp_norm_factor": 1e4,
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
