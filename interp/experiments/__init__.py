"""One module per paper, each a ``Config`` dataclass and ``run(model, config=None, out=None) -> Result``
that walks data → capture → analyzer → intervention → evaluation → report top to bottom.

- ``refusal``: the refusal direction (Arditi et al. 2024)
- ``harmfulness``: harmfulness vs refusal, Latent Guard, reply inversion (Zhao et al. 2025)
- ``numeric``: PLS numeric subspaces (El-Shangiti et al.)
- ``binding``: IsSameObject binding probes (Li et al.)
- ``rank`` and ``sae``: attention rank and active-subspace SAE init
- ``patching``: activation patching, DAS and the subspace-patching illusion (Makelov et al. 2023)

Example:
    from interp.experiments import refusal
    result = refusal.run(model, refusal.Config(n_train=32), out="reports/refusal")
"""
