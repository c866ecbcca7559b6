"""Trainer integrations, each importing its library only when its module is imported:

- :mod:`gradsight.integrations.lightning` — ``GradsightCallback`` for PyTorch Lightning
- :mod:`gradsight.integrations.transformers` — ``GradsightCallback`` for the Hugging Face Trainer
"""
