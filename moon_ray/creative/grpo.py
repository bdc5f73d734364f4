"""`moon-ray creative train` stage 2: GRPO of the creative selector, from its SFT adapter, on the rollout pool.

    moon-ray creative train --config pipelines/configs/creative.yaml creative.train.stage=grpo \\
        creative.train.init_from=outputs/creative/sft creative.train.output_dir=outputs/creative/grpo

The same machinery as joint training (moon_ray/train/joint.py), extended rather than forked: the rollout
pool (`train.driver.start_rollout_pool`: rollout.engine torch or vllm, rollout.num_workers actors on the
base LM), its weight transports (`joint.sync_phase`), the shared optimizer step (`train.worker.train_step`:
prepare -> update passes -> metrics merged over passes) and the frozen reference (`train.policy
.ReferencePolicy`). Per step, on each trainer rank, each phase timed by name:

- gen: `CreativeSelector.prompt_embeds` of the batch's pairs (no grad), unpadded rows -> the pool ->
  rollout.group_size answers per pair (rollout.temperature, rollout.top_p, creative.max_answer_tokens);
- keep (creative.train.skip_uniform_groups): pairs whose G answers all got the same reward carry zero
  advantage and leave the update (and the ref pass); at least rollout.grpo_minibatches pairs stay, so DDP
  ranks run equal passes; reward and accuracy are still logged over every sampled answer (update_groups:
  the share kept);
- ref: log-probs of the answers under the SFT adapter the stage started from (a snapshot of the
  selector's trainable weights at step 0, swapped in for one no-grad pass: prompts and answers both
  under it); skipped when rollout.kl_coef=0;
- reward (no grad): `answer.choice_reward` of every answer against the pair's label (1 for the right
  choice, ± creative.format_weight for the format), group-normalised advantages (`losses.grpo`), and
  the sampling policy's log-probs of every later mini-batch;
- update: rollout.grpo_epochs × rollout.grpo_minibatches optimizer steps on the rollout batch, each the
  clipped-ratio GRPO loss (rollout.clip_eps) on the answer tokens with β·KL to the SFT policy
  (rollout.kl_coef); stale answers (rollout.max_staleness) weighted or dropped as joint training does;
- sync: rank 0 pushes the selector's LM (LoRA merged, or the adapters) to every actor every
  rollout.sync_interval steps, and once before the first step (the actors start on the base LM).

Logged per step (history.json): reward_mean, accuracy (share of sampled answers with the right choice),
well_formed, reward_group_std (within-group std: what the advantages can move), zero_std_groups,
chose_A, grpo_clip_frac, grpo_kl, grpo_ratio, answer_len, version_lag, phase times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from moon_ray.config import Config
from moon_ray.creative.answer import choice_reward, parse_answer
from moon_ray.creative.model import CreativeSelector
from moon_ray.losses.grpo import group_advantages, grpo_loss, staleness_weights
from moon_ray.models.reasoning import PromptBatch
from moon_ray.rewards import within_group_std
from moon_ray.rollout.ahead import split_evenly
from moon_ray.rollout.base import Rollout, SamplingConfig
from moon_ray.train.joint import sync_phase
from moon_ray.train.policy import ReferencePolicy, evaluating, pack_traces, sampling_logprobs
from moon_ray.weight_sync.transport import create_transport


@dataclass
class AnswerGroups:
    groups: list[list[Rollout]]  # B pairs × G sampled answers
    labels: list[str]  # the right choice of each pair as shown (after the view's swap)
    trainer_version: int
    ref_logp: torch.Tensor | None = None  # (B·G, T) under the SFT policy; None: rollout.kl_coef = 0
    rows: list[int] | None = None  # the batch row of each group (None: group i is row i)
    sampled: dict | None = None  # score_answers metrics over every sampled group, before any was left out


@dataclass
class ScoredAnswers:
    answers: AnswerGroups
    rewards: torch.Tensor  # (B, G) choice_reward
    advantages: torch.Tensor  # (B, G) group-normalised
    chunks: list[range]  # the pairs of each GRPO mini-batch
    epochs: int
    old_logp: dict[int, torch.Tensor] = field(default_factory=dict)  # mini-batch -> (n·G, T), sampling policy
    metrics: dict = field(default_factory=dict)


def score_answers(groups: list[list[Rollout]], labels: list[str], format_weight: float) -> tuple[torch.Tensor, dict]:
    """(B, G) rewards (`choice_reward`) of the sampled answers, and their metrics."""
    rewards = torch.tensor([[choice_reward(r.text, y, format_weight) for r in g] for g, y in zip(groups, labels, strict=True)])
    parsed = [[parse_answer(r.text) for r in g] for g in groups]
    correct = torch.tensor([[float(p.choice == y) for p in row] for row, y in zip(parsed, labels, strict=True)])
    formed = torch.tensor([[float(p.well_formed) for p in row] for row in parsed])
    chosen = [p.choice for row in parsed for p in row if p.well_formed]
    lengths = [len(r.token_ids) for g in groups for r in g]
    group_std = rewards.std(dim=1, unbiased=False)
    return rewards, {
        "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(unbiased=False)),
        "accuracy": float(correct.mean()), "well_formed": float(formed.mean()),
        "reward_group_std": within_group_std(rewards), "zero_std_groups": float((group_std < 1e-6).float().mean()),
        "chose_A": chosen.count("A") / len(chosen) if chosen else 0.0,
        "answer_len": sum(lengths) / max(1, len(lengths)),
        "answer_finished": sum(r.finished for g in groups for r in g) / max(1, len(lengths)),
    }


def informative_groups(rewards: torch.Tensor, minimum: int) -> list[int]:
    """Indices of the groups whose rewards differ (nonzero advantage), topped up in order with uniform ones
    to at least `minimum` (a rank must run as many passes as the others)."""
    varied = (rewards.max(dim=1).values - rewards.min(dim=1).values) > 1e-6
    keep = [i for i in range(len(rewards)) if varied[i]]
    fill = [i for i in range(len(rewards)) if not varied[i]][: max(0, minimum - len(keep))]
    return sorted(keep + fill)


def select_groups(answers: AnswerGroups, format_weight: float, minimum: int) -> AnswerGroups:
    """The answers of the informative groups only (`informative_groups`), the metrics of all kept aside."""
    rewards, metrics = score_answers(answers.groups, answers.labels, format_weight)
    keep = informative_groups(rewards, minimum)
    metrics["update_groups"] = len(keep) / max(1, len(answers.groups))
    return AnswerGroups([answers.groups[i] for i in keep], [answers.labels[i] for i in keep], answers.trainer_version,
                        rows=keep, sampled=metrics)


def answer_logprobs(selector: CreativeSelector, batch: dict, chunk: range, flat: list[Rollout], group: int,
                    rows: list[int] | None = None):
    """Log-probs (n·G, T) of the chunk's sampled answers under the selector's weights as they are
    (differentiable), with the packed ids, mask and the sampler's own per-token log-probs. `rows`: the
    batch row of each group (None: the identity)."""
    ids, mask, roll_lp = pack_traces(flat, selector.tokenizer.pad_token_id, selector.device)
    at = [rows[i] for i in chunk] if rows is not None else list(chunk)
    prompts = selector.prompt_embeds([batch["image_a"][i] for i in at], [batch["image_b"][i] for i in at],
                                     [batch["interest"][i] for i in at])
    embeds, pmask = prompts.embeds.repeat_interleave(group, 0), prompts.mask.repeat_interleave(group, 0)
    logp = selector.sequence_logprobs(PromptBatch(embeds=embeds, mask=pmask), ids, mask)
    return logp, ids, mask, roll_lp


class CreativeGRPOModule(nn.Module):
    """prepare(batch, answers) -> (scored,) (the reward phase, no grad); update_passes(scored) optimizer
    steps, each forward(batch, scored, part) -> ({"grpo_loss"}, metrics): one forward per backward for
    DDP. The shape of train/joint.py `JointTrainingModule`, so `train.worker.train_step` runs it."""

    def __init__(self, selector: CreativeSelector, cfg: Config):
        super().__init__()
        self.model, self.cfg = selector, cfg

    def prepare(self, batch: dict, answers: AnswerGroups) -> tuple[ScoredAnswers]:
        r = self.cfg.rollout
        rewards, metrics = score_answers(answers.groups, answers.labels, self.cfg.creative.format_weight)
        if answers.sampled is not None:  # some groups were left out of the update: log what was sampled
            metrics = answers.sampled
        chunks = split_evenly(len(answers.groups), r.grpo_minibatches)
        scored = ScoredAnswers(answers, rewards, group_advantages(rewards), chunks, r.grpo_epochs, metrics=metrics)
        scored.old_logp.update(sampling_logprobs(chunks, r.grpo_epochs, lambda c: self._logprobs(batch, answers, c)))
        return (scored,)

    @staticmethod
    def update_passes(scored: ScoredAnswers) -> int:
        return scored.epochs * len(scored.chunks)

    def _logprobs(self, batch: dict, answers: AnswerGroups, chunk: range):
        flat = [x for i in chunk for x in answers.groups[i]]
        return (*answer_logprobs(self.model, batch, chunk, flat, self.cfg.rollout.group_size, answers.rows), flat)

    def forward(self, batch: dict, scored: ScoredAnswers, part: int = 0) -> tuple[dict, dict]:
        r, g, answers = self.cfg.rollout, self.cfg.rollout.group_size, scored.answers
        c = part % len(scored.chunks)
        chunk = scored.chunks[c]
        logp, ids, mask, roll_lp, flat = self._logprobs(batch, answers, chunk)
        old = scored.old_logp.setdefault(c, logp.detach())  # the first step on a chunk: the sampling policy
        ref = None
        if r.kl_coef > 0 and answers.ref_logp is not None:
            ref = answers.ref_logp[chunk.start * g: chunk.stop * g, : ids.shape[1]].to(logp.device)
        lag = torch.tensor([answers.trainer_version - x.version for x in flat], device=logp.device)
        keep, weights = staleness_weights(lag, r.max_staleness, old, roll_lp, mask, policy=r.stale_policy)
        adv = scored.advantages[chunk.start: chunk.stop].reshape(-1).to(logp.device)
        loss, metrics = grpo_loss(logp, old, ref, adv, mask, clip_eps=r.clip_eps, kl_coef=r.kl_coef, weights=weights)
        metrics |= {"version_lag": float(lag.float().mean()), "kept_rollouts": float(keep.float().mean())}
        if part == 0:
            metrics = scored.metrics | metrics
        return {"grpo_loss": loss}, metrics


class GrpoSide:
    """Stage grpo's rollout half on one trainer rank (train/joint.py `RolloutSide`'s shape): the SFT
    reference at start, generation (+ reference log-probs) before each update; rank 0 syncs the weights
    before the first step and every rollout.sync_interval steps."""

    stage = "grpo"

    def __init__(self, pool, cfg: Config, rank: int):
        self.pool, self.cfg, self.rank = pool, cfg, rank
        r = cfg.rollout
        self.transport = create_transport(r.sync_backend, r.sync_mode) if rank == 0 else None
        self.reference_policy: ReferencePolicy | None = None

    def step_module(self, selector: CreativeSelector) -> nn.Module:
        return CreativeGRPOModule(selector, self.cfg)

    def reference(self, selector: CreativeSelector) -> None:
        """Called before a resumed run restores its checkpoint: the KL reference is the SFT adapter the
        stage started from, not the weights it resumes."""
        if self.cfg.rollout.kl_coef > 0:
            self.reference_policy = ReferencePolicy.snapshot(selector)

    def start(self, selector: CreativeSelector, step: int = 0) -> None:
        """Push the selector to the pool as version `step` (the step a resumed run continues from), so the
        first answers do not count as stale."""
        if self.transport is not None:  # the actors hold the base LM, not the SFT adapter (or resumed weights)
            sync_phase(selector, self.pool, step, self.transport)

    def generate(self, selector: CreativeSelector, batch: dict, step: int, timer) -> tuple[AnswerGroups]:
        import ray

        r, c = self.cfg.rollout, self.cfg.creative
        seed = c.train.seed * 100_003 + step * 17 + self.rank
        with timer("gen"):
            with torch.no_grad():
                prompts = selector.prompt_embeds(batch["image_a"], batch["image_b"], batch["interest"])
            rows = [prompts.embeds[i][prompts.mask[i].bool()].cpu() for i in range(len(batch["label"]))]
            sampling = SamplingConfig(n=r.group_size, max_tokens=c.max_answer_tokens, temperature=r.temperature,
                                      top_p=r.top_p, seed=seed)
            answers = AnswerGroups(ray.get(self.pool.generate.remote(rows, sampling)), list(batch["label"]), step)
        if c.train.skip_uniform_groups:
            answers = select_groups(answers, c.format_weight, r.grpo_minibatches)
        if self.reference_policy is not None:
            with timer("ref"):
                answers.ref_logp = self.reference_logprobs(selector, batch, answers)
        return (answers,)

    @torch.no_grad()
    def reference_logprobs(self, selector: CreativeSelector, batch: dict, answers: AnswerGroups) -> torch.Tensor:
        """(B·G, T) log-probs of every answer under the SFT weights (prompts made by them too), eval mode."""
        flat = [x for g in answers.groups for x in g]
        with evaluating(selector), self.reference_policy.swapped(selector):
            return answer_logprobs(selector, batch, range(len(answers.groups)), flat, self.cfg.rollout.group_size,
                                   answers.rows)[0]

    def after_step(self, selector: CreativeSelector, step: int, timer) -> dict:
        if self.transport is None or step % self.cfg.rollout.sync_interval:
            return {}
        with timer("sync"):
            return sync_phase(selector, self.pool, step, self.transport)
