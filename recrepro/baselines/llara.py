"""LLaRA baseline (core): hybrid item tokens from SASRec, a trained projector, a text-to-hybrid curriculum.

"LLaRA: Large Language-Recommendation Assistant" (Liao et al., SIGIR 2024; arXiv 2312.02445; code
github.com/ljy0ustc/LLaRA read at commit 9733f73). Kept [N]: each item is its title plus one
placeholder token whose input embedding is the item's SASRec row through a Linear-GELU-Linear
projector; a curriculum from text-only to hybrid prompts (:func:`hybrid_probability`); LoRA
(:data:`ORIGINAL_SETTINGS`). Adapted [G]: the reasoning-only prompt and the TALLRec-like answer, the
kit's own SASRec (training period only; an item it never saw gets the zero vector), one added
:data:`PLACEHOLDER` token. Evaluation is not here (the kit's backends generate from token ids,
LLaRA needs ``inputs_embeds``): :func:`load_llara` and :meth:`LLaRAModel.generate` give the greedy
answers for the kit's parser.

Details (what the code does, the mapping, output files): docs/protocol.md, "LLaRA: implementation notes".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from recrepro import paths
from recrepro.agent.parser import format_answer
from recrepro.agent.prompt import (AgentInstance, PromptSpec, build_messages, describe_item, instance_from_sample,
                                   item_views)
from recrepro.agent.teacher import Transcript, encode_transcript
from recrepro.baselines.sequential_scorer import CONFIG_FILE, ITEM_IDS_FILE, WEIGHTS_FILE, load_sequential
from recrepro.baselines.sft import (baseline_profile, fit_examples, sft_stamp, target_ranking, train_once,
                                   training_kwargs)
from recrepro.config import Profile
from recrepro.data.pipeline import load_benchmark
from recrepro.io import sha256_file
from recrepro.models import load_causal_lm, resolve_device
from recrepro.progress import trainer_progress
from recrepro.rl.rta import prompt_spec, seeded_subset, starting_model

LLARA_VERSION = "v1"  # bump when the recipe below changes in a way that changes the model
TABLE1_NAME = "LLaRA"
REC_MODEL = "SASRec"  # [N] the paper's main LLaRA(SASRec) variant
PLACEHOLDER = "<|llara_item|>"  # [G] one added special token; the code's [HistoryEmb]/[CansEmb]/[PH]
INFO_FILE = "llara_info.json"
PROJECTOR_FILE = "projector.safetensors"
ITEM_TABLE_FILE = "item_table.safetensors"
ITEM_TABLE_IDS_FILE = "item_table_ids.json"

# [N] the authors' settings, recorded (not applied: the profile's llara and sft sections train).
ORIGINAL_SETTINGS: dict[str, Any] = {
    "rec_size": 64,  # main.py --rec_size (their SASRec hidden size)
    "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.1,  # main.py defaults; train_*.sh keep them
    "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],  # load_llm
    "learning_rate": {"movielens": 8e-4, "steam": 5e-4, "lastfm": 7e-4},  # train_*.sh --lr
    "lr_schedule": "linear warm-up over max_step // 20 from lr / 100, then cosine to lr / 100",  # optims.py
    "optimizer": "Adam; weight decay 1e-5 on the projector only",  # configure_optimizers, main.py --weight_decay
    "batch_size": 128,  # train_movielens.sh 8 x 16 accumulation (steam 4 x 32)
    "max_epochs": 5,  # train_*.sh; checkpoint by validation HitRatio@1 x valid ratio
    "n_candidates": 20,  # train_*.sh --cans_num 20
    "precision": "bf16", "backbone": "Llama-2-7B",
}


def llara_dir(profile: Profile, root: Path | str, dataset: str) -> Path:
    """``runs/<profile>/llara/<dataset>``."""
    return paths.stage_dir(profile, "llara", dataset, root)


def sasrec_export_dir(profile: Profile, root: Path | str, dataset: str) -> Path:  # notebook 02's export
    return paths.classic_models_dir(profile, dataset, root) / REC_MODEL


# -------- Item vectors and the projector ---------------------------------------------------------

class ItemProjector(nn.Module):
    """The code's ``MlpProjector``: recommender embedding -> LLM input-embedding space."""

    def __init__(self, rec_size: int, llm_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(rec_size, llm_size), nn.GELU(), nn.Linear(llm_size, llm_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


@dataclasses.dataclass(frozen=True)
class ItemTable:
    """Recommender item vectors: row ``r + 1`` holds ``item_ids[r]``; row 0 is zeros, every unknown item."""

    item_ids: tuple[str, ...]
    matrix: torch.Tensor  # [len(item_ids) + 1, rec_size], float32

    @classmethod
    def from_embeddings(cls, item_ids: Sequence[str], matrix: Any) -> "ItemTable":
        rows = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
        if rows.dim() != 2 or rows.shape[0] != len(item_ids):
            raise ValueError(f"{len(item_ids)} item ids but an embedding matrix of shape {tuple(rows.shape)}")
        return cls(tuple(str(i) for i in item_ids), torch.cat([torch.zeros(1, rows.shape[1]), rows]))

    rec_size = property(lambda self: int(self.matrix.shape[1]))

    @functools.cached_property
    def row_of(self) -> dict[str, int]:
        return {item: row for row, item in enumerate(self.item_ids, start=1)}

    def rows(self, item_ids: Sequence[str]) -> list[int]:
        return [self.row_of.get(str(i), 0) for i in item_ids]


def load_item_table(export_dir: Path) -> ItemTable:
    """SASRec's item-embedding rows (``SequentialScorer.item_embeddings``, padding row left out)."""
    return ItemTable.from_embeddings(*load_sequential(Path(export_dir)).item_embeddings())


# -------- Hybrid prompts -------------------------------------------------------------------------

def hybrid_messages(instance: AgentInstance, spec: PromptSpec, placeholder: str = PLACEHOLDER) -> list[dict]:
    """The agent's messages with ``placeholder`` after each history line, then each candidate line."""
    messages = build_messages(instance, spec)
    lines = messages[1]["content"].split("\n")
    wanted = [f"{i}. {describe_item(v)}" for i, v in enumerate(instance.history, start=1)]
    wanted += [f"[{i}] {describe_item(v)}" for i, v in enumerate(instance.candidates, start=1)]
    at = 0
    for line in wanted:
        try:
            at = lines.index(line, at)
        except ValueError:
            raise ValueError(f"the agent's user prompt no longer has the item line {line!r}; "
                             "update hybrid_messages to its layout") from None
        lines[at] += " " + placeholder
        at += 1
    return [messages[0], {**messages[1], "content": "\n".join(lines)}]


def add_placeholder_token(model: Any, tokenizer: Any, placeholder: str = PLACEHOLDER) -> int:
    """Register ``placeholder`` as one special token (embeddings grown if needed); its id. Its input (and
    output) embedding row becomes the mean of the rows before it [G]: what text-only examples see there."""
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(placeholder, special=True, normalized=False)], special_tokens=True)
    token_id = int(tokenizer.convert_tokens_to_ids(placeholder))
    if token_id >= model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(token_id + 1, mean_resizing=False)
    with torch.no_grad():
        for table in {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())
                      if m is not None and m.weight.shape[0] > token_id}.values():
            table[token_id] = table[:token_id].float().mean(dim=0).to(table.dtype)
    return token_id


def encode_hybrid_example(tokenizer: Any, row: Mapping[str, Any], views: Mapping[str, Any], spec: PromptSpec,
                          top_k: int, placeholder_id: int) -> dict[str, Any]:
    """Token ids, answer mask and the item behind each placeholder (history, then candidates)."""
    instance = instance_from_sample(row, views)
    answer = format_answer(target_ranking(instance.n_candidates, int(instance.target_index), top_k))
    messages = hybrid_messages(instance, spec, tokenizer.convert_ids_to_tokens(placeholder_id))
    transcript = Transcript(messages=messages, turns=[answer], tool_messages=[[]], uses_tools=False)
    ids, mask = encode_transcript(tokenizer, transcript, None)
    items = [view.item_id for view in instance.history + instance.candidates]
    if ids.count(placeholder_id) != len(items):
        raise ValueError(f"sample {instance.sample_id}: {ids.count(placeholder_id)} placeholder tokens for "
                         f"{len(items)} items (does a title contain {PLACEHOLDER!r}?)")
    return {"input_ids": ids, "completion_mask": mask, "item_ids": items, "sample_id": instance.sample_id}


def build_inputs_embeds(word_embeddings: nn.Module, projector: nn.Module, item_table: torch.Tensor,
                        input_ids: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
    """Word embeddings of ``input_ids``, except where ``item_rows >= 0``: there the projector's image of
    ``item_table[item_rows]`` (the code's ``wrap_emb``). Both index tensors are [batch, length]."""
    embeds = word_embeddings(input_ids)
    where = item_rows >= 0
    if not bool(where.any()):
        return embeds
    vectors = item_table[item_rows[where]].to(next(projector.parameters()).dtype)
    return embeds.index_put(torch.nonzero(where, as_tuple=True), projector(vectors).to(embeds.dtype))


# -------- The curriculum -------------------------------------------------------------------------

def hybrid_probability(step: int, total_steps: int) -> float:
    """P(hybrid prompt) at the ``step``-th batch (1-based) of ``total_steps``: min(1, step / total_steps)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return min(1.0, max(0, step) / total_steps)


def training_batches(n_examples: int, batch_size: int, steps: int, epochs: int) -> int:
    """Batches the trainer draws: ``steps`` when > 0, else every batch of every epoch (no accumulation)."""
    return steps if steps > 0 else -(-n_examples // batch_size) * max(1, epochs)


@dataclasses.dataclass
class CurriculumCollator:
    """Pads encoded examples and decides, per example, text-only or hybrid (the curriculum).

    The ``step``-th call draws one uniform number per example from a generator seeded by (``seed``,
    ``step``); an example is hybrid when its draw is below :func:`hybrid_probability` (always when
    ``train`` is False, as at the code's validation and test). Output: ``input_ids``,
    ``attention_mask``, ``labels`` (answer tokens, else -100) and ``item_rows`` [batch, length]: the
    :class:`ItemTable` row at each placeholder of a hybrid example, -1 everywhere else.
    """

    pad_token_id: int
    placeholder_id: int
    table: ItemTable
    total_steps: int
    seed: int
    train: bool = True
    padding_side: str = "right"  # "left" for generation
    step: int = 0
    hybrid_shares: list[float] = dataclasses.field(default_factory=list)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        self.step += 1
        chance = hybrid_probability(self.step, self.total_steps) if self.train else 1.0
        hybrid = np.random.default_rng([int(self.seed), self.step]).random(len(examples)) < chance
        width = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        item_rows = torch.full((len(examples), width), -1, dtype=torch.long)
        for i, example in enumerate(examples):
            ids = torch.tensor(example["input_ids"], dtype=torch.long)
            span = slice(width - len(ids), width) if self.padding_side == "left" else slice(0, len(ids))
            input_ids[i, span], attention[i, span] = ids, 1
            if "completion_mask" in example:
                answer = torch.tensor(example["completion_mask"], dtype=torch.bool)
                labels[i, span] = torch.where(answer, ids, torch.full_like(ids, -100))
            if hybrid[i]:
                at = torch.nonzero(ids == self.placeholder_id).view(-1) + span.start
                item_rows[i, at] = torch.tensor(self.table.rows(example["item_ids"]), dtype=torch.long)
        self.hybrid_shares.append(float(hybrid.mean()))
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "item_rows": item_rows}


# -------- The model ------------------------------------------------------------------------------

class LLaRAModel(nn.Module):
    """The LLM (LoRA-wrapped while training), the projector and the frozen item table (a buffer)."""

    def __init__(self, llm: nn.Module, projector: ItemProjector, item_table: torch.Tensor) -> None:
        super().__init__()
        self.llm, self.projector = llm, projector
        self.register_buffer("item_table", item_table.float(), persistent=False)

    def inputs_embeds(self, input_ids: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
        return build_inputs_embeds(self.llm.get_input_embeddings(), self.projector, self.item_table, input_ids,
                                   item_rows)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, item_rows: torch.Tensor,
                labels: torch.Tensor | None = None) -> Any:
        return self.llm(inputs_embeds=self.inputs_embeds(input_ids, item_rows), attention_mask=attention_mask,
                        labels=labels, use_cache=False)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, item_rows: torch.Tensor,
                 **kwargs: Any) -> torch.Tensor:
        """The LLM's ``generate`` on the hybrid embeddings (left-padded batch); returns the new tokens only."""
        return self.llm.generate(inputs_embeds=self.inputs_embeds(input_ids, item_rows),
                                 attention_mask=attention_mask, **kwargs)


def llara_model(llm: nn.Module, table: ItemTable, lora: Any, seed: int) -> LLaRAModel:
    """LoRA on ``llm`` (peft freezes every base weight) and a fresh projector, both drawn under ``seed``."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = ItemProjector(table.rec_size, int(llm.get_input_embeddings().embedding_dim))
        peft_model = get_peft_model(llm, lora)
    return LLaRAModel(peft_model, projector, table.matrix)


def save_llara(model: LLaRAModel, tokenizer: Any, table: ItemTable, out_dir: Path) -> None:
    """Merged LLM + tokenizer, projector and item table (safetensors), in ``out_dir``."""
    from safetensors.torch import save_file

    merged = model.llm.merge_and_unload() if hasattr(model.llm, "merge_and_unload") else model.llm
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.projector.state_dict().items()}
    save_file(state, str(Path(out_dir) / PROJECTOR_FILE),
              metadata={"rec_size": str(table.rec_size), "llm_size": str(state["mlp.2.weight"].shape[0])})
    save_file({"item_table": table.matrix.contiguous()}, str(Path(out_dir) / ITEM_TABLE_FILE))
    (Path(out_dir) / ITEM_TABLE_IDS_FILE).write_text(json.dumps(list(table.item_ids)) + "\n")


@dataclasses.dataclass(frozen=True)
class LoadedLLaRA:
    model: LLaRAModel
    tokenizer: Any
    table: ItemTable
    placeholder_id: int
    device: str


def load_llara(final: Path | str, device: str = "auto") -> LoadedLLaRA:
    """A saved LLaRA folder back as a model in eval mode (tokenizer padding on the left, for generation)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    final = Path(final)
    loaded = load_causal_lm(final, device=device, padding_side="left")
    with safe_open(str(final / PROJECTOR_FILE), "pt") as handle:
        meta = handle.metadata()
    projector = ItemProjector(int(meta["rec_size"]), int(meta["llm_size"]))
    projector.load_state_dict(load_file(str(final / PROJECTOR_FILE)))
    table = ItemTable(tuple(json.loads((final / ITEM_TABLE_IDS_FILE).read_text())),
                      load_file(str(final / ITEM_TABLE_FILE))["item_table"])
    model = LLaRAModel(loaded.model, projector.to(loaded.dtype), table.matrix).to(loaded.device).eval()
    return LoadedLLaRA(model, loaded.tokenizer, table, int(loaded.tokenizer.convert_tokens_to_ids(PLACEHOLDER)),
                       loaded.device)


# -------- Training -------------------------------------------------------------------------------

def trainer_args(profile: Profile, output_dir: Path, on_cpu: bool):
    """transformers ``TrainingArguments`` from the profile's ``sft`` section (as the TALLRec-like row)."""
    from transformers import TrainingArguments

    return TrainingArguments(**training_kwargs(profile, output_dir, on_cpu),
                             remove_unused_columns=False)  # the collator reads item_ids


def fit_llara(profile: Profile, model_path: str, samples: Any, views: Mapping[str, Any], table: ItemTable,
              out_dir: Path, log: Callable[[str], None] = print, what: str = "llara training") -> dict[str, Any]:
    """Train LoRA + projector on ``samples`` from ``model_path``, save in ``out_dir``; the info (no stamp)."""
    from peft import LoraConfig
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    sft = profile.sft
    device = resolve_device(profile.run.device)
    loaded = load_causal_lm(model_path, device=device, padding_side="right")
    placeholder_id = add_placeholder_token(loaded.model, loaded.tokenizer)
    spec = prompt_spec(profile, "r")
    encoded = [encode_hybrid_example(loaded.tokenizer, row, views, spec, profile.agent.top_k, placeholder_id)
               for row in samples.to_dict("records")]
    examples = fit_examples(encoded, sft.max_length, log, what="llara")
    lora = LoraConfig(r=sft.lora_r, lora_alpha=sft.lora_alpha, lora_dropout=sft.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = llara_model(loaded.model, table, lora, profile.run.seed).to(device)
    total = training_batches(len(examples), sft.batch_size, sft.steps, sft.epochs)
    collator = CurriculumCollator(loaded.tokenizer.pad_token_id, placeholder_id, table, total, profile.run.seed)
    trainer = Trainer(model=model, args=trainer_args(profile, Path(out_dir) / "trainer", device == "cpu"),
                      data_collator=collator, train_dataset=examples)
    trainer.remove_callback(PrinterCallback)  # progress lines instead of a dict per step
    trainer.add_callback(trainer_progress(what, note_key="loss"))
    began = time.perf_counter()
    trainer.train()
    steps = trainer.state.global_step
    save_llara(model, loaded.tokenizer, table, Path(out_dir))
    shutil.rmtree(Path(out_dir) / "trainer", ignore_errors=True)
    known = {i for e in examples for i in e["item_ids"]} & set(table.row_of)
    return {"instances": len(examples), "steps": steps, "wall_s_train": round(time.perf_counter() - began, 2),
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
            "hybrid_shares": collator.hybrid_shares[:steps], "curriculum_batches": total,
            "items_known_to_rec_model": len(known), "placeholder": PLACEHOLDER, "rec_model": REC_MODEL,
            "settings": dataclasses.asdict(sft), "original_settings": ORIGINAL_SETTINGS}


def llara_stamp(profile: Profile, dataset: str, start_model: str, export_dir: Path) -> dict[str, Any]:
    """Recipe, the SFT-style stamp of config and start model, and the exact SASRec export read."""
    return {"llara_version": LLARA_VERSION, "placeholder": PLACEHOLDER, "rec_model": REC_MODEL,
            "rec_export": {name: sha256_file(Path(export_dir) / name) for name in (CONFIG_FILE, WEIGHTS_FILE,
                                                                                 ITEM_IDS_FILE)},
            "stage": sft_stamp(profile, dataset, start_model)}


def train_llara(profile: Profile, root: Path | str, dataset: str, force: bool = False, *,
                start_model: str | None = None, log: Callable[[str], None] = print) -> Path:
    """LLaRA on the SFT training subset; returns ``runs/<profile>/llara/<dataset>/final`` (cached by stamp).

    Needs notebook 02's SASRec export of ``dataset``. ``start_model`` defaults to the agent's start
    model (:func:`recrepro.rl.rta.starting_model`).
    """
    export_dir = sasrec_export_dir(profile, root, dataset)
    if not (export_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{export_dir}: no {REC_MODEL} export; LLaRA reads its item embeddings. Run "
                                "notebook 02 (recrepro.stages.baselines.run_classic_baselines) first")
    start = start_model or starting_model(profile, root)
    own = baseline_profile(profile, "llara")
    final = llara_dir(profile, root, dataset) / "final"
    stamp = llara_stamp(own, dataset, start, export_dir)

    def fit(out_dir: Path) -> dict[str, Any]:
        bench = load_benchmark(profile, dataset, root)
        train = seeded_subset(bench.samples["train"], own.sft.train_instances, profile.run.seed)
        return fit_llara(own, start, train, item_views(bench.items), load_item_table(export_dir), out_dir, log,
                         what=f"llara/{dataset} training")

    train_once(own, final, INFO_FILE, stamp, fit, force=force, log=log,
               skipping=f"[llara] {dataset}: config, start model and {REC_MODEL} unchanged, skipping training")
    return final


__all__: Sequence[str] = ("TABLE1_NAME", "ItemProjector", "ItemTable", "CurriculumCollator", "LLaRAModel",
                          "hybrid_probability", "hybrid_messages", "encode_hybrid_example", "build_inputs_embeds",
                          "train_llara", "load_llara")
