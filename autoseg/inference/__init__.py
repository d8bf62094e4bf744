"""Prediction: sliding-window inference of trained folds on new cases."""
