"""The bundled demo task: a tiny sentiment world with its own SFT policy and reward model."""
