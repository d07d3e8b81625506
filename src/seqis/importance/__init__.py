"""Importance factors for training sequences and the store that keeps them fresh."""
