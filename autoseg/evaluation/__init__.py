"""Evaluation: Dice, HD95, sensitivity and specificity per label and region."""
