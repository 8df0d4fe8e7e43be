"""Training of the agent: the list-wise reward, stage-1 GRPO (RTA) and stage-2 PPR."""
