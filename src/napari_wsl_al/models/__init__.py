"""The shipped model weights (package data): ``default.pt`` and its model card."""
