"""Reward over-optimization studies (`alignlab study`, docs/study.md): the scaling-law fits, the best-of-n
estimator, the per-checkpoint points, their evaluation and the report. Imports from eval and below only."""
