"""The kopf operator: reconciles WarpRun resources into trainer, merger and evaluation Jobs."""
