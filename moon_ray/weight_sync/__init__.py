"""Trainer -> rollout weight transport: (name, tensor) iterators, whatever the transport."""
