"""train/: the Learner and everything that fits it: callbacks, training levers and methods, time budgets, cross-validation, data-parallel fits, sweeps."""
