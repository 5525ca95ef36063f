"""Offline evaluation: simulate routing exactly on recorded samples, compare with
baselines at the same costs, report, and calibrate the threshold."""
