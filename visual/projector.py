"""The projector from encoder tokens into the language model's embedding space."""
from torch import nn

PROJECTOR_KINDS = ("linear", "mlp")


def build_projector(kind: str, in_dim: int, n_embd: int) -> nn.Module:
    """[B, N, in_dim] -> [B, N, n_embd].

    "linear": one bias-free Linear, as in the VisualRWKV paper.
    "mlp":    Linear -> GELU -> Linear (LLaVA-1.5's two-layer projector).
    """
    if kind == "linear":
        return nn.Linear(in_dim, n_embd, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, n_embd), nn.GELU(), nn.Linear(n_embd, n_embd))
    raise ValueError(f"projector kind must be one of {PROJECTOR_KINDS}, got {kind!r}")
