"""Samplers that draw training sequences by importance, with unbiasing weights."""
