"""GRPO on reasoning tokens: pure tensor functions, shapes in the docstrings.

For G traces per product with rewards r (B, G):

    advantage A_bg = (r_bg − mean_g r_b) / (std_g r_b + eps)                  (group-normalised)
    ratio ρ_t = exp(logp_t − old_logp_t)                                       (per trace token)
    policy term = −min(ρ_t A, clip(ρ_t, 1 − ε, 1 + ε) A)
    KL term (k3 estimator) = exp(ref_t − logp_t) − (ref_t − logp_t) − 1        (≥ 0)
    loss = mean over traces of the mean over their tokens of (policy + β · KL)

Only trace tokens count (mask); prompt tokens never enter. Rollouts that are stale can carry an
importance weight w (B·G,) multiplying their per-trace loss. old_logp is the policy that sampled the
traces, fixed for all optimizer steps on one rollout batch (ρ = 1 on the first, then it moves and the
clip acts); with no reference (kl_coef = 0) the KL term is absent and its pass is never run.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """rewards (B, G) -> advantages (B, G): zero-mean, unit-std within each product's group.

    A group whose rewards are all equal gets zero advantages (nothing to learn from it).
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimator exp(r) − r − 1 with r = ref − logp; same shape as inputs."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    kl_coef: float = 0.04,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped-ratio policy loss with KL to the reference.

    logp, old_logp, ref_logp, mask: (N, T) per-token log-probs of the sampled trace tokens and a 0/1
    mask of real trace tokens (ref_logp None: no KL term); advantages (N,) one per trace; weights (N,)
    optional per-trace importance weights. Returns (scalar loss, metrics).
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    policy = -torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    kl = kl_k3(logp, ref_logp) if ref_logp is not None else torch.zeros_like(logp)
    per_token = policy + kl_coef * kl if ref_logp is not None else policy
    lengths = mask.sum(1).clamp(min=1.0)
    per_trace = (per_token * mask).sum(1) / lengths
    if weights is not None:
        per_trace = per_trace * weights
    loss = per_trace.mean()
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps).to(logp.dtype)
        metrics = {
            "grpo_kl": float(((kl * mask).sum(1) / lengths).mean()),
            "grpo_clip_frac": float((clipped * mask).sum() / mask.sum().clamp(min=1.0)),
            "grpo_ratio": float((ratio * mask).sum() / mask.sum().clamp(min=1.0)),
        }
    return loss, metrics


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits (N, T, V) predicting tokens (N, T) -> log-probs (N, T) of those tokens."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def staleness_weights(
    lag: torch.Tensor, max_staleness: int, old_logp: torch.Tensor, rollout_logp: torch.Tensor,
    mask: torch.Tensor, policy: str = "weight", cap: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rollouts to keep and their importance weights.

    lag (N,) trainer version − rollout version; old_logp / rollout_logp (N, T) per-token log-probs of
    the trace under the trainer's current policy and under the policy that sampled it; mask (N, T).
    Rollouts with lag > max_staleness are dropped. Kept ones get weight 1 when fresh (lag 0); stale
    ones get 1 (policy "drop" drops every stale one instead) or, with "weight", the truncated
    sequence importance ratio min(cap, exp(mean_t(old − rollout))). Returns (keep (N,) bool, w (N,)).
    """
    keep = lag <= max_staleness
    if policy == "drop":
        keep = keep & (lag == 0)
    m = mask.to(old_logp.dtype)
    mean_diff = ((old_logp - rollout_logp) * m).sum(1) / m.sum(1).clamp(min=1.0)
    ratio = torch.exp(mean_diff).clamp(max=cap)
    weights = torch.where(lag > 0, ratio, torch.ones_like(ratio))
    return keep, torch.where(keep, weights, torch.zeros_like(weights))
