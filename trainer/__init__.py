"""One WARP member: REINFORCE with an EMA anchor."""
