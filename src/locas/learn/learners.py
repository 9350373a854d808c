"""The methods compared everywhere, in one registry: ``truncate``, ``full``, ``locas``, ``lora`` (and
``locas-mlp``, the Locas-MLP variant of ``locas``).

* ``truncate``  the frozen model with only the window as context (the same context Locas sees).
* ``full``      the frozen model reading up to ``full_context`` tokens (default: the model maximum)
                ending at the window's end; it scores exactly the same tokens as every other method.
* ``locas``     a Locas-GLU (or Locas-MLP by backprop) memory on ``memory_layers``, initialised from
                the first window, refined by the objective.
* ``lora``      TempLoRA: a peft LoRA adapter on every linear projection of the decoder layers;
                ``lora_B`` starts at zero, so the first window is scored by the exact base model. The
                adapter is removed again in ``finish()`` so several methods can run on one model.
* ``none``      no memory at all: a run that only answers (LoCoMo's control); nothing to learn.

    >>> learner = make_learner("locas", lm, cfg)                 # or "truncate", "full", "lora", "locas-mlp"
    >>> result = stream(learner, tokens, cfg)
    >>> peft_model = load_adapter(lm, "lora_dir/")               # a saved TempLoRA adapter
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from ..core.model import ModelState
from ..errors import LocasError
from ..extras import require
from .config import parse_layers
from .learner import Learner, MemoryLearner
from .mlp_learner import LocasMLPLearner


class LocasLearner(MemoryLearner):
    """Locas-GLU/MLP memory on the chosen layers, initialised from the first window; with ``cfg.memory_on="attn"``
    a linear memory on the attention output projections (the model is put on that site)."""

    name = "locas"

    def __init__(self, lm, cfg, memory: torch.Tensor | None = None):
        super().__init__(lm, cfg)
        lm.set_site(getattr(cfg, "memory_on", "ffn"))
        layers = parse_layers(cfg.memory_layers, lm.depth)  # decoder layers; with memory_on="both" both their slots
        self.layers = layers + [lm.depth + i for i in layers] if lm.site == "both" else layers
        self.memory: torch.nn.Parameter | None = None
        if memory is not None:  # continue training an existing memory (full-size or layer subset)
            mem = memory[self.layers] if memory.shape[0] == lm.num_layers else memory
            mem = mem.detach().clone().float().to(lm.device)
            mem[..., -1] /= cfg.output_scale(mem.shape[-3])  # the file has the output scale baked in
            self.memory = torch.nn.Parameter(mem)

    def begin(self, tokens, first_span):
        if self.memory is None:
            ids = tokens[first_span[0]:first_span[1]][None]
            mem = self.lm.init_memory(ids, width=self.cfg.memory_width, init=self.cfg.memory_init, seed=self.cfg.seed)
            self.memory = torch.nn.Parameter(mem[self.layers].contiguous())
        if self.cfg.gain_lr and self.log_gain is None:  # a learned per-layer output gain, exp(0) = 1 at the start
            self.log_gain = torch.nn.Parameter(torch.zeros((self.memory.shape[0], 1, 1, 1, 1),
                                                           dtype=self.memory.dtype, device=self.memory.device))


class TruncateLearner(Learner):
    name = "truncate"

    @contextmanager
    def applied(self):
        with self.lm.disabled():
            yield self.lm.model


class FullAttentionLearner(Learner):
    name = "full"

    def context(self) -> int:
        return min(self.lm.max_length, self.cfg.full_context or self.lm.max_length)

    @torch.no_grad()
    def score(self, tokens, start, end):
        lo = max(0, end - max(self.context(), end - start))
        ids = tokens[lo:end][None].to(self.lm.device)
        with self.lm.disabled():
            return self.nll(ids)[0, start - lo:]  # (end-start-1,): the window's tokens


def lora_projections(lm, which: str = "all") -> dict:
    """The Linear/Conv1D projections inside the decoder layers that TempLoRA adapts (never the LM head), by full
    name: all of them, or with ``attn`` / ``mlp`` those outside / inside each layer's feed-forward block.

        >>> sum(sum(m.weight.shape) for m in lora_projections(lm, "mlp").values())   # parameters per unit of rank
    """
    in_mlp = {id(m) for layer in lm.spec.layers(lm.model) for m in lm.spec.mlp(layer).modules()}
    found = {full: module for full, module in lm.model.named_modules()
             if type(module).__name__ in ("Linear", "Conv1D") and (".layers." in full or ".h." in full)
             and (which == "all" or (id(module) in in_mlp) == (which == "mlp"))}
    if not found:
        raise LocasError(f"found no {'' if which == 'all' else which + ' '}linear projections inside the decoder "
                         "layers for LoRA")
    return found


def linear_target_names(lm, which: str = "all") -> list[str]:
    """peft's ``target_modules`` for ``lora_projections(lm, which)``: ``all`` as leaf names (``q_proj``, ...,
    ``down_proj``), ``attn`` / ``mlp`` as full names (GPT-2's ``c_proj`` is in both).

        >>> linear_target_names(lm, "mlp")[:1]
        ['model.layers.0.mlp.base_mlp.down_proj']
    """
    found = lora_projections(lm, which)
    return sorted({full.rsplit(".", 1)[-1] for full in found}) if which == "all" else list(found)


class LoraLearner(Learner):
    name = "lora"
    trainable = True

    def __init__(self, lm, cfg):
        super().__init__(lm, cfg)
        self.peft_model = None

    def begin(self, tokens, first_span):
        require("peft", "the TempLoRA baseline (--method lora)")
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(self.cfg.seed)
        targets = linear_target_names(self.lm, self.cfg.lora_targets)
        config = LoraConfig(r=self.cfg.lora_rank, lora_alpha=self.cfg.lora_alpha or self.cfg.lora_rank,
                            lora_dropout=0.0, target_modules=targets, bias="none")
        self.peft_model = get_peft_model(self.lm.model, config)
        self.params = [p for n, p in self.peft_model.named_parameters() if p.requires_grad]
        for p in self.params:  # adapters in float32 whatever the model dtype
            p.data = p.data.float()

    def parameters(self):
        return self.params

    def extra_params(self):
        return sum(p.numel() for p in self.params)

    @contextmanager
    def applied(self):
        with self.lm.disabled():
            yield self.peft_model

    @contextmanager
    def frozen(self):
        """The base model: the adapter is injected into ``lm.model``'s layers, so switch it off too."""
        with self.peft_model.disable_adapter(), self.lm.disabled():
            yield

    def state(self) -> ModelState:
        return ModelState(module=self.peft_model)

    def finish(self):
        if self.peft_model is not None:
            self.peft_model.unload()  # removes the LoRA layers, restoring the original modules
            self.peft_model = None


def load_adapter(lm, adapter_dir):
    """Inject a saved peft (TempLoRA) adapter into ``lm.model``; returns the peft model (call ``.unload()``)."""
    require("peft", "a TempLoRA adapter (--adapter)")
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise LocasError(f"'{adapter_dir}' is not a peft adapter directory (no adapter_config.json)")
    return PeftModel.from_pretrained(lm.model, str(adapter_dir)).eval()


LEARNERS = {"truncate": TruncateLearner, "full": FullAttentionLearner, "locas": LocasLearner, "lora": LoraLearner,
            "locas-mlp": LocasMLPLearner}
METHODS = ("truncate", "full", "locas", "lora", "none")  # the one word list of what is compared


def make_learner(method: str, lm, cfg, memory: torch.Tensor | None = None) -> Learner:
    """The learner of ``method``; ``memory`` continues training an existing Locas memory. The model's memory site
    becomes ``cfg.memory_on`` (``LocasLearner``; the feed-forward blocks for every other method, whose modules are
    then the backbone's own)."""
    if method == "none":
        raise LocasError("method 'none' has no memory to train; it only answers with the base model")
    if method not in LEARNERS:
        raise LocasError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    site = getattr(cfg, "memory_on", "ffn")
    if site != "ffn" and method != "locas":
        raise LocasError(f"--memory-on {site} is a Locas memory's site; method '{method}' takes --memory-on ffn")
    if method != "locas":  # (LocasLearner puts the model on its own site)
        lm.set_site("ffn")
    if memory is not None:
        if method != "locas":
            raise LocasError(f"only a Locas memory can be continued (--memory); method '{method}' starts fresh")
        return LocasLearner(lm, cfg, memory=memory)
    return LEARNERS[method](lm, cfg)
