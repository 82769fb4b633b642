"""Data forging: finding a different batch with (nearly) the same update.

- ``solvers``: exact forgeries (nullspace of the per-example gradients, error matrices,
  one-hot forgeries); ``twins``: the b = 1 analysis, each twin proved in exact arithmetic
  (``twins_exact``); ``native_gradient``: the batch gradient both forge and measure against;
- ``search`` and ``certify``: the exhaustive in-domain search of Table 4 (its inner loops in
  ``search_native``, its counting in ``search_count``) and its exact certification;
- ``attacks``: the published approximate attacks; ``game``: the forging game between a prover
  and a verifier; ``spoof``: whole spoofed traces, and ``spoof_game`` the spoofing game."""
