"""Scripted teacher and SFT warm start: teach a tiny model the output format before anything else.

A randomly initialised model never emits a tool call (DESIGN.md 4), so neither rollouts nor GRPO
would ever see a multi-turn trajectory. RecThinker (PAPER.md 2) starts its agent with supervised
fine-tuning on tool-using trajectories; we do the same with trajectories written by a rule-based
teacher, rendered in the exact chat format the rollout engine uses, then fine-tune with TRL's
``SFTTrainer`` (a subclass whose loss keeps only the logits of trained positions). This is the smoke
profile's stand-in for an instruction-tuned backbone; the paper's frozen Qwen3-4B-Instruct needs no
warm start.

The teacher [G] (deterministic for an instance):

* tool-using variant: ``get_user_profile``, then ``candidates_analyze``, then -- for a short
  history (fewer than :data:`SHORT_HISTORY` items, which the prompt shows) -- ``get_similar_items``
  on the latest history title; one call per turn, each after a short thought in ``<think>``. The
  plan depends only on what the prompt shows, so a model can learn it exactly;
* both variants: a final thought naming the history's two most frequent categories, then the answer
  ``<answer>\\boxed{[...]}</answer>``: first the candidates that share one of those categories, then
  the others, each group in candidate order, top K. Two increasing runs are the easiest shape of
  distinct numbers for a small model to learn.

PPR format (``warmstart.ppr_share`` of the examples; stage 2, PAPER.md 1.5): two of the instance's
candidates shown as A and B, the MORE or LESS question of :mod:`recrepro.rl.ppr`, one
``get_user_profile`` call, then ``<answer>\\boxed{A}</answer>`` or ``B``. The teacher prefers the
item whose categories the history shares more often (the ranking teacher's signal; ties go to A for
MORE and so to B for LESS). The brief suggested SASRec scores; we kept the category rule because it
depends only on what the prompt shows, so a tiny model can learn it, and MORE / LESS answers stay
complementary [G].

It never sees the target, so it teaches the format, not the answer. The warm start trains only on
tokens the model would generate (assistant turns and their end-of-turn token); prompt and tool
tokens carry no loss, as in GRPO (PAPER.md 1.4).
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from recrepro.agent.corpus import ensure_tiny_agent_model
from recrepro.agent.env import RecAgentEnv, env_tools, pair_columns, toolkit_env_factory
from recrepro.agent.pairwise import ppr_messages, ppr_prompt_fingerprint
from recrepro.agent.parser import format_answer, format_choice, format_tool_call
from recrepro.agent.prompt import (PROMPT_VERSION, AgentInstance, PromptSpec, build_messages, instance_from_sample,
                                   item_views, render_prompt)
from recrepro.agent.rollout import tool_suffix_text
from recrepro.data.pipeline import load_benchmark
from recrepro.io import atomic_dir
from recrepro.models import load_causal_lm

TEACHER_VERSION = "v1"


@dataclass(frozen=True)
class Transcript:
    """A teacher trajectory: prompt messages, the raw assistant turns and the tool messages after each."""

    messages: list[dict[str, Any]]  # system, user, then alternating assistant / tool messages
    turns: list[str]
    tool_messages: list[list[dict[str, Any]]]  # after turn i (empty after the final turn)
    uses_tools: bool


def _history_categories(instance: AgentInstance) -> Counter:
    return Counter(c for item in instance.history for c in item.categories)


SHORT_HISTORY = 5  # [G] below this many history items the teacher also asks for similar items


def _top_categories(instance: AgentInstance) -> list[str]:
    ranked = sorted(_history_categories(instance).items(), key=lambda kv: (-kv[1], kv[0]))
    return [c for c, _ in ranked[:2]]


def teacher_ranking(instance: AgentInstance, top_k: int) -> list[int]:
    """Candidates sharing one of the history's two top categories first, then the rest; each in order."""
    top = set(_top_categories(instance))
    first = [i for i, item in enumerate(instance.candidates, start=1) if top & set(item.categories)]
    rest = [i for i in range(1, instance.n_candidates + 1) if i not in set(first)]
    return (first + rest)[:top_k]


def _favourites(instance: AgentInstance) -> str:
    top = _top_categories(instance)
    return " and ".join(top) if top else "no clear category"


def teacher_plan(instance: AgentInstance) -> list[tuple[str, dict[str, Any]]]:
    """The tool calls the teacher makes for this instance, one per turn (two or three)."""
    plan: list[tuple[str, dict[str, Any]]] = [("get_user_profile", {}), ("candidates_analyze", {})]
    if instance.history and len(instance.history) < SHORT_HISTORY:
        plan.append(("get_similar_items", {"item_title": instance.history[-1].title}))
    return plan


_THOUGHTS = {
    ("react", "get_user_profile"): "The history leans to {fav}. I will read the user's profile first.",
    ("react", "candidates_analyze"): "Next I check how the candidates split by category.",
    ("react", "get_similar_items"): "I look for items similar to the latest one.",
    ("apa", "get_user_profile"): "Analyze: the history leans to {fav}, but I know little else. "
                                 "Plan: read the user's profile. Act: call get_user_profile.",
    ("apa", "candidates_analyze"): "Analyze: I still need the candidates' categories. "
                                   "Plan: summarise the candidates. Act: call candidates_analyze.",
    ("apa", "get_similar_items"): "Analyze: collaborative evidence is missing. "
                                  "Plan: find items similar to the latest one. Act: call get_similar_items.",
}
_FINAL = "Candidates in {fav} fit this user best, so they go first."


def _thought(text: str) -> str:
    return f"<think>\n{text}\n</think>\n\n"


def teacher_transcript(instance: AgentInstance, spec: PromptSpec, env: RecAgentEnv | None = None,
                       strategy: str = "category") -> Transcript:
    """The teacher's trajectory for ``instance``; ``env`` (reset to the instance) answers the calls.

    ``strategy`` "category" is the v1 teacher; the mixed teacher's strategies are in :data:`STRATEGIES`.
    """
    if strategy != "category":
        return _mixed_transcript(instance, spec, env, strategy)
    fav = _favourites(instance)
    messages = build_messages(instance, spec)
    turns: list[str] = []
    tool_messages: list[list[dict[str, Any]]] = []
    if spec.uses_tools:
        if env is None:
            raise ValueError("the tool-using teacher needs an environment reset to the instance")
        for name, args in teacher_plan(instance):
            text = _thought(_THOUGHTS[(spec.style, name)].format(fav=fav)) + format_tool_call(name, args)
            result = getattr(env, name)(**args)
            tool = [{"role": "tool", "name": name, "content": str(result)}]
            turns.append(text)
            tool_messages.append(tool)
            messages += [{"role": "assistant", "content": text}] + tool
    final = _thought(_FINAL.format(fav=fav)) + format_answer(teacher_ranking(instance, spec.top_k))
    turns.append(final)
    tool_messages.append([])
    messages.append({"role": "assistant", "content": final})
    return Transcript(messages, turns, tool_messages, spec.uses_tools)


# The mixed teacher [G] (``warmstart.teacher: mixed``). Each tool-using example follows one strategy,
# drawn with the run seed, never from the target, so the warm policy is a mixture whose first
# generated words ("I rank the candidates by ...") choose the strategy. Stage 1 can then show that
# it learns: the strategies differ in quality, and GRPO has to find and amplify the better one.
#   "history":    no tool call; the category-overlap ranking of the v1 teacher (what R can do too);
#   "popularity": one candidates_analyze call; the answer copies its popularity line.
STRATEGIES = ("history", "popularity")
MIXED_TEACHER_VERSION = "mixed-v2"  # v2: the popularity line is the last line of candidates_analyze
_MIXED_OPENING = {"history": "I rank the candidates by the categories in the history: {fav} first.",
                  "popularity": "I rank the candidates by popularity; candidates_analyze lists it."}
_MIXED_FINAL = "The most popular candidates before now go first."
_POPULARITY_LIST = re.compile(r"\{\[([0-9, ]+)\]\}")


def popularity_from_tool(text: str, top_k: int) -> list[int]:
    """The candidate numbers of candidates_analyze's popularity line (``{[a, b, ...]}``)."""
    found = _POPULARITY_LIST.search(text)
    if found is None:
        raise ValueError("candidates_analyze shows no popularity line; set tools.popularity_order > 0 "
                         "for warmstart.teacher: mixed")
    numbers = [int(x) for x in found.group(1).split(",")]
    if len(numbers) < top_k:
        raise ValueError(f"the popularity line lists {len(numbers)} candidates, fewer than top_k = {top_k}")
    return numbers[:top_k]


def _mixed_transcript(instance: AgentInstance, spec: PromptSpec, env: RecAgentEnv | None,
                      strategy: str) -> Transcript:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown teacher strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    messages = build_messages(instance, spec)
    opening = _thought(_MIXED_OPENING[strategy].format(fav=_favourites(instance)))
    if strategy == "history":
        final = opening + format_answer(teacher_ranking(instance, spec.top_k))
        messages.append({"role": "assistant", "content": final})
        return Transcript(messages, [final], [[]], spec.uses_tools)
    if env is None:
        raise ValueError("the popularity strategy needs an environment reset to the instance")
    first = opening + format_tool_call("candidates_analyze", {})
    tool = [{"role": "tool", "name": "candidates_analyze", "content": str(env.candidates_analyze())}]
    final = _thought(_MIXED_FINAL) + format_answer(popularity_from_tool(tool[0]["content"], spec.top_k))
    messages += [{"role": "assistant", "content": first}, *tool, {"role": "assistant", "content": final}]
    return Transcript(messages, [first, final], [tool, []], True)


def teacher_strategies(n: int, teacher: str, seed: int) -> list[str]:
    """The strategy of each of ``n`` tool-using examples: all "category", or a seeded balanced mix."""
    if teacher == "category":
        return ["category"] * n
    if teacher != "mixed":
        raise ValueError(f"unknown warmstart.teacher {teacher!r}; known: category, mixed")
    drawn = [STRATEGIES[i % len(STRATEGIES)] for i in range(n)]
    random.Random(seed).shuffle(drawn)
    return drawn


def encode_transcript(tokenizer: Any, transcript: Transcript, tools: Sequence[Callable] | None
                      ) -> tuple[list[int], list[int]]:
    """(token ids, loss mask) exactly as the rollout engine lays a trajectory out.

    prompt (chat template) | turn + end-of-turn (mask 1) | tool suffix (mask 0) | ... | final turn.
    """
    prompt = render_prompt(tokenizer, transcript.messages[:2], tools if transcript.uses_tools else None)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    mask = [0] * len(ids)
    for turn, tool in zip(transcript.turns, transcript.tool_messages):
        turn_ids = tokenizer.encode(turn, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids += turn_ids
        mask += [1] * len(turn_ids)
        if tool:
            suffix = tokenizer.encode(tool_suffix_text(tokenizer, tool), add_special_tokens=False)
            ids += suffix
            mask += [0] * len(suffix)
    return ids, mask


PPR_TEACHER_VERSION = "v1"
_PPR_FINAL = {"more": "Item {pick} shares more of the user's favourite categories ({fav}), so the user is more likely "
                      "to choose it.",
              "less": "Item {pick} shares fewer of the user's favourite categories ({fav}), so the user is less likely "
                      "to choose it."}
_PPR_FIRST = "I compare A and B with the user's taste. The history leans to {fav}; I read the profile first."


def category_affinity(instance: AgentInstance, item: Any) -> int:
    """How often the history's items carry the item's categories (the teacher's preference signal)."""
    counts = _history_categories(instance)
    return sum(counts.get(c, 0) for c in item.categories)


def ppr_teacher_letter(instance: AgentInstance, item_a: Any, item_b: Any, direction: str) -> str:
    """MORE: the item with the higher affinity (A on a tie); LESS: the other one."""
    more = "A" if category_affinity(instance, item_a) >= category_affinity(instance, item_b) else "B"
    if direction == "more":
        return more
    return "B" if more == "A" else "A"


def ppr_teacher_transcript(instance: AgentInstance, positions: tuple[int, int], direction: str,
                           max_tool_calls: int, env: RecAgentEnv) -> Transcript:
    """A pairwise (PPR) trajectory on candidates ``positions`` (1-based, shown as A and B)."""

    item_a, item_b = (instance.candidates[p - 1] for p in positions)
    fav = _favourites(instance)
    messages = ppr_messages(instance.history, item_a, item_b, direction, max_tool_calls)
    first = _thought(_PPR_FIRST.format(fav=fav)) + format_tool_call("get_user_profile", {})
    tool = [{"role": "tool", "name": "get_user_profile", "content": str(env.get_user_profile())}]
    letter = ppr_teacher_letter(instance, item_a, item_b, direction)
    final = _thought(_PPR_FINAL[direction].format(pick=letter, fav=fav)) + format_choice(letter)
    messages += [{"role": "assistant", "content": first}, *tool, {"role": "assistant", "content": final}]
    return Transcript(messages, [first, final], [tool, []], True)


def ppr_teacher_examples(tokenizer: Any, instances: Sequence[AgentInstance], rows: Sequence[dict],
                         env_factory: Callable[[], RecAgentEnv], n: int, seed: int, max_tool_calls: int
                         ) -> list[tuple[list[int], list[int]]]:
    """``n`` encoded PPR transcripts, cycling over the instances; pair and direction drawn with ``seed``."""
    if n <= 0 or not instances:
        return []
    rng = random.Random(seed)
    probe_tools = env_tools(env_factory())
    examples = []
    for i in range(n):
        instance, row = instances[i % len(instances)], rows[i % len(rows)]
        positions = tuple(rng.sample(range(1, instance.n_candidates + 1), 2))
        direction = ("more", "less")[i % 2]
        env = env_factory()
        # Bound to the two shown items, as PPR rollouts are (the tools then name them [A] and [B]).
        env.reset(**{**row, **pair_columns(*(instance.candidates[p - 1].item_id for p in positions))})
        transcript = ppr_teacher_transcript(instance, positions, direction, max_tool_calls, env)
        examples.append(encode_transcript(tokenizer, transcript, probe_tools))
    return examples


def n_ppr_examples(n_ranking: int, share: float) -> int:
    """PPR examples so that they make up ``share`` of all examples (``warmstart.ppr_share``)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"warmstart.ppr_share must be in [0, 1), got {share}")
    return int(round(n_ranking * share / (1.0 - share)))


@dataclass(frozen=True)
class WarmStartSettings:
    steps: int = 60  # [G] enough for a tiny model to learn the format
    batch_size: int = 8
    learning_rate: float = 3e-3  # [G] tiny randomly initialised models tolerate a high rate
    weight_decay: float = 0.0
    warmup_steps: int = 5
    seed: int = 0
    max_length: int = 8192  # examples longer than this keep their last max_length tokens


def warm_start(model: Any, tokenizer: Any, examples: Sequence[tuple[list[int], list[int]]],
               settings: WarmStartSettings, progress: bool = True) -> list[float]:
    """Fine-tune ``model`` in place on (ids, mask) examples with TRL's ``SFTTrainer``; returns the loss per step.

    One optimizer step takes ``settings.batch_size`` examples as micro-batches of one (unpadded,
    gradient accumulation), so the loss is the mean over every trained token of the step. AdamW,
    linear warm-up then linear decay to a tenth, gradient clipping at 1, no gradient checkpointing.
    Examples longer than ``settings.max_length`` keep their last tokens (the answer is at the end).
    """
    import tempfile

    import datasets
    import torch
    from trl import SFTConfig

    if not examples:
        raise ValueError("warm start needs at least one example")
    rows = [{"input_ids": list(ids[-settings.max_length:]), "completion_mask": list(mask[-settings.max_length:])}
            for ids, mask in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    # Linear warm-up, then linear decay to a tenth: the decay settles the last, noisy steps.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(
        1, settings.warmup_steps)) * max(0.1, 1.0 - step / max(1, settings.steps)))
    on_cpu = next(model.parameters()).device.type == "cpu"
    with tempfile.TemporaryDirectory(prefix="warmstart-") as scratch:
        args = SFTConfig(
            output_dir=scratch, max_steps=settings.steps, per_device_train_batch_size=1,
            gradient_accumulation_steps=settings.batch_size, learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay, max_grad_norm=1.0, seed=settings.seed, data_seed=settings.seed,
            completion_only_loss=True, max_length=None,  # truncated above, from the left
            activation_checkpointing=False,  # TRL turns it on by default; it recomputes every layer: 1.3x slower here
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, use_cpu=on_cpu, bf16=False, fp16=False)
        trainer = _warm_start_trainer_class()(model=model, args=args, processing_class=tokenizer,
                                              train_dataset=datasets.Dataset.from_list(rows),
                                              optimizers=(optimizer, schedule))
        _quiet_logs(trainer, every=max(1, settings.steps // 8) if progress else 0)
        trainer.train()
    model.eval()
    return [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]


def _quiet_logs(trainer: Any, every: int) -> None:
    """Replace the trainer's dict per step (800 lines in a notebook) by one short line every ``every`` steps."""
    from transformers.trainer_callback import PrinterCallback, TrainerCallback

    class EveryNSteps(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if every and logs and "loss" in logs and (state.global_step % every == 0 or state.global_step == 1):
                print(f"[warm start] step {state.global_step}/{state.max_steps} loss {float(logs['loss']):.3f}",
                      flush=True)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(EveryNSteps())


def _warm_start_trainer_class() -> type:
    """``SFTTrainer`` whose loss computes logits only where a token is trained (imported lazily)."""
    import torch
    from trl import SFTTrainer

    class WarmStartTrainer(SFTTrainer):
        """TRL's trainer, with a loss that keeps only the logits of trained positions.

        TRL's own loss scores every position of the sequence; on a 2k-token prompt with a 4k
        vocabulary and ~200 trained tokens that made a step 4.5x slower here. ``logits_to_keep``
        with the positions gives the same value (the test checks it against a full forward).
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs["labels"]
            if labels.shape[0] != 1:
                raise ValueError("the warm start runs micro-batches of one unpadded example")
            next_labels = labels[0, 1:]  # position t predicts token t + 1
            positions = (next_labels != -100).nonzero().squeeze(-1)
            logits = model(input_ids=inputs["input_ids"], logits_to_keep=positions, use_cache=False).logits[0]
            loss_sum = torch.nn.functional.cross_entropy(logits.float(), next_labels[positions], reduction="sum")
            trained = num_items_in_batch if num_items_in_batch is not None else len(positions)
            return loss_sum / torch.as_tensor(trained, device=loss_sum.device).clamp(min=1)

    return WarmStartTrainer


# The copy curriculum [G] (``warmstart.copy_steps``). Measured on the cpu profile (tiny-qwen3-m,
# teacher-forced accuracy of the ten copied numbers on 30 test transcripts): 1,000 mixed warm-start
# steps on whole transcripts (about 1,900 tokens) did not teach the model to copy the popularity
# line (0 of 46 sampled copies exact), with or without short tails mixed in; 300 steps on 160-token
# tails alone copied perfectly in tails (30/30 at every position) but not in whole transcripts
# (2-7/30); 200 more steps on tails of 320, 640, 1,280 tokens and whole transcripts copied
# perfectly in whole transcripts too (30/30). Attention must learn to find one line among ever
# more tokens, so the tails grow.
COPY_SHORT_TOKENS = 160  # [G] holds the popularity line, the final turn and the answer
COPY_LONG_TOKENS = (320, 640, 1280)  # [G] then longer tails, beside the whole transcripts
COPY_SHORT_BATCH = 16  # [G] short tails are cheap
COPY_LONG_BATCH = 8  # [G]


def copy_tail(example: tuple[list[int], list[int]], tokens: int) -> tuple[list[int], list[int]]:
    """The last ``tokens`` tokens of an encoded transcript and their loss mask."""
    ids, mask = example
    return list(ids[-tokens:]), list(mask[-tokens:])


def teacher_examples(tokenizer: Any, instances: Sequence[AgentInstance], rows: Sequence[dict],
                     env_factory: Callable[[], RecAgentEnv], specs: Sequence[PromptSpec],
                     teacher: str = "category", seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Encoded teacher transcripts: every instance under every spec (tool variants get a fresh env).

    With ``teacher="mixed"`` the tool-using examples follow :func:`teacher_strategies`; the
    reasoning-only (R) examples always use the category rule, the only one R's prompt supports.
    """
    examples = []
    probe_tools = env_tools(env_factory())
    for instance, row, strategy in zip(instances, rows, teacher_strategies(len(instances), teacher, seed)):
        for spec in specs:
            env = None
            if spec.uses_tools:
                env = env_factory()
                env.reset(**row)
            transcript = teacher_transcript(instance, spec, env, strategy if spec.uses_tools else "category")
            examples.append(encode_transcript(tokenizer, transcript, probe_tools))
    return examples


def copy_sources(examples: Sequence[tuple[list[int], list[int]]], n_instances: int, specs: Sequence[PromptSpec],
                 teacher: str, seed: int) -> list[tuple[list[int], list[int]]]:
    """The examples of :func:`teacher_examples` whose answer copies the popularity line."""
    strategies = teacher_strategies(n_instances, teacher, seed)
    return [examples[i * len(specs) + j] for i in range(n_instances) for j, spec in enumerate(specs)
            if spec.uses_tools and strategies[i] == "popularity"]


def copy_curriculum(model: Any, tokenizer: Any, examples: Sequence[tuple[list[int], list[int]]],
                    sources: Sequence[tuple[list[int], list[int]]], settings: "WarmStartSettings", steps: int,
                    progress: bool = True) -> list[float]:
    """Two phases after the warm start: short tails of ``sources``, then longer tails beside every example."""
    if steps <= 0 or not sources:
        return []
    short = [copy_tail(e, COPY_SHORT_TOKENS) for e in sources]
    longer = list(examples) + [copy_tail(e, n) for e in sources for n in COPY_LONG_TOKENS]
    losses = warm_start(model, tokenizer, short, dataclasses.replace(settings, steps=steps,
                                                                     batch_size=COPY_SHORT_BATCH), progress)
    return losses + warm_start(model, tokenizer, longer, dataclasses.replace(settings, steps=steps,
                                                                             batch_size=COPY_LONG_BATCH), progress)


def warm_start_model(base_dir: Path | str, out_dir: Path | str, instances: Sequence[AgentInstance],
                     rows: Sequence[dict], env_factory: Callable[[], RecAgentEnv], specs: Sequence[PromptSpec],
                     settings: WarmStartSettings, progress: bool = True,
                     extra_info: dict[str, Any] | None = None, ppr_share: float = 0.0,
                     teacher: str = "category", copy_steps: int = 0) -> tuple[Path, list[float]]:
    """Load ``base_dir``, warm-start it on teacher transcripts, save to ``out_dir`` (atomically).

    ``warmstart_info.json`` beside the weights records the recipe, ``extra_info`` and the losses.
    """
    import json


    loaded = load_causal_lm(base_dir, device="cpu")
    examples = teacher_examples(loaded.tokenizer, instances, rows, env_factory, specs, teacher, settings.seed)
    sources = copy_sources(examples, len(instances), specs, teacher, settings.seed)
    n_ppr = n_ppr_examples(len(examples), ppr_share)
    max_calls = specs[0].max_tool_calls if specs else 10
    examples += ppr_teacher_examples(loaded.tokenizer, instances, rows, env_factory, n_ppr, settings.seed, max_calls)
    losses = warm_start(loaded.model, loaded.tokenizer, examples, settings, progress)
    copy_losses = copy_curriculum(loaded.model, loaded.tokenizer, examples, sources, settings, copy_steps, progress)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        info = {"base": str(base_dir), "teacher_version": TEACHER_VERSION, "teacher": teacher, "settings": settings.__dict__,
                "examples": len(examples), "ppr_examples": n_ppr, "specs": [s.__dict__ for s in specs],
                "loss_first": losses[0], "loss_last": losses[-1], "losses": losses,
                "copy_losses": copy_losses, **(extra_info or {})}
        (tmp / "warmstart_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out_dir, losses


def warmstart_settings(profile: Any) -> tuple[int, WarmStartSettings]:
    """(training instances, settings) from the profile's ``warmstart`` section."""
    cfg = profile.warmstart
    return cfg.instances, WarmStartSettings(steps=cfg.steps, batch_size=cfg.batch_size,
                                            learning_rate=cfg.learning_rate, seed=profile.run.seed)


def warm_model_dir(base_dir: Path) -> Path:
    return base_dir.with_name(base_dir.name + "-warm")


def ensure_warm_tiny_model(profile: Any, root: Path | str = ".", dataset: str | None = None,
                           force: bool = False, progress: bool = True) -> Path:
    """Build the profile's tiny backbone and warm-start it on training instances (both cached).

    With ``warmstart.enabled: false`` the freshly built (random) model is returned as is.

    Teacher transcripts come from the first dataset's training split only (a seeded subset), with
    the same tools the agent will use (SASRec space and profiles when notebooks 02 and 03 wrote
    them), in every prompt variant the evaluation uses. The result lives beside the base model
    (``runs/<profile>/models/tiny-qwen3-<size>-warm/``) and is rebuilt only when its recipe changes.
    """
    import json


    root = Path(root)
    base = ensure_tiny_agent_model(profile.run_dir(root), profile.agent.model_name_or_path, seed=profile.run.seed,
                                   tools=profile.tools)
    if not profile.warmstart.enabled:
        return base
    out = warm_model_dir(base)
    n_instances, settings = warmstart_settings(profile)
    dataset = dataset or profile.data.datasets[0]
    style = profile.agent.prompt_style
    specs = [PromptSpec("tirr", style, profile.agent.top_k, profile.agent.max_tool_calls),
             PromptSpec("r", style, profile.agent.top_k, profile.agent.max_tool_calls)]
    recipe = {"teacher_version": TEACHER_VERSION, "prompt_version": PROMPT_VERSION, "dataset": dataset,
              "instances": n_instances, "settings": settings.__dict__, "specs": [s.__dict__ for s in specs],
              "base_build": json.loads((base / "build_info.json").read_text())}
    if profile.warmstart.teacher != "category":  # recorded only when used, so v1 recipes keep their cache
        recipe["teacher"] = {"name": profile.warmstart.teacher, "version": MIXED_TEACHER_VERSION,
                             "popularity_order": profile.tools.popularity_order,
                             "copy_steps": profile.warmstart.copy_steps,
                             "copy_tails": [COPY_SHORT_TOKENS, *COPY_LONG_TOKENS]}
    if profile.warmstart.ppr_share > 0:  # recorded only when used, so ranking-only recipes keep their cache
        recipe["ppr"] = {"share": profile.warmstart.ppr_share, "teacher_version": PPR_TEACHER_VERSION,
                         "prompts": ppr_prompt_fingerprint()}
    info = out / "warmstart_info.json"
    if not force and info.is_file() and json.loads(info.read_text()).get("recipe") == recipe:
        return out
    bench = load_benchmark(profile, dataset, root)
    train = bench.samples["train"]
    chosen = train.sample(n=min(n_instances, len(train)), random_state=profile.run.seed).sort_values("sample_id")
    rows = chosen.to_dict("records")
    views = item_views(bench.items)
    factory = toolkit_env_factory(profile, bench, root, chosen)
    instances = [instance_from_sample(row, views) for row in rows]
    out, _ = warm_start_model(base, out, instances, rows, factory, specs, settings, progress,
                              extra_info={"recipe": recipe}, ppr_share=profile.warmstart.ppr_share,
                              teacher=profile.warmstart.teacher, copy_steps=profile.warmstart.copy_steps)
    return out
