"""Offline side: quality tables, predictors, training and evaluation."""
