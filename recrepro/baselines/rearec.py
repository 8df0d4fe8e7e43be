"""ReaRec (Tang et al., "Think Before Recommend", arXiv 2503.22675) on top of RecBole's SASRec.

After SASRec's pass over the items, K implicit reasoning steps feed the last hidden state plus a
learned reasoning-position embedding back as one extra position each; with K = 0 the model *is*
SASRec (same parameters, same forward). Two training schemes: ERL (mean of the K+1 steps, KL
diversity term) and PRL (last step, progressively sharper temperatures, contrastive term over a
noisy pass). Only the paper's abstract could be read, so every formula and default is the authors'
code's: [C] = github.com/TangJiakai/ReaRec at commit 7f46432 (read, no code copied), [R] = that
repository's README. Deviations are only those forced by RecBole's layout or by K = 0 having to be
SASRec exactly.

Details (sources, formulas, deviations): docs/protocol.md, "ReaRec: implementation notes".
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recrepro.baselines import recbole_compat

recbole_compat.apply()  # idempotent (importing recbole_compat already applied it); RecBole needs it first
from recbole.model.sequential_recommender.sasrec import SASRec  # noqa: E402

SCHEMES: tuple[str, ...] = ("erl", "prl")
# The kit's model names for the two variants and the scheme each selects.
VARIANTS: dict[str, str] = {"ReaRec-ERL": "erl", "ReaRec-PRL": "prl"}

# Config keys of ReaRec beyond SASRec's, with their defaults. [C] = authors' argparse default.
DEFAULTS: dict[str, Any] = {
    "reasoning_steps": 2,  # K, [C] --reason_step 2
    "scheme": "erl",  # "erl" or "prl"
    "temperature": 0.07,  # tau, [C] --temperature 0.07 (ERL.py and PRL.py)
    "kl_weight": 0.05,  # lambda (ERL), [C] --kl_weight 0.05; [R] grid 0.001..0.1
    "temp_scale": 5.0,  # alpha (PRL), [C] --temp_scale 5.0; [R] grid 1.0..10.0
    "noise_factor": 0.01,  # gamma (PRL), [C] --noise_factor 0.01; [R] gamma = 0.01
    "pl_weight": 1.0,  # w_pl (PRL), [C] --pl_weight 1.0
    "cl_weight": 1.0,  # w_cl (PRL), [C] --cl_weight 1.0
    "warmup_epochs": 2,  # PRL noise from epoch warmup+1 on, [C] --warmup 2
}

_MASKED = -10000.0  # RecBole's additive attention mask value


def _option(config: Any, key: str) -> Any:
    """``config[key]``, or the default when the key is absent (a RecBole Config answers None; the
    kit's export stand-in raises KeyError)."""
    try:
        value = config[key]
    except KeyError:
        value = None
    return DEFAULTS[key] if value is None else value


# ----------------------------------------------------------------------------- losses


def temperature_schedule(temperature: float, temp_scale: float, reasoning_steps: int) -> list[float]:
    """PRL's temperature of each step k = 0..K: tau * alpha^(K-k) (the last step at tau itself)."""
    return [temperature * math.pow(temp_scale, reasoning_steps - k) for k in range(reasoning_steps + 1)]


def erl_loss(steps: torch.Tensor, items: torch.Tensor, target: torch.Tensor, temperature: float,
             kl_weight: float) -> dict[str, torch.Tensor]:
    """ERL's terms for step outputs ``steps`` [B, K+1, H], item table ``items`` [N, H], targets [B].

    Returns ``rec`` (CE of the mean representation), ``kl`` (mean pairwise KL, 0 when K = 0) and
    ``loss`` = rec - kl_weight * kl.
    """
    rec = F.cross_entropy(steps.mean(dim=1) @ items.t() / temperature, target)
    n_steps = steps.shape[1]
    if n_steps < 2:
        kl = rec.new_zeros(())
    else:
        log_p = F.log_softmax(steps @ items.t() / temperature, dim=-1)  # [B, T, N]
        p = log_p.exp()
        fixed = log_p.detach()
        # pair[b, i, j] = KL(p_j || sg(p_i)) = sum_n p_j (log p_j - sg(log p_i))
        pair = (p * log_p).sum(-1).unsqueeze(1) - torch.einsum("bjn,bin->bij", p, fixed)
        off_diagonal = ~torch.eye(n_steps, dtype=torch.bool, device=steps.device)
        kl = pair[:, off_diagonal].mean()
    return {"rec": rec, "kl": kl, "loss": rec - kl_weight * kl}


def prl_loss(steps: torch.Tensor, noisy: torch.Tensor | None, items: torch.Tensor, target: torch.Tensor,
             temperature: float, temp_scale: float, pl_weight: float, cl_weight: float) -> dict[str, torch.Tensor]:
    """PRL's terms for clean step outputs [B, K+1, H] and the noisy pass's (or None).

    Returns ``rec`` (CE of the last step at tau), ``pl`` (mean CE of steps 0..K-1 at
    tau * temp_scale^(K-k)), ``cl`` (InfoNCE between noisy and clean reasoning steps 1..K over the
    batch, 0 without a noisy pass or when K = 0) and ``loss`` = rec + pl_weight * pl + cl_weight * cl.
    """
    n_items = items.shape[0]
    rec = F.cross_entropy(steps[:, -1] @ items.t() / temperature, target)
    k = steps.shape[1] - 1
    if k == 0:
        pl = rec.new_zeros(())
    else:
        temps = steps.new_tensor(temperature_schedule(temperature, temp_scale, k)[:-1])  # steps 0..K-1
        logits = (steps[:, :-1] @ items.t()) / temps.view(1, k, 1)
        pl = F.cross_entropy(logits.reshape(-1, n_items), target.repeat_interleave(k))
    if noisy is None or k == 0:
        cl = rec.new_zeros(())
    else:
        clean, other = steps[:, 1:], noisy[:, 1:]  # [B, K, H]
        sim = torch.einsum("btd,jtd->btj", other, clean) / temperature  # row b: noisy b vs clean j
        labels = torch.arange(steps.shape[0], device=steps.device).repeat_interleave(k)
        cl = F.cross_entropy(sim.reshape(-1, steps.shape[0]), labels)
    return {"rec": rec, "pl": pl, "cl": cl, "loss": rec + pl_weight * pl + cl_weight * cl}


# ----------------------------------------------------------------------------- model


class ReaRec(SASRec):
    """SASRec with K implicit reasoning steps and the ERL or PRL training scheme.

    Reads SASRec's config keys plus those of :data:`DEFAULTS` (each optional). ``forward`` returns
    the sequence representation [B, H] (ERL: mean of the K+1 step outputs, PRL: the last), so
    RecBole's ``predict`` / ``full_sort_predict`` and the kit's scorer work unchanged. Only full
    softmax training (``loss_type: CE``) is supported, as in the authors' code.
    """

    def __init__(self, config: Any, dataset: Any) -> None:
        super().__init__(config, dataset)
        if self.loss_type != "CE":
            raise ValueError(f"ReaRec trains with full softmax only (loss_type CE), got {self.loss_type!r}")
        self.reasoning_steps = int(_option(config, "reasoning_steps"))
        self.scheme = str(_option(config, "scheme")).lower()
        if self.reasoning_steps < 0:
            raise ValueError(f"reasoning_steps must be >= 0, got {self.reasoning_steps}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {self.scheme!r}")
        self.temperature = float(_option(config, "temperature"))
        self.kl_weight = float(_option(config, "kl_weight"))
        self.temp_scale = float(_option(config, "temp_scale"))
        self.noise_factor = float(_option(config, "noise_factor"))
        self.pl_weight = float(_option(config, "pl_weight"))
        self.cl_weight = float(_option(config, "cl_weight"))
        self.warmup_epochs = int(_option(config, "warmup_epochs"))
        if self.temperature <= 0 or self.temp_scale <= 0:
            raise ValueError("temperature and temp_scale must be > 0")
        # Created after SASRec's initialisation, so with K = 0 the parameters (and the random draws
        # that initialise them) are exactly SASRec's. [C]: only created when K > 0.
        if self.reasoning_steps > 0:
            self.reasoning_position_embedding = nn.Embedding(self.reasoning_steps, self.hidden_size)
            self.reasoning_position_embedding.weight.data.normal_(mean=0.0, std=self.initializer_range)
        # Training epochs begun (RecBole's Trainer calls model.train() once at the start of each).
        self.epochs_started = 0

    def train(self, mode: bool = True) -> "ReaRec":
        if mode:
            self.epochs_started += 1
        return super().train(mode)

    @property
    def noise_active(self) -> bool:
        """Whether a training loss now includes PRL's noisy pass (after the warm-up epochs)."""
        return (self.training and self.scheme == "prl" and self.noise_factor > 0 and self.reasoning_steps > 0
                and self.epochs_started > self.warmup_epochs)

    # -- encoding

    def _valid_items(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: real items of the history. Positions at or after ``item_seq_len`` never count,
        whatever they hold (no look-ahead); id 0 is padding, as in RecBole's own mask."""
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        return (item_seq != 0) & (positions.unsqueeze(0) < item_seq_len.unsqueeze(1))

    def _encode_items(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor
                      ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """SASRec's pass over the items: (h_0 [B, H], each layer's input [B, L, H], valid [B, L])."""
        position_ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        position_embedding = self.position_embedding(position_ids.unsqueeze(0).expand_as(item_seq))
        hidden = self.dropout(self.LayerNorm(self.item_embedding(item_seq) + position_embedding))
        valid = self._valid_items(item_seq, item_seq_len)
        causal = torch.tril(valid.unsqueeze(1).unsqueeze(2).expand(-1, -1, item_seq.size(1), -1))
        mask = torch.where(causal, 0.0, _MASKED)
        layer_inputs = []
        for layer in self.trm_encoder.layer:  # exactly RecBole's TransformerEncoder.forward
            layer_inputs.append(hidden)
            hidden = layer(hidden, mask)
        return self.gather_indexes(hidden, item_seq_len - 1), layer_inputs, valid

    @staticmethod
    def _reason_layer(layer: nn.Module, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """One position ``x`` [B, 1, H] through one RecBole TransformerLayer, attending to the cached
        ``keys`` / ``values`` [B, T, H] (which already include x's own); same arithmetic as
        RecBole's MultiHeadAttention and FeedForward."""
        attn = layer.multi_head_attention
        query = attn.transpose_for_scores(attn.query(x)).permute(0, 2, 1, 3)  # [B, h, 1, d]
        key = attn.transpose_for_scores(keys).permute(0, 2, 3, 1)  # [B, h, d, T]
        value = attn.transpose_for_scores(values).permute(0, 2, 1, 3)  # [B, h, T, d]
        scores = torch.matmul(query, key) / attn.sqrt_attention_head_size + mask
        probs = attn.attn_dropout(attn.softmax(scores))
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
        context = context.view(x.size(0), 1, attn.all_head_size)
        hidden = attn.LayerNorm(attn.out_dropout(attn.dense(context)) + x)
        return layer.feed_forward(hidden)

    def reasoning_outputs(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, noise: float = 0.0,
                          steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The step outputs h_0..h_K [B, K+1, H] and, when ``noise`` > 0, the noisy pass's [B, K+1, H].

        The noisy pass repeats the item pass (its own dropout draws) and feeds h_k + r_k + noise *
        N(0, I) at step k, h_k from the clean pass [C layers.py]. ``steps`` overrides K (at most K).
        """
        n_steps = self.reasoning_steps if steps is None else steps
        if not 0 <= n_steps <= self.reasoning_steps:
            raise ValueError(f"steps must be in 0..{self.reasoning_steps}, got {n_steps}")
        batch = item_seq.size(0)
        if noise > 0:
            item_seq, item_seq_len = item_seq.repeat(2, 1), item_seq_len.repeat(2)
        last, layer_inputs, valid = self._encode_items(item_seq, item_seq_len)
        outputs = [last]
        if n_steps:
            keys = [layer.multi_head_attention.key(h) for layer, h in zip(self.trm_encoder.layer, layer_inputs)]
            values = [layer.multi_head_attention.value(h) for layer, h in zip(self.trm_encoder.layer, layer_inputs)]
            item_mask = torch.where(valid, 0.0, _MASKED).unsqueeze(1).unsqueeze(2)  # [B', 1, 1, L]
        for k in range(n_steps):
            step_input = last[:batch] + self.reasoning_position_embedding.weight[k]
            if noise > 0:
                step_input = torch.cat([step_input, step_input + noise * torch.randn_like(step_input)])
            x = self.dropout(self.LayerNorm(step_input)).unsqueeze(1)  # [B', 1, H]
            mask = torch.cat([item_mask, item_mask.new_zeros(item_mask.shape[:3] + (k + 1,))], dim=-1)
            for index, layer in enumerate(self.trm_encoder.layer):
                attn = layer.multi_head_attention
                keys[index] = torch.cat([keys[index], attn.key(x)], dim=1)
                values[index] = torch.cat([values[index], attn.value(x)], dim=1)
                x = self._reason_layer(layer, x, keys[index], values[index], mask)
            last = x.squeeze(1)
            outputs.append(last)
        stacked = torch.stack(outputs, dim=1)  # [B', K+1, H]
        if noise > 0:
            return stacked[:batch], stacked[batch:]
        return stacked, None

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        steps, _ = self.reasoning_outputs(item_seq, item_seq_len)
        return self.represent(steps)

    def represent(self, steps: torch.Tensor) -> torch.Tensor:
        """The user representation from step outputs [B, K+1, H]: ERL's mean, PRL's last step."""
        return steps.mean(dim=1) if self.scheme == "erl" else steps[:, -1]

    # -- training

    def loss_terms(self, interaction: Any) -> dict[str, torch.Tensor]:
        """Every term of the scheme's loss for a RecBole interaction (or any mapping of its fields)."""
        item_seq, item_seq_len = interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        noise = self.noise_factor if self.noise_active else 0.0
        steps, noisy = self.reasoning_outputs(item_seq, item_seq_len, noise)
        items = self.item_embedding.weight
        if self.scheme == "erl":
            return erl_loss(steps, items, target, self.temperature, self.kl_weight)
        return prl_loss(steps, noisy, items, target, self.temperature, self.temp_scale, self.pl_weight,
                        self.cl_weight)

    def calculate_loss(self, interaction: Any) -> torch.Tensor:
        return self.loss_terms(interaction)["loss"]


# ----------------------------------------------------------------------------- kit hooks


def variant_parameters(model_name: str, **overrides: Any) -> dict[str, Any]:
    """The ReaRec config keys for ``model_name`` ("ReaRec-ERL" / "ReaRec-PRL"), defaults + overrides."""
    if model_name not in VARIANTS:
        raise ValueError(f"unknown ReaRec variant {model_name!r}; known: {sorted(VARIANTS)}")
    unknown = set(overrides) - set(DEFAULTS) - {"scheme"}
    if unknown:
        raise ValueError(f"unknown ReaRec parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **overrides, "scheme": VARIANTS[model_name]}


def model_class(model_name: str) -> type:
    """The model class for a kit model name: :class:`ReaRec` for its variants, else RecBole's own."""
    if model_name in VARIANTS or model_name == "ReaRec":
        return ReaRec
    from recbole.utils import get_model

    return get_model(model_name)
