"""What both executors share: the WarpRun spec and its CRD, the plan, checkpoints, locations, prompts,
status and errors. Imports nothing from kwarp.run, kwarp.observability or the components."""
