"""Fine-tuning: LoRA / full / QLoRA with PEFT, in a lean loop that also runs under
``accelerate launch`` (DDP or FSDP2); export; model cards.

Modules (import them directly; this package imports nothing heavy):

- :mod:`rungwise.train.config`: ``FinetuneSpec``, the ``rungs.finetune`` section of task.yaml
  (``prompt: minimal | full``: what the adapter is trained on and scored with).
- :mod:`rungwise.train.data`: chat-template tokenization with answer-only labels, the system
  prompt of a prompt shape (``training_system_prompt(task)``), the validation slice, the
  length-grouped / packed / shared-prefix batch layouts.
- :mod:`rungwise.train.plan`: ``TrainingPlan`` (examples, tokens, steps, measured time estimate,
  cost) and ``TrainingBudgetExceeded``.
- :mod:`rungwise.train.trainer`: ``plan_training(task, train, out_dir)`` -> ``TrainingPlan``;
  ``finetune(task, train, out_dir, plan=...)`` -> ``FinetuneResult``;
  ``load_tuned_backend(result_or_dir, task)``; ``load_adapter_backend(spec, dir)``.
- :mod:`rungwise.train.sharding`: what differs under FSDP2 (sharded checkpoints, the gathered
  artifact, FSDP over gloo on CPU); DeepSpeed / Megatron-LM refused with a clear error.
- :mod:`rungwise.train.export`: ``export(source, fmt, out)``, ``validate_openai_jsonl(path)``.
- :mod:`rungwise.train.card`: ``write_model_card(dir, result, metrics=..., forgetting=...)``.

The forgetting check lives in :mod:`rungwise.train.forgetting`.
"""
