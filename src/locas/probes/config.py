"""How probes about a text are made and answered (the self-study objective's data).

    >>> cfg = ProbeConfig()                                   # fact probes in 3 wordings, asked like `locas ask`
    >>> cfg = ProbeConfig(families=("cloze", "template"), per_chunk=12, chunk_tokens=1024, answer_tokens=16)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import LocasError
from ..settings import setting, validate
from ..text.prompts import DOCUMENT_INSTRUCTION

FAMILIES = ("fact", "cloze", "template", "question", "instruction", "summary")
GENERATED = ("question", "instruction", "summary")
PROBE_STYLES = ("qa", "plain", "chat", "auto")


@dataclass
class ProbeConfig:
    """How probes are made and answered."""

    families: tuple = setting(("fact",), "probe families, comma-separated: fact, cloze, template, question, "
                                         "instruction, summary")
    chunk_tokens: int = setting(512, "document chunk the teacher reads per probe (tokens)", minimum=16)
    per_chunk: int = setting(0, "cap on training probes per chunk (families interleaved; 0 = every probe)",
                             flag="--probes-per-chunk", minimum=0)
    wordings: int = setting(3, "fact probes: wordings per hidden fact (question, fill-in-the-blank, completion)",
                            flag="--probe-wordings", minimum=1, maximum=3)
    samples: int = setting(4, "sampled generations per chunk for each model-written family", minimum=1, maximum=256)
    temperature: float = setting(0.8, "sampling temperature of model-written probes", flag="--probe-temperature",
                                 positive=True, maximum=100.0)
    top_p: float = setting(0.95, "nucleus mass of model-written probes", flag="--probe-top-p", positive=True,
                           maximum=1.0)
    max_probe_tokens: int = setting(48, "length limit of a model-written probe (tokens)", minimum=1)
    answer_tokens: int = setting(24, "teacher answer length in tokens (summaries get 2x)", minimum=1)
    topk: int = setting(64, "teacher logits kept per answer token", flag="--teacher-topk", minimum=1)
    chat_template: bool = setting(True, "write probes in the tokenizer's chat template when it has one",
                                  flag="--probe-chat-template")
    seed: int = setting(0, "seed of the probes (the command's --seed)", cli=False)
    templates: dict = setting(help="overrides of the probe-writing templates (family -> text with {chunk})",
                              factory=dict, cli=False)
    prompt_style: str = setting("plain", "how probes are asked: plain | chat | auto = the prompt of `locas ask "
                                "--prompt-style plain|chat|auto` (recorded in the memory file: `locas ask` uses it); "
                                "qa = 'Question: ...\\nAnswer:'", flag="--probe-style", choices=PROBE_STYLES)
    instruction: str = setting(DOCUMENT_INSTRUCTION, "the instruction of plain/chat probe prompts", cli=False)

    def __post_init__(self):
        if isinstance(self.families, str):
            self.families = tuple(f.strip() for f in self.families.split(",") if f.strip())
        self.families = tuple(self.families)
        bad = [f for f in self.families if f not in FAMILIES]
        if bad or not self.families:
            raise LocasError(f"unknown probe family {bad or '(none)'}; choose from {', '.join(FAMILIES)}")
        validate(self)

    def to_dict(self) -> dict:
        return asdict(self)
