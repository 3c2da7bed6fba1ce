"""The embedded executor and what a run leaves: the runner, the prepare and eval tasks, the report and
the reproduction of the paper's findings."""
