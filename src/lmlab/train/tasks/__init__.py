"""Fine-tuning's tasks: the model (``model``), its inputs (``features``), its outputs
(``decoding``) and its checkpoints (``checkpoint``); ``train/finetune.py`` trains them."""
