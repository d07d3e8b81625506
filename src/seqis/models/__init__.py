"""Recurrent models (RNN, GRU, LSTM) that return per-sequence losses."""
