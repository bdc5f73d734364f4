"""Creative4U: explainable creative selection. Given two creatives (A, B) of products and a shopper's
interests, the selector writes a short comparison and picks one: `<think>…</think><answer>A</answer>`.

- pairs.py      the CreativePair-style dataset (labels from construction), built by Ray Data
- defects.py    the image operations that make a worse creative; rationale.py the words of a pair
- model.py      the selector: the embedder's vision tower + projector + LM with its own LoRA adapter
- answer.py     the answer parser and the verifiable reward of a choice
- sft.py        stage 1, CoT-SFT on Ray Train; evaluate.py the evaluation and its Markdown report

Stage 2 (GRPO, not built yet) is meant to reuse the joint-training machinery rather than fork it: a
step module beside `sft.SFTModule` whose `prepare` sends `CreativeSelector.prompt_embeds` rows to the
same `RolloutPool` (its engines load the same base LM; `transport.sync_model(selector.lm, pool, v)`
pushes the selector's LoRA by the same names), rewards each group with `answer.choice_reward`, and whose
forward feeds `sequence_logprobs` (policy; and the SFT adapter, loaded as a second frozen PEFT adapter, as
the KL reference) into `losses.grpo.grpo_loss` with `group_advantages`.
"""
