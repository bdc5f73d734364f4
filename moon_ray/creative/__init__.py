"""Creative4U: explainable creative selection. Given two creatives (A, B) of products and a shopper's
interests, the selector writes a short comparison and picks one: `<think>…</think><answer>A</answer>`.

- pairs.py      the CreativePair-style dataset (labels from construction), built by Ray Data
- defects.py    the image operations that make a worse creative; rationale.py the words of a pair
- model.py      the selector: the embedder's vision tower + projector + LM with its own LoRA adapter
- answer.py     the answer parser and the verifiable reward of a choice
- sft.py        stage 1, CoT-SFT (the SFT step, the train pairs); grpo.py stage 2, GRPO on the rollout pool
- trainer.py    the Ray Train loop and driver of both stages (`moon-ray creative train`)
- evaluate.py   zero-shot, SFT and SFT+GRPO side by side, and the Markdown report

Stage 2 reuses the joint-training machinery rather than forking it: the same `RolloutPool` (its engines
load the same base LM; `transport.sync_model(selector.lm, pool, v)` pushes the selector's LoRA by the
same names), `train.worker.train_step`, and `train.policy.ReferencePolicy` (the SFT adapter, frozen, as
the KL reference); rewards are `answer.choice_reward`, advantages and the loss `losses.grpo`. The Serve
route POST /v1/creative/select (moon_ray/serve/creative.py) answers with a trained selector.
"""
