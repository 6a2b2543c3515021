"""DiffLoss."""
