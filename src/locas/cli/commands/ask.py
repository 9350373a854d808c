"""``locas ask "question" --memory MEMORY``: answer one question from a memory file (optionally with a context file).

    $ locas ask "When did Caroline go to the LGBTQ support group?" --memory runs/locomo/memories/conv-26.locas
    $ locas ask "What did Mel paint?" --context notes.txt       # no memory, the text in the prompt
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
                   help="auto (chat when the tokenizer has a template), chat or plain (default: auto)")
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
    return ModelState(memory=load_memory(args.memory, model=lm, strict=not args.no_strict))


def build_prompt(lm, context_file, style: str, reserve: int):
    from ...data.paths import read_text
    from ...text.prompts import Prompt
    from ...text.tokens import encode, tail_tokens

    ctx = []
    if context_file:
        ctx = tail_tokens(encode(lm.tokenizer, read_text(context_file)), lm.max_length - reserve, lm.tokenizer)
    return Prompt.build(lm.tokenizer, ctx, style)


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
    prompt = build_prompt(lm, args.context, args.prompt_style, reserve=512 + args.max_new_tokens)
    with state.apply(lm) as model:
        decoder = Decoder(model, lm.tokenizer, prompt.prefix_ids, max_new_tokens=args.max_new_tokens, batch_size=1)
        print(decoder.answer([prompt.suffix_ids(question)])[0])
