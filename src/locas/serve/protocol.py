"""The HTTP API's request schemas and its OpenAI-style errors.

Requests are validated by pydantic with unknown fields refused (a typo is an error, not a silent
default); every error, validation included, is answered as OpenAI does:
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with the right status.

    >>> CompletionRequest(model="smollm2-135m", prompt="Hi", max_tokens=8)
    >>> raise ApiError(404, "model 'x' does not exist", code="model_not_found", param="model")
"""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MemoryField = str | list[str] | None
# the TrainConfig fields a memorisation job takes (the TempLoRA and full-attention baselines' are not for jobs)
JOB_SETTINGS = ("window_size", "steps_per_window", "lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps",
                "warmup_windows", "schedule", "mix_weight", "sd_context", "sd_topk", "memory_width", "memory_init",
                "memory_layers", "tau_scale", "tau_law", "value_init", "value_radius", "key_lr_scale", "gain_lr",
                "epochs", "seed")


class ApiError(Exception):
    """An error answered as JSON with ``status``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             408: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
             429: "rate_limit_error", 431: "invalid_request_error",
             500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}  # e.g. Retry-After on a 503

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    memory: MemoryField = Field(None, description="memory id, or several (their outputs add); default: from model")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    ignore_eos: bool = Field(False, description="keep going past EOS up to max_tokens (vLLM's extension)")
    user: str | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not isinstance(s, str) or not s for s in stops):
            raise ApiError(400, "stop takes up to 4 non-empty strings", param="stop")
        return stops


class CompletionRequest(_Request):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class MemoryJobRequest(BaseModel):
    """Create a memory from a text: a background job running the code of `locas memorize`."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    id: str | None = None
    objective: str = "ntp"
    preset: str | None = Field(None, description="a named recipe (locas.learn.presets); settings given win")
    budget: float | None = Field(None, gt=0, description="CPU-seconds of training instead of a number of passes")
    settings: dict = Field(default_factory=dict, description="TrainConfig fields, e.g. window_size, lr, epochs")

    def train_config(self, ffn_width: int):
        """The job's ``TrainConfig``: every setting known, of its type and within its bounds, else an ``ApiError``."""
        from ..errors import LocasError
        from ..learn.config import TrainConfig
        from ..learn.memorize import objective_defaults
        from ..learn.objectives import objective_class
        from ..learn.presets import PRESETS, preset_settings

        hints = typing.get_type_hints(TrainConfig)
        for key, value in self.settings.items():
            where = f"settings.{key}"
            if key not in JOB_SETTINGS:
                raise ApiError(400, f"{where}: unknown setting; a job takes {', '.join(JOB_SETTINGS)}", param=where)
            want = hints[key]
            fits = isinstance(value, want) or (want is float and isinstance(value, int))
            if not fits or isinstance(value, bool):
                raise ApiError(400, f"{where}: expected {want.__name__}, got {type(value).__name__}", param=where)
        if self.preset is not None and self.preset not in PRESETS:
            raise ApiError(400, f"preset: unknown preset '{self.preset}'; choose one of {', '.join(PRESETS)}",
                           param="preset")
        preset = preset_settings(self.preset) if self.preset else {}
        settings = {**objective_defaults(self.objective), **preset, **self.settings}
        try:
            objective_class(self.objective)
            cfg = TrainConfig(objective=self.objective, **settings)
        except LocasError as exc:
            message = str(exc)
            for key in settings:
                message = message.replace("--" + key.replace("_", "-"), f"settings.{key}")
            raise ApiError(400, message) from None
        if cfg.memory_width > ffn_width:
            raise ApiError(400, f"settings.memory_width: at most the model's FFN width {ffn_width}, got "
                                f"{cfg.memory_width}", param="settings.memory_width")
        return cfg
