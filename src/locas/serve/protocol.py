"""The HTTP API's request schemas and its OpenAI-style errors.

Requests are validated by pydantic with unknown fields refused (a typo is an error, not a silent
default); every error, validation included, is answered as OpenAI does:
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`` with the right status.

    >>> CompletionRequest(model="smollm2-135m", prompt="Hi", max_tokens=8)
    >>> raise ApiError(404, "model 'x' does not exist", code="model_not_found", param="model")
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from ..errors import LocasError
from . import store

MAX_STACKED = 16  # memories one request may stack (each is laid out in the batch: a bound on one request's cost)
MemoryField = str | Annotated[list[str], Field(max_length=MAX_STACKED)] | None
Text = Annotated[str, Field(min_length=1)]  # a prompt or a stop string: never empty
INT64_MAX = 2**63 - 1  # a seed is a 64-bit integer (torch's generators take no more)
MEMORY_ID = store.MEMORY_ID.pattern  # a new memory's id (store.check_id): it never names a path


def _new_memory_id(value: str) -> str:
    """A new memory's id in the schema: ``store.check_id``'s rule and words (on the whole string)."""
    try:
        return store.check_id(value)
    except LocasError as exc:
        raise PydanticCustomError("memory_id", "{message}", {"message": str(exc)}) from None


NewMemoryId = Annotated[str, AfterValidator(_new_memory_id), WithJsonSchema({"type": "string", "pattern": MEMORY_ID})]
# the TrainConfig fields a memorisation job takes (the TempLoRA and full-attention baselines' are not for jobs)
JOB_SETTINGS = ("window_size", "steps_per_window", "lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps",
                "warmup_windows", "schedule", "mix_weight", "sd_context", "sd_topk", "memory_width", "memory_init",
                "memory_layers", "tau_scale", "tau_law", "value_init", "value_radius", "key_lr_scale", "attn_lr_scale",
                "gain_lr", "epochs", "seed")
# the SelfStudyConfig fields a job of the selfstudy objective takes (its recall presets set some of them)
JOB_STUDY_SETTINGS = ("loss", "ntp_weight", "batch", "silence_weight", "silence_tokens", "locality_weight",
                      "decoy_weight")


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
    memory: MemoryField = Field(None, description="memory id, or several (their outputs add; at most "
                               f"{MAX_STACKED}); default: from model")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=0, le=INT64_MAX)
    ignore_eos: bool = Field(False, description="keep going past EOS up to max_tokens (vLLM's extension)")
    user: str | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Request):
    prompt: Text | Annotated[list[Text], Field(min_length=1)]


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
    id: NewMemoryId | None = None
    objective: str = "ntp"
    preset: str | None = Field(None, description="a named recipe (locas.learn.presets: a window recipe, or a recall "
                                                 "preset of the selfstudy objective); settings given win")
    budget: float | None = Field(None, gt=0, description="CPU-seconds of training instead of a number of passes")
    settings: dict = Field(default_factory=dict, description="TrainConfig fields, e.g. window_size, lr, epochs; with "
                                                             "the selfstudy objective also silence_weight, ...")

    def train_config(self, ffn_width: int, model: str | None = None):
        """The job's ``TrainConfig`` on ``model`` (its name: a packaged model has its own defaults): every setting
        known, of its type and within its bounds, else an ``ApiError``."""
        from ..learn.config import TrainConfig
        from ..learn.memorize import objective_defaults
        from ..learn.objectives import SelfStudyConfig, objective_class

        fields = {k: v for k, v in self._fields(model).items() if k not in SelfStudyConfig.__dataclass_fields__}
        settings = {**objective_defaults(self.objective, model), **fields}
        try:
            objective_class(self.objective)
            cfg = TrainConfig(objective=self.objective, **settings)
        except LocasError as exc:
            raise ApiError(400, _as_settings(str(exc), TrainConfig, settings)) from None
        if cfg.memory_width > ffn_width and "memory_width" not in self.settings:  # the default, on a narrow model
            cfg = dataclasses.replace(cfg, memory_width=ffn_width)
        if cfg.memory_width > ffn_width:
            raise ApiError(400, f"settings.memory_width: at most the model's FFN width {ffn_width}, got "
                                f"{cfg.memory_width}", param="settings.memory_width")
        return cfg

    def objective_settings(self, model: str | None = None):
        """The job's ``ObjectiveSettings``: the self-study fields its recall preset and settings give (e.g. the
        silence term of ``strong``), else an ``ApiError``."""
        from ..learn.objectives import ObjectiveSettings, SelfStudyConfig

        study = {k: v for k, v in self._fields(model).items() if k in SelfStudyConfig.__dataclass_fields__}
        try:
            return ObjectiveSettings(selfstudy=SelfStudyConfig(**study))
        except LocasError as exc:
            raise ApiError(400, _as_settings(str(exc), SelfStudyConfig, study)) from None

    def _fields(self, model: str | None) -> dict:
        """The preset's fields on ``model`` with the request's settings over them, each setting checked: known, of
        its type, and (a self-study field or a recall preset) for the selfstudy objective only."""
        from ..learn.config import TrainConfig
        from ..learn.objectives import SelfStudyConfig
        from ..learn.presets import PRESETS, RECALL_PRESETS, preset_settings

        selfstudy = str(self.objective).lower() == "selfstudy"
        for key, value in self.settings.items():
            where = f"settings.{key}"
            if key not in JOB_SETTINGS + JOB_STUDY_SETTINGS:
                raise ApiError(400, f"{where}: unknown setting; a job takes {', '.join(JOB_SETTINGS)}, and with the "
                                    f"selfstudy objective {', '.join(JOB_STUDY_SETTINGS)}", param=where)
            if key in JOB_STUDY_SETTINGS and not selfstudy:
                raise ApiError(400, f"{where}: a setting of the selfstudy objective; set objective to selfstudy or "
                                    "drop it", param=where)
            want = typing.get_type_hints(SelfStudyConfig if key in JOB_STUDY_SETTINGS else TrainConfig)[key]
            fits = isinstance(value, want) or (want is float and isinstance(value, int))
            if not fits or isinstance(value, bool):
                raise ApiError(400, f"{where}: expected {want.__name__}, got {type(value).__name__}", param=where)
        if self.preset is not None and self.preset not in (*PRESETS, *RECALL_PRESETS):
            raise ApiError(400, f"preset: unknown preset '{self.preset}'; choose one of "
                                f"{', '.join([*PRESETS, *RECALL_PRESETS])}", param="preset")
        if self.preset in RECALL_PRESETS and not selfstudy:
            raise ApiError(400, f"preset: '{self.preset}' is a recall preset of the selfstudy objective; set objective "
                                f"to selfstudy, or choose one of {', '.join(PRESETS)}", param="preset")
        return {**(preset_settings(self.preset, model) if self.preset else {}), **self.settings}


def _as_settings(message: str, cls, settings: dict) -> str:
    """An error of config ``cls`` in the request's words: ``--lr`` is ``settings.lr``, ``--probe-loss``
    ``settings.loss``."""
    from ..settings import flag_name

    for f in dataclasses.fields(cls):
        if f.name in settings:
            message = message.replace(flag_name(f), f"settings.{f.name}")
    return message


# ---- responses: what each endpoint answers (the OpenAPI schema at /openapi.json and /docs; tests validate real
# answers against them, unknown fields refused, so the schema cannot drift from the code) ---------------------
class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Answer):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Answer):
    error: ErrorDetail


class ModelCard(_Answer):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    parent: str | None = None
    root: str | None = None


class ModelList(_Answer):
    object: Literal["list"]
    data: list[ModelCard]


class Usage(_Answer):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(_Answer):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(_Answer):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(_Answer):  # one event of a streamed completion
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]


class AssistantMessage(_Answer):
    role: Literal["assistant"]
    content: str


class ChatChoice(_Answer):
    index: int
    message: AssistantMessage
    finish_reason: str | None


class ChatCompletion(_Answer):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(_Answer):
    role: Literal["assistant"] | None = None  # the first event of each choice
    content: str | None = None


class ChatChunkChoice(_Answer):
    index: int
    delta: ChatDelta
    finish_reason: str | None


class ChatCompletionChunk(_Answer):  # one event of a streamed chat turn
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]


class MemoryInfo(_Answer):
    id: str
    object: Literal["memory"]
    created: int
    bytes: int
    width: int
    layers: int
    objective: str | None
    tokens: int | None
    base_model: str | None


class MemoryList(_Answer):
    object: Literal["list"]
    data: list[MemoryInfo]


class MemoryDeleted(_Answer):
    id: str
    object: Literal["memory"]
    deleted: bool


class Curve(_Answer):
    tokens: list[int]  # tokens read after each window
    ppl: list[float]  # that window's perplexity before it was learned


class Job(_Answer):
    id: str
    object: Literal["job"]
    memory: str
    state: Literal["queued", "running", "succeeded", "failed"]
    progress: float
    tokens_done: int
    tokens_total: int | None
    steps: int
    eta_s: float | None
    error: str | None
    created: float
    started: float | None
    finished: float | None
    objective: str
    preset: str | None = None
    config: dict
    study: dict | None = None  # the self-study settings of a selfstudy job (its recall preset's silence term, ...)
    curve: Curve


class JobList(_Answer):
    object: Literal["list"]
    data: list[Job]


class Health(_Answer):
    status: Literal["ok", "draining"]
    model: str
    steps: int
    running: int
    queued: int
    max_queue: int
    rows: int
    dropped: int
    jobs_pending: int


class ServerInfo(_Answer):
    object: Literal["server"]
    version: str
    model: str
    context_length: int
    chat_template: bool
    api_keys: bool
    objectives: list[str]
    default_objective: str
    presets: dict[str, str]
    instruction: str
    answer_cue: str  # what follows the question in a plain prompt (a model without a chat template)
    max_job_text_chars: int
