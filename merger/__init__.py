"""SLERP of task vectors and LiTI, streaming shard by shard."""
