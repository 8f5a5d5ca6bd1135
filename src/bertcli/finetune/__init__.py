"""`bertcli finetune`: task table, readers, metrics and the fine-tuning loop."""
