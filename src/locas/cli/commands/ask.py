"""``locas ask "question" --memory MEMORY``: answer one question from a memory file (optionally with a context file).

    $ locas ask "Who founded the glassworks?" --memory notes.locas   # asked in the format the memory was trained in
    $ locas ask "What did Mel paint?" --context notes.txt       # no memory, the text in the prompt

A memory trained on probes (``locas memorize``, self-study) records the prompt it was trained in
(style and instruction); ``--prompt-style auto`` uses it. An answer is never blank: the stop
tokens are held back until the model has said something, and if the length limit comes first
the command says so in one line and exits with status 2.
"""

from __future__ import annotations

from ...text.prompts import PROMPT_STYLES
from ..checks import path_arg
from ..flags import Number, add_memory_arg, add_model_args

HELP = "answer one question with a memory file (no conversation needed), optionally with --context FILE"
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"question": "Who is Tom?", "--memory": "{memory}", "--max-new-tokens": "2", "--model": "{model}",
           "--device": "cpu"}


def add_answer_args(p, max_new_tokens: int) -> None:
    """The flags ask and chat share."""
    add_memory_arg(p)
    path_arg(p, "--context", kind="context", default=None,
                   help="text file to put before the question, cut from the front to fit (default: none)")
    p.add_argument("--max-new-tokens", type=Number(int, minimum=1), default=max_new_tokens,
                   help=f"answer length limit in tokens (default: {max_new_tokens})")
    p.add_argument("--prompt-style", default="auto", choices=PROMPT_STYLES,
                   help="auto (the memory file's trained format, else chat when the tokenizer has a template), "
                        "chat or plain (default: auto)")
    add_model_args(p)


def add_arguments(p):
    p.add_argument("question", nargs="+", help="the question (quote it)")
    add_answer_args(p, 48)


def model_state(lm, args):
    """The memory of ``--memory`` as a ``ModelState`` (nothing: the plain model)."""
    from ...core.files import load_memory
    from ...core.model import ModelState

    if not args.memory:
        return ModelState()
    memory = load_memory(args.memory, model=lm, strict=not args.no_strict)  # the model takes the file's site
    return ModelState(memory=memory, site=lm.site)


def trained_prompt(memory_path) -> dict:
    """The prompt a memory file was trained in (``{"style", "instruction"}``), or {} when it records none."""
    from ...core.files import read_memory_info

    if not memory_path:
        return {}
    recorded = read_memory_info(memory_path).get("prompt")
    return recorded if isinstance(recorded, dict) and recorded.get("style") in ("chat", "plain") else {}


def build_prompt(lm, args, reserve: int):
    """The question prompt of ``args``: its --context cut to fit, in --prompt-style (auto: as the memory was
    trained)."""
    from ...data.paths import read_text
    from ...text.prompts import INSTRUCTION, Prompt
    from ...text.tokens import encode, tail_tokens

    ctx = []
    if args.context:
        ctx = tail_tokens(encode(lm.tokenizer, read_text(args.context)), lm.max_length - reserve, lm.tokenizer)
    trained = trained_prompt(args.memory)
    style = trained.get("style", "auto") if args.prompt_style == "auto" else args.prompt_style
    return Prompt.build(lm.tokenizer, ctx, style, trained.get("instruction") or INSTRUCTION)


def say_answer(text: str, limit: int) -> str:
    """The answer, or a clear error when the model said nothing within the limit (never a silent blank)."""
    from ...errors import LocasError

    if not text.strip():
        raise LocasError(f"the model gave no answer within {limit} tokens (only blank tokens); raise "
                         "--max-new-tokens or try the other --prompt-style")
    return text


def check_answer_args(args) -> None:
    from ...errors import LocasError

    if args.max_new_tokens < 1:
        raise LocasError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")


def run(args):
    from ...errors import LocasError
    from ...text.decoding import Decoder
    from ..flags import load_lm

    question = " ".join(args.question).strip()
    if len(args.question) > 1 and (args.question[0].endswith(".locas") or args.question[0] == "none"):
        raise LocasError(f"the memory is given with --memory now: locas ask \"{' '.join(args.question[1:])}\" "
                         f"--memory {args.question[0]}")
    if not question:
        raise LocasError("the question is empty; give a question in quotes")
    check_answer_args(args)
    lm = load_lm(args)
    state = model_state(lm, args)
    prompt = build_prompt(lm, args, reserve=512 + args.max_new_tokens)
    with state.apply(lm) as model:
        decoder = Decoder(model, lm.tokenizer, prompt.prefix_ids, max_new_tokens=args.max_new_tokens, batch_size=1)
        print(say_answer(decoder.answer([prompt.suffix_ids(question)], min_new_tokens=1)[0], args.max_new_tokens))
