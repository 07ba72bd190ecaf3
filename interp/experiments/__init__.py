"""One module per paper, each a ``Config`` dataclass and ``run(model, config=None, out=None) -> Result``
that walks data → capture → analyzer → intervention → evaluation → report top to bottom.

- ``refusal``: the refusal direction (Arditi et al. 2024)
- ``harmfulness``: harmfulness vs refusal, Latent Guard, reply inversion (Zhao et al. 2025);
  ``separation``: per-layer separation of any two prompt sets
- ``numeric``: PLS numeric subspaces (El-Shangiti et al.)
- ``binding``: IsSameObject binding probes (Li et al.)
- ``rank`` and ``sae``: attention rank and active-subspace SAE init
- ``patching``: activation patching, DAS and the subspace-patching illusion (Makelov et al. 2023)
- ``steering``: contrastive steering vectors from prompt pairs (CAA-style mean difference), strength sweep

Modules whose name starts with ``_`` hold an experiment's model-running pieces (the refusal candidate
scorer, the patching sweep and DAS); the choice of every setting on validation data and the one read
of the test split follow ``interp.protocol``.

Example:
    from interp.experiments import refusal
    result = refusal.run(model, refusal.Config(n_train=32), out="reports/refusal")
"""
