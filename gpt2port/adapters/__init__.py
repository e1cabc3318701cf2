"""Adapters merged onto their base model on loading: PEFT's LoRA."""
