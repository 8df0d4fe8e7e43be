"""The agent runtime: prompt, parser, environment, batched rollouts, warm start, zero-shot evaluation.

Layout (PAPER.md 1.3 for the agent; DESIGN.md 2: one environment for training and evaluation):

* :mod:`~recrepro.agent.prompt`: the versioned system prompts (``recrepro/prompts/agent_*``), the
  user turn of one instance, rendering through the chat template with ``tools=``;
* :mod:`~recrepro.agent.parser`: the one parser of final answers and tool calls, and the verdict on
  a whole trajectory with a named invalid reason;
* :mod:`~recrepro.agent.env`: :class:`~recrepro.agent.env.RecAgentEnv`, one per rollout, usable as
  TRL's ``environment_factory``; counts, budgets and records tool calls;
* :mod:`~recrepro.agent.rollout`: the batched multi-turn engine and its generators (transformers,
  vLLM, an OpenAI-compatible endpoint);
* :mod:`~recrepro.agent.warmstart`: the scripted teacher and the SFT warm start of tiny models;
* :mod:`~recrepro.agent.corpus`: the tiny tokenizer's training text;
* :mod:`~recrepro.agent.evaluate` and :mod:`~recrepro.agent.card`: zero-shot evaluation (notebook
  06) and evaluation cards.
"""
