"""``LocasForCausalLM``: a Hugging Face causal LM with a Locas memory beside every MLP (or on the attention
output projections: ``memory_on="attn"`` / ``"both"``, ``set_site``).

    >>> from locas import LocasForCausalLM
    >>> lm = LocasForCausalLM.from_pretrained("smollm2-135m")     # embedded default model
    >>> ids = lm.tokenizer(text, return_tensors="pt").input_ids    # (1, T)
    >>> mem = lm.init_memory(ids, width=32)                       # (L, 1, 32, d, 3), values zero
    >>> nll = lm.compute_nll(ids, mem)                            # (1, T-1) per-token NLL
    >>> with lm.disabled(): base_logits = lm(ids).logits          # exact base model
    >>> dense = lm.to_dense(mem)                                  # plain transformers model
    >>> lm.set_site("attn"); lm.init_memory(ids, width=96).shape  # (L, 1, 96, d, 2): fused into o_proj
    >>> plain = lm.detach()                                       # original modules restored

The backbone is frozen; only memory tensors are ever trained.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LocasError
from .arch import get_arch
from .head import next_token_nll
from .memory import CHANNELS, LINEAR, MLP, MemoryMLP, value_norm_mean

MLP_ACTIVATIONS = ("relu", "backbone")
FFN, ATTN, BOTH = "ffn", "attn", "both"
SITES = (FFN, ATTN, BOTH)  # where a memory sits: beside the feed-forward blocks, on the attention output, or both


def bos_prefix(tokenizer) -> list[int]:
    """The ids a tokenizer puts before every text: ``[<bos>]`` for Gemma (whose model reads a text without it
    as noise: perplexity 157 against 39 on a PG-19 window), ``[]`` for SmolLM2 and for a tokenizer that adds none.

        >>> bos_prefix(tokenizer)                # [2] for Gemma 3, [] for SmolLM2
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if tokenizer is None or bos is None:
        return []
    return [bos] if tokenizer("a")["input_ids"][:1] == [bos] else []


def prepend_bos(input_ids: torch.Tensor, bos_ids) -> tuple[torch.Tensor, int]:
    """(B, T) -> ((B, k + T), k): ``bos_ids`` (k of them; ``bos_prefix``) in front of ids that do not start with
    them; drop the first k positions of what the model returns.

        >>> ids, k = prepend_bos(window, [2])    # Gemma: (1, 1 + T), 1
    """
    k = len(bos_ids)
    if not k or bool((input_ids[:, 0] == bos_ids[0]).all()):
        return input_ids, 0
    bos = torch.tensor(list(bos_ids), dtype=input_ids.dtype, device=input_ids.device)
    return torch.cat([bos.expand(input_ids.shape[0], k), input_ids], dim=1), k


class LocasForCausalLM(nn.Module):
    """Wraps an already-loaded transformers causal LM and attaches one memory wrapper per layer: beside every
    feed-forward block (``memory_on="ffn"``, the paper's Locas), on every attention output projection
    (``memory_on="attn"``: a linear low-rank map of what the attention writes, fused into ``o_proj``), or both
    (docs/ATTENTION.md)."""

    def __init__(self, model: nn.Module, tokenizer=None, name: str | None = None, mlp_activation: str = "relu",
                 memory_on: str = FFN):
        """``mlp_activation`` (two-layer "mlp" models only): ``relu`` (the paper's memory) or ``backbone``
        (the FFN's own activation, e.g. GELU; needed to fuse exactly). GLU memories always use the backbone's.
        ``memory_on``: the site of the memory, ``ffn``, ``attn`` or ``both`` (``set_site``)."""
        super().__init__()
        if mlp_activation not in MLP_ACTIVATIONS:
            raise LocasError(f"unknown mlp_activation '{mlp_activation}'; choose {' or '.join(MLP_ACTIVATIONS)}")
        self.spec = get_arch(model.config)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or getattr(model.config, "_name_or_path", "") or model.config.model_type
        model.requires_grad_(False)
        self.ffn_wrappers: list[MemoryMLP] = []
        for layer in self.spec.layers(model):
            mlp = self.spec.mlp(layer)
            if not isinstance(mlp, MemoryMLP):
                mlp = MemoryMLP(mlp, act=self.spec.activation(mlp), kind=self.spec.kind,
                                value_norm=value_norm_mean(self.spec.down_weight(mlp)))
                self.spec.set_mlp(layer, mlp)
            self.ffn_wrappers.append(mlp)
        self._attn_wrappers: list[MemoryMLP] | None = None  # made on the first switch to "attn" or "both"
        self.site = FFN
        self.wrappers: list[MemoryMLP] = self.ffn_wrappers  # the installed site's wrappers
        self.mlp_activation = "backbone"
        self.set_mlp_activation(mlp_activation)
        self.set_site(memory_on)

    def set_site(self, site: str) -> None:
        """Put the memory beside the feed-forward blocks (``ffn``), on the attention output projections (``attn``)
        or on both (``both``: memory slots 0..L-1 the FFN's, L..2L-1 the attention's, one tensor (2L, B, r, d, C)
        whose attention slots leave a GLU's gate channel unused); the other modules are the backbone's own again. A
        memory is always for one site (its file says which; ``ModelState`` carries it).

            >>> lm.set_site("attn")       # lm.memory_kind == "linear"; memories (L, B, r, d, 2)
        """
        if site not in SITES:
            raise LocasError(f"unknown memory site '{site}'; choose {', '.join(SITES)} (--memory-on)")
        if site == self.site or not self.wrappers:
            return
        for slot, layer, w in self._slots(self.site):
            w.memory = None
            self._put(slot, layer, w.base_mlp)
        for slot, layer, w in self._slots(site):
            self._put(slot, layer, w)
        self.wrappers = [w for _, _, w in self._slots(site)]
        self.site = site

    def _slots(self, site: str) -> list[tuple[str, nn.Module, MemoryMLP]]:
        """(``ffn`` | ``attn``, decoder layer, wrapper) for every memory slot of ``site``, in memory order."""
        layers = list(self.spec.layers(self.model))
        out = [(FFN, layer, w) for layer, w in zip(layers, self.ffn_wrappers)] if site in (FFN, BOTH) else []
        if site in (ATTN, BOTH):
            if self._attn_wrappers is None:
                projs = [self.spec.attn_out_proj(layer) for layer in layers]
                self._attn_wrappers = [MemoryMLP(p, act=None, kind=LINEAR, reads_output=True,
                                                 value_norm=value_norm_mean(self.spec.attn_out_weight(p)))
                                       for p in projs]
            out += [(ATTN, layer, w) for layer, w in zip(layers, self._attn_wrappers)]
        return out

    def _put(self, slot: str, layer, module) -> None:
        """``module`` (a wrapper, or the plain module back) into ``layer``'s FFN or attention-output slot."""
        (self.spec.set_mlp if slot == FFN else self.spec.set_attn_out)(layer, module)

    def set_mlp_activation(self, name: str) -> None:
        """Locas-MLP only: the memory units fire with ``relu`` (the paper) or the ``backbone``'s activation
        (fusable); GLU memories always use the backbone's gate.

            >>> lm.set_mlp_activation("backbone")
        """
        if name not in MLP_ACTIVATIONS:
            raise LocasError(f"unknown mlp_activation '{name}'; choose {' or '.join(MLP_ACTIVATIONS)}")
        if self.spec.kind != MLP:
            return
        for w in self.ffn_wrappers:
            w.act = nn.ReLU() if name == "relu" else self.spec.activation(w.base_mlp)
        self.mlp_activation = name

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str = "smollm2-135m", dtype=None, device=None,
                        mlp_activation: str = "relu", memory_on: str = FFN, **kwargs):
        """Load a model by hub id, local directory, or the alias ``smollm2-135m`` (embedded)."""
        from .hub import load_model

        model, tokenizer = load_model(name_or_path, dtype=dtype, device=device, **kwargs)
        return cls(model, tokenizer=tokenizer, name=name_or_path, mlp_activation=mlp_activation, memory_on=memory_on)

    # ---- facts about the backbone ----------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_layers(self) -> int:
        """Memory slots: the decoder layers (2x with ``memory_on="both"``)."""
        return len(self.wrappers)

    @property
    def depth(self) -> int:
        """Decoder layers of the backbone."""
        return len(self.ffn_wrappers)

    def site_slots(self, site: str) -> int:
        """Memory slots of ``site`` on this model (what a memory file of that site covers)."""
        return self.depth * (2 if site == BOTH else 1)

    @property
    def hidden_size(self) -> int:
        return self.spec.down_weight(self.ffn_wrappers[0].base_mlp).shape[0]

    @property
    def intermediate_size(self) -> int:
        """The feed-forward width (what a fused FFN memory grows)."""
        return self.spec.down_weight(self.ffn_wrappers[0].base_mlp).shape[1]

    @property
    def memory_kind(self) -> str:
        """The memory tensor's kind: the FFN's ``glu`` / ``mlp`` (``ffn``, ``both``), or ``linear`` (``attn``)."""
        return LINEAR if self.site == ATTN else self.spec.kind

    # ---- the units a memory slot is initialised from ----------------------------------------------------
    def num_units(self, slot: int = 0) -> int:
        """Units of slot ``slot``'s block: FFN units, or attention output channels (``o_proj``'s input width)."""
        return self.value_weight(slot).shape[1]

    def value_weight(self, slot: int) -> torch.Tensor:
        """(d, units): column j is what unit j writes (``down_proj``, or ``o_proj``)."""
        w = self.wrappers[slot]
        return self.spec.attn_out_weight(w.base_mlp) if w.reads_output else self.spec.down_weight(w.base_mlp)

    def unit_keys(self, slot: int) -> torch.Tensor:
        """(units, d) key rows: the FFN's up rows, or (attention path: the memory reads what attention writes)
        each channel's write direction, a column of ``o_proj``."""
        w = self.wrappers[slot]
        return self.spec.attn_out_weight(w.base_mlp).t() if w.reads_output else self.spec.up_weight(w.base_mlp)

    def unit_module(self, slot: int) -> nn.Module:
        """The module whose input holds the units' activations (``down_proj``, or ``o_proj``)."""
        w = self.wrappers[slot]
        return w.base_mlp if w.reads_output else self.spec.down_module(w.base_mlp)

    @property
    def max_length(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", None) or getattr(self.config, "n_positions", 2048))

    @property
    def bos_ids(self) -> list[int]:
        """``bos_prefix`` of the tokenizer: what every sequence the model reads from its first position starts with."""
        if not hasattr(self, "_bos_ids"):
            self._bos_ids = bos_prefix(self.tokenizer)
        return self._bos_ids

    def with_bos(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``prepend_bos`` with the model's BOS: a window cut from inside a text is read as the model reads any
        text."""
        return prepend_bos(input_ids, self.bos_ids)

    def num_base_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def memory_parameters(self, width: int, layers: int | list[int] | None = None) -> int:
        """Trainable parameters of a memory of ``width`` units per slot on ``layers`` (slot indices, or the first N
        slots; default all); an attention slot has a key and a value (a GLU's gate channel there is unused)."""
        slots = range(self.num_layers if layers is None else layers) if not isinstance(layers, list) else layers
        return sum(width * self.hidden_size * CHANNELS[LINEAR if self.wrappers[i].reads_output else self.spec.kind]
                   for i in slots)

    # ---- memory management -----------------------------------------------------------------
    def check_memory(self, memory: torch.Tensor, layers: list[int] | None = None) -> list[int]:
        """Validate a memory tensor's shape against this model; returns the layer indices it covers."""
        layers = list(range(self.num_layers)) if layers is None else list(layers)
        expected = (len(layers), None, None, self.hidden_size, CHANNELS[self.memory_kind])
        if memory.dim() != 5 or any(e is not None and e != s for e, s in zip(expected, memory.shape)):
            raise LocasError(
                f"memory of shape {tuple(memory.shape)} does not fit this model: expected "
                f"({len(layers)}, batch, width, {self.hidden_size}, {CHANNELS[self.memory_kind]}); "
                "was it made for another model?"
            )
        return layers

    def set_memory(self, memory: torch.Tensor | None, layers: list[int] | None = None) -> None:
        """Install ``memory`` (len(layers), B, r, d, C); other layers get no memory.

        A memory that does not require grad skips layers whose values are all zero (exact).
        """
        for w in self.wrappers:
            w.memory = None
        if memory is None:
            return
        layers = self.check_memory(memory, layers)
        for j, i in enumerate(layers):
            slot = memory[j]
            if not memory.requires_grad and not slot[..., -1].any():
                continue
            self.wrappers[i].memory = slot  # MemoryMLP moves it to its layer's device if needed

    def set_memory_channels(self, batch: tuple | None) -> None:
        """Install a batch memory already in channel layout, ``(C x (L, B|1, r, d), live layers)`` as
        ``core.memory.batch_serving`` gives it (None: the base model); layers not live get no memory (exact)."""
        channels, live = batch if batch is not None else ((), [False] * self.num_layers)
        for i, w in enumerate(self.wrappers):
            w.memory = tuple(c[i] for c in channels) if live[i] else None

    @contextmanager
    def use_memory(self, memory: torch.Tensor | None, layers: list[int] | None = None):
        """Temporarily install ``memory``; the previous memories come back afterwards."""
        saved = [w.memory for w in self.wrappers]
        self.set_memory(memory, layers)
        try:
            yield self
        finally:
            for w, m in zip(self.wrappers, saved):
                w.memory = m

    @contextmanager
    def disabled(self):
        """Run the exact base model (memory switched off in every layer)."""
        saved = [w.enabled for w in self.wrappers]
        for w in self.wrappers:
            w.enabled = False
        try:
            yield self
        finally:
            for w, e in zip(self.wrappers, saved):
                w.enabled = e

    def taus(self, width: int) -> list[float]:
        return [w.tau(width) for w in self.wrappers]

    def detach(self) -> nn.Module:
        """Put the original modules back and return the plain transformers model."""
        for slot, layer, w in self._slots(self.site):
            self._put(slot, layer, w.base_mlp)
        self.wrappers = []
        return self.model

    # ---- initialising, scoring, generating, fusing ------------------------------------------
    def init_memory(self, input_ids, width: int = 32, init: str = "highest", attention_mask=None,
                    seed: int = 0) -> torch.Tensor:
        """A fresh memory initialised from ``input_ids`` (B, T): (L, B, width, d, C), values zero.

        Nothing is trained here (``locas.learn`` trains memories; ``locas memorize`` is the command).

            >>> mem = lm.init_memory(ids, width=64, init="highest")
        """
        from .init import build_memory

        return build_memory(self, input_ids.to(self.device), width, init,
                            None if attention_mask is None else attention_mask.to(self.device), seed)

    def memorize(self, input_ids, keep_top: int = 32, memory_init: str = "highest", attention_mask=None,
                 seed: int = 0) -> torch.Tensor:
        """The reference implementation's name and arguments for ``init_memory`` (values zero, nothing trained)."""
        return self.init_memory(input_ids, width=keep_top, init=memory_init, attention_mask=attention_mask, seed=seed)

    def forward(self, input_ids=None, memory: torch.Tensor | None = None, layers=None, **kwargs):
        if memory is None:
            return self.model(input_ids=input_ids, **kwargs)
        with self.use_memory(memory, layers):
            return self.model(input_ids=input_ids, **kwargs)

    def compute_nll(self, input_ids, memory: torch.Tensor | None = None, attention_mask=None,
                    layers=None) -> torch.Tensor:
        """Per-token negative log-likelihood (B, T-1) float32 of ``input_ids`` under the memory."""
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
        input_ids, k = self.with_bos(input_ids.to(self.device)) if attention_mask is None else (input_ids, 0)
        with self.use_memory(memory, layers) if memory is not None else nullcontext():
            return next_token_nll(self.model, input_ids, attention_mask=attention_mask)[:, k:]

    def generate(self, *args, memory: torch.Tensor | None = None, layers=None, **kwargs):
        """``transformers`` generate with the memory installed (batch 1 memories broadcast)."""
        with self.use_memory(memory, layers), torch.no_grad():
            return self.model.generate(*args, **kwargs)

    def to_dense(self, memory: torch.Tensor, row: int = 0, layers=None) -> nn.Module:
        """Fuse memory row ``row`` into a new plain transformers model (intermediate_size + r)."""
        from .fuse import to_dense

        return to_dense(self, memory, row=row, layers=layers)


@dataclass
class ModelState:
    """What the model carries while it is used: a Locas memory (L|len(layers), 1, r, d, C) on ``layers`` at
    ``site`` (``ffn`` or ``attn``), a live adapter module (e.g. the peft model of a TempLoRA learner), or nothing
    (the exact base model).

        >>> with ModelState(memory=mem).apply(lm) as model:      # model: the callable transformers model
        ...     logits = model(input_ids=ids).logits
    """

    memory: torch.Tensor | None = None
    layers: list[int] | None = None
    module: nn.Module | None = None  # called instead of ``lm.model`` (its adapters on, the Locas memory off)
    site: str | None = None  # the memory's site; None: the model's current one

    @contextmanager
    def apply(self, lm: LocasForCausalLM):
        """Install the state on ``lm`` (no gradients; the memory's site, then the model's own again); yields the
        module to call."""
        if self.memory is not None:
            before = lm.site
            lm.set_site(self.site or before)
            try:
                with lm.use_memory(self.memory.detach(), self.layers), torch.no_grad():
                    yield self.module or lm.model
            finally:
                lm.set_site(before)
        else:
            with lm.disabled(), torch.no_grad():
                yield self.module or lm.model


# Name used by the reference implementation.
Qwen3ForCausalLMWithMemory = LocasForCausalLM
