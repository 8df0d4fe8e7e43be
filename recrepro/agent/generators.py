"""Generation for the rollout engine: explicit settings and the ``generate`` back ends.

Generation settings are set explicitly in a :class:`transformers.GenerationConfig` built here from
:class:`RolloutSettings`; nothing is inherited from the model's own generation config (a hub
model's defaults, such as top_k=20, would silently change sampling). Greedy mode
(``do_sample=False``) is for tests and benchmarks. Sampled rollouts are reproducible for the same
seed and the same batch composition.

Generators (the ``generate`` back ends): :class:`HFGenerator` (transformers ``model.generate``,
CPU or GPU, with optional reuse of each trajectory's KV cache across turns); :class:`VLLMGenerator`
(vLLM, used when installed and a GPU is present; code path kept, not run in CI);
:class:`OpenAICompletionsGenerator` (an OpenAI-compatible ``/v1/completions`` endpoint, the ``served``
profile section; its response cache and per-request figures are in :mod:`recrepro.agent.endpoint`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

from recrepro.agent.endpoint import RequestStats, ResponseCache, cache_key

# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RolloutSettings:
    """Every knob of generation, set explicitly (never read from the model's generation config)."""

    do_sample: bool = False  # False = greedy (tests, benchmarks, deterministic evaluation)
    temperature: float = 0.6  # [N] PAPER.md 1.4 rollout temperature; used only when sampling
    top_p: float = 1.0  # [G] no nucleus cut unless asked
    top_k: int = 0  # [G] 0 = off (transformers' own default would be 50)
    max_new_tokens_per_turn: int = 256  # [G] one assistant turn
    max_new_tokens_total: int = 6144  # [N] PAPER.md 1.4 maximum generation, summed over turns
    max_context_tokens: int | None = None  # None = the model's max_position_embeddings
    seed: int = 0
    batch_size: int | None = None  # None = every live trajectory in one generate call
    reuse_cache: bool = True  # HFGenerator: keep each trajectory's KV cache across turns
    # Tokens per generate call within a turn; None = a whole turn per call. With a value, turns that
    # have ended leave the batch between calls instead of idling until the longest turn ends (a
    # cheap form of continuous batching; with reuse_cache nothing is encoded twice). Greedy output
    # is the same either way.
    segment_tokens: int | None = None
    progress: bool = True  # tqdm bar over finished trajectories
    # Qwen3 hybrid templates' thinking switch (agent.enable_thinking); None = the template's default.
    enable_thinking: bool | None = None


def build_generation_config(settings: RolloutSettings, eos_token_ids: Sequence[int], pad_token_id: int,
                            max_new_tokens: int) -> Any:
    """A GenerationConfig from our settings only; sampling knobs are dropped in greedy mode."""
    from transformers import GenerationConfig

    common = dict(max_new_tokens=max_new_tokens, eos_token_id=list(eos_token_ids), pad_token_id=pad_token_id,
                  use_cache=True, num_beams=1, repetition_penalty=1.0, return_dict_in_generate=True)
    if not settings.do_sample:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(do_sample=True, temperature=settings.temperature, top_p=settings.top_p,
                            top_k=settings.top_k, **common)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """End-of-turn ids: ``<|im_end|>`` (the Qwen3 eos) and ``<|endoftext|>`` where present."""
    ids = [tokenizer.eos_token_id]
    extra = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if isinstance(extra, int) and extra != tokenizer.unk_token_id and extra not in ids:
        ids.append(extra)
    return [i for i in ids if i is not None]


# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GenRequest:
    key: int  # trajectory id, stable across turns (lets a generator keep per-trajectory state)
    ids: list[int]  # the whole sequence so far


@dataclass(frozen=True)
class GenOutput:
    new_ids: list[int]  # up to and including the first stop token, or up to the limit
    stopped: bool  # a stop token ended the turn


class Generator(Protocol):
    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]: ...

    def release(self, key: int) -> None: ...


def _cut_at_stop(tokens: Sequence[int], stops: set[int]) -> GenOutput:
    for i, token in enumerate(tokens):
        if token in stops:
            return GenOutput(list(tokens[: i + 1]), True)
    return GenOutput(list(tokens), False)


class HFGenerator:
    """transformers ``model.generate`` on a left-padded batch, optionally reusing KV caches.

    With ``settings.reuse_cache``, the keys and values a trajectory's tokens produced in earlier
    turns are kept (compactly, without padding) and handed back as ``past_key_values``, so a turn
    only encodes its new tokens (the tool results). Those are encoded row by row, unpadded (on a CPU
    a padded prefill costs two to three times more per row, for the padding mask and the slower
    masked attention kernel), all but the last token; the batched ``generate`` call then gets one
    new token per row over a left-padded cache, ``[pad][cached tokens][new token]``, and does all
    the decoding. transformers derives position ids from the attention mask's cumulative sum, so
    every real token keeps the position it has in the unpadded sequence and the result equals
    encoding the whole sequence again (up to float rounding).

    A registered prefix (:meth:`register_prefix`: the system turn and tool schemas every prompt
    shares) is encoded once, unpadded, and serves as the cached part of every trajectory's first
    turn -- what vLLM's automatic prefix caching does on a GPU.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str | None = None) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.device = device or str(next(model.parameters()).device)
        self.stops = stop_token_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stops[0]
        self._torch = torch
        self._kv: dict[int, tuple[int, list[tuple[Any, Any]]]] = {}  # key -> (n cached tokens, per-layer (k, v))
        self._prefixes: list[tuple[tuple[int, ...], list[tuple[Any, Any]]]] = []

    def release(self, key: int) -> None:
        self._kv.pop(key, None)

    def register_prefix(self, ids: Sequence[int]) -> None:
        """Encode ``ids`` once; trajectories whose tokens start with it reuse its keys and values."""
        ids = tuple(int(i) for i in ids)
        if not ids or any(prefix == ids for prefix, _ in self._prefixes):
            return
        with self._torch.no_grad():
            out = self.model(input_ids=self._torch.tensor([ids], device=self.device), use_cache=True)
        layers = [(layer.keys[0].clone(), layer.values[0].clone()) for layer in out.past_key_values.layers]
        self._prefixes.append((ids, layers))

    def _cached(self, request: GenRequest, settings: RolloutSettings) -> tuple[int, list] | None:
        """(n cached tokens, per-layer keys/values) for a request: its own cache, else a prefix."""
        if not settings.reuse_cache:
            return None
        own = self._kv.get(request.key)
        if own is not None and own[0] < len(request.ids):
            return own
        best = None
        for prefix, layers in self._prefixes:
            n = len(prefix)
            if n < len(request.ids) and tuple(request.ids[:n]) == prefix and (best is None or n > best[0]):
                best = (n, layers)
        return best

    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]:
        torch = self._torch
        config = build_generation_config(settings, self.stops, self.pad_id, max_new_tokens)
        cached = [self._cached(r, settings) for r in requests]
        if settings.reuse_cache:
            # Encode each row's new tokens but the last on its own (unpadded: the fast causal kernel,
            # no padding mask); the batched call then starts from one new token per row.
            cached = [self._encode_row(c, r.ids) if len(r.ids) - (c[0] if c else 0) > 1 else c
                      for c, r in zip(cached, requests)]
        n_cached = [c[0] if c is not None else 0 for c in cached]
        if not any(n_cached):
            cached = [None] * len(requests)
        width_c = max(n_cached)
        width_n = max(len(r.ids) - n for r, n in zip(requests, n_cached))
        ids = torch.full((len(requests), width_c + width_n), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (request, n) in enumerate(zip(requests, n_cached)):
            new = request.ids[n:]
            ids[row, width_c - n: width_c] = torch.tensor(request.ids[:n], dtype=torch.long)
            ids[row, width_c + width_n - len(new):] = torch.tensor(new, dtype=torch.long)
            mask[row, width_c - n: width_c] = 1
            mask[row, width_c + width_n - len(new):] = 1
        kwargs: dict[str, Any] = {}
        if width_c:
            kwargs["past_key_values"] = self._batch_cache(cached, n_cached, width_c)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config, **kwargs)
        sequences = out.sequences.cpu()
        results = [_cut_at_stop(sequences[row, ids.shape[1]:].tolist(), set(self.stops))
                   for row in range(len(requests))]
        if settings.reuse_cache:
            self._keep_cache(requests, results, mask, out.past_key_values)
        return results

    def _encode_row(self, entry: tuple[int, list] | None, ids: Sequence[int]) -> tuple[int, list]:
        """Extend one row's cache over ``ids[n:-1]`` with a batch-of-one forward pass."""
        from transformers import DynamicCache

        torch = self._torch
        n = entry[0] if entry is not None else 0
        cache = DynamicCache(config=self.model.config)
        if entry is not None:
            for layer, (keys, values) in enumerate(entry[1]):
                cache.update(keys[:, :n].unsqueeze(0), values[:, :n].unsqueeze(0), layer)
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([list(ids[n:-1])], device=self.device), past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        return len(ids) - 1, [(layer.keys[0], layer.values[0]) for layer in out.past_key_values.layers]

    def _batch_cache(self, cached: list, n_cached: list[int], width: int) -> Any:
        """A DynamicCache of ``width`` positions; row i holds its cached tokens right-aligned.

        (A StaticCache, written in place instead of grown by concatenation, measured no faster for a
        batch on CPU here and twice as slow for a batch of one, so the default cache stays.)
        """
        from transformers import DynamicCache

        torch = self._torch
        cache = DynamicCache(config=self.model.config)
        template = next(c for c in cached if c is not None)[1]
        for layer, (k0, v0) in enumerate(template):
            keys = torch.zeros((len(cached), k0.shape[0], width, k0.shape[-1]), dtype=k0.dtype, device=k0.device)
            values = torch.zeros_like(keys)
            for row, (entry, n) in enumerate(zip(cached, n_cached)):
                if entry is not None and n:
                    keys[row, :, width - n:] = entry[1][layer][0][:, :n]
                    values[row, :, width - n:] = entry[1][layer][1][:, :n]
            cache.update(keys, values, layer)
        return cache

    def _keep_cache(self, requests: Sequence[GenRequest], results: list[GenOutput], mask: Any, cache: Any) -> None:
        """Store each row's keys/values for its real tokens (all but the last generated one)."""
        torch = self._torch
        width = mask.shape[1]
        for row, (request, result) in enumerate(zip(requests, results)):
            # The cache holds the input plus every generated token but the last (never fed back).
            real_input = mask[row].nonzero().flatten()
            n_gen_fed = max(len(result.new_ids) - 1, 0)
            positions = torch.cat([real_input, torch.arange(width, width + n_gen_fed)]).to(cache.layers[0].keys.device)
            layers = [(layer.keys[row][:, positions].clone(), layer.values[row][:, positions].clone())
                      for layer in cache.layers]
            self._kv[request.key] = (len(request.ids) + n_gen_fed, layers)


class VLLMGenerator:
    """vLLM back end (GPU): token-id prompts, prefix caching does the cross-turn reuse.

    Kept as a code path for the paper profile; it is not exercised on CPU machines.
    """

    def __init__(self, llm: Any, tokenizer: Any) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.stops = stop_token_ids(tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer: Any, **engine_kwargs: Any) -> "VLLMGenerator":
        from vllm import LLM  # guarded: only the gpu extra installs vLLM

        llm = LLM(model=str(name_or_path), enable_prefix_caching=True, **engine_kwargs)
        return cls(llm, tokenizer)

    def release(self, key: int) -> None:
        return None

    def close(self) -> None:
        """Shut the engine down and free its GPU memory: each policy evaluated in a process gets an engine
        of its own, and a second engine at vLLM's default memory share does not fit beside a live one."""
        if self.llm is None:
            return
        shutdown = getattr(self.llm, "shutdown", None)  # LLM.shutdown() where this vLLM has it
        if shutdown is None:  # else the V1 engine-core client's, which stops the engine process
            shutdown = getattr(getattr(getattr(self.llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.llm = None
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(
            max_tokens=max_new_tokens, stop_token_ids=self.stops, seed=seed, skip_special_tokens=False,
            temperature=settings.temperature if settings.do_sample else 0.0,
            top_p=settings.top_p if settings.do_sample else 1.0,
            top_k=(settings.top_k or -1) if settings.do_sample else -1,
        )
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r.ids) for r in requests], params, use_tqdm=False)
        return [_cut_at_stop(list(o.outputs[0].token_ids), set(self.stops)) for o in outputs]


class OpenAICompletionsGenerator:
    """An OpenAI-compatible ``/v1/completions`` endpoint as the model (``served`` profile section).

    The rendered prompt text is sent as is and the returned text re-tokenised with our tokenizer,
    so the endpoint must serve a model whose tokenizer matches ``tokenizer``. One request per prompt
    (``transformers serve`` takes a single string prompt; vLLM takes both), ``max_workers`` at a time.
    With ``cache_path``, answers are kept on disk as they arrive (:class:`~recrepro.agent.endpoint.ResponseCache`)
    and a prompt already answered with the same settings is replayed, not sent: a killed evaluation resumes
    where it stopped. Requests given up are not kept, so a resumed run asks them again.
    """

    def __init__(self, base_url: str, model: str, tokenizer: Any, api_key: str | None = None,
                 timeout_s: float = 120.0, max_workers: int = 8, retries: int = 3, backoff_s: float = 1.0,
                 cache_path: Path | str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self.retries, self.backoff_s = retries, backoff_s
        self.stops = stop_token_ids(tokenizer)
        self.stop_texts = [tokenizer.convert_ids_to_tokens(i) for i in self.stops]
        self.cache = ResponseCache(cache_path) if cache_path is not None else None
        self.counts = RequestStats()  # for the evaluation card

    def release(self, key: int) -> None:
        return None

    def _body(self, prompt: str, settings: RolloutSettings, max_new_tokens: int, seed: int) -> dict[str, Any]:
        """The request body: every setting that decides the answer, sent explicitly (and the cache key's input)."""
        return {"model": self.model, "prompt": prompt, "max_tokens": max_new_tokens, "seed": seed,
                "temperature": settings.temperature if settings.do_sample else 0.0,
                "top_p": settings.top_p if settings.do_sample else 1.0, "stop": self.stop_texts}

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        """The first choice, with the response's ``usage`` attached when the server gave one."""
        import json
        import urllib.request

        request = urllib.request.Request(f"{self.base_url}/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            payload = json.loads(response.read())
        choice = payload["choices"][0]
        if not isinstance(choice.get("text"), str):
            raise ValueError("a choice without text")
        usage = payload.get("usage")
        return {**choice, "usage": usage} if isinstance(usage, dict) else choice

    def _complete(self, body: dict[str, Any]) -> tuple[dict[str, Any] | None, float | None]:
        """(first choice, seconds the answering attempt took), retrying timeouts, refused connections, rate
        limits and server errors with backoff; (None, None) when the request is given up (counted by kind).
        An answer is cached before this returns."""
        import urllib.error

        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            try:
                choice = self._request(body)
            except urllib.error.HTTPError as exc:
                kind = "rate_limited" if exc.code == 429 else f"http_{exc.code}"
                transient = exc.code in (408, 429) or exc.code >= 500
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                kind, transient = f"unreachable ({type(getattr(exc, 'reason', exc)).__name__})", True
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                kind, transient = "malformed_response", False
            else:
                latency = time.perf_counter() - started
                if self.cache is not None:  # outside the try: a disk error is not a failed request
                    self.cache.put(cache_key(self.base_url, body), choice)
                return choice, latency
            if not transient or attempt == self.retries:
                self.counts.give_up(kind)
                return None, None
            self.counts.retry(kind)
            time.sleep(self.backoff_s * 2 ** attempt)
        return None, None

    def reset_stats(self) -> None:
        """Zero the counts, so each evaluation's card counts its own requests (the cache stays)."""
        self.counts.reset()

    def stats(self) -> dict[str, Any]:
        """What the evaluation card records about the endpoint (JSON-ready): requests sent and replayed,
        failures and retries, latency and tokens per request beside the paper's figure, the cache's state."""
        return {"base_url": self.base_url, "model": self.model, **self.counts.summary(), "retries": self.retries,
                "timeout_s": self.timeout_s, "cache": self.cache.summary() if self.cache is not None else None}

    def _output(self, choice: dict[str, Any] | None) -> GenOutput:
        if choice is None:  # given up: an empty, unfinished turn, which the verdict scores as truncated
            return GenOutput([], False)
        text = choice["text"]
        cut = min((i for i in (text.find(stop) for stop in self.stop_texts) if i >= 0), default=-1)
        stopped = choice.get("finish_reason") == "stop" or cut >= 0
        text = text[:cut] if cut >= 0 else text  # some servers return the stop string, others drop it
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return GenOutput(ids + ([self.stops[0]] if stopped else []), stopped)

    def _count_sent(self, request: GenRequest, choice: dict[str, Any] | None, latency: float | None,
                    output: GenOutput) -> None:
        """Record a sent request; tokens from the server's ``usage`` when given, else our own count."""
        usage = (choice or {}).get("usage") or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        from_usage = isinstance(prompt, int) and isinstance(completion, int)
        if not from_usage:
            prompt, completion = len(request.ids), len(output.new_ids)
        self.counts.sent(latency, prompt, completion, from_usage)

    def generate(self, requests: Sequence[GenRequest], settings: RolloutSettings, max_new_tokens: int,
                 seed: int) -> list[GenOutput]:
        from concurrent.futures import ThreadPoolExecutor

        bodies = [self._body(self.tokenizer.decode(r.ids, skip_special_tokens=False), settings, max_new_tokens, seed)
                  for r in requests]
        hits = [self.cache.get(cache_key(self.base_url, b)) if self.cache is not None else None for b in bodies]
        asked = [i for i, hit in enumerate(hits) if hit is None]
        with ThreadPoolExecutor(max_workers=self.max_workers) as pool:
            answers = dict(zip(asked, pool.map(lambda i: self._complete(bodies[i]), asked)))
        outputs = []
        for i, (request, hit) in enumerate(zip(requests, hits)):
            choice, latency = (hit, None) if hit is not None else answers[i]
            outputs.append(self._output(choice))
            if hit is not None:
                self.counts.replayed()
            else:
                self._count_sent(request, choice, latency, outputs[-1])
        return outputs


def vllm_available() -> bool:
    """True when vLLM imports and a CUDA GPU is visible (the only case the vLLM path is used)."""
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
