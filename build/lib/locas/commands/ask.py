"""``locas ask MEMORY "question"``: answer one question from a memory file (optionally with a context file).

    $ locas ask runs/locomo/memories/conv-26.locas "When did Caroline go to the LGBTQ support group?"
    $ locas ask none "What did Mel paint?" --context notes.txt       # no memory, context only
"""

from __future__ import annotations

from .common import add_model_args, load_lm

HELP = "answer one question with a memory file (no conversation needed), optionally with --context FILE"


def add_arguments(p):
    p.add_argument("memory", help="memory file (.locas), or 'none' for the plain model")
    p.add_argument("question", help="the question")
    p.add_argument("--context", default=None, help="text file to put before the question (cut from the front to fit)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--prompt-style", default="auto", choices=["auto", "chat", "plain"])
    p.add_argument("--no-strict", action="store_true", help="load a memory made for different weights anyway")
    add_model_args(p)


def load_state(lm, memory: str, strict: bool = True):
    from ..answer import AnswerState
    from ..io import load_memory

    if memory.lower() == "none":
        return AnswerState()
    return AnswerState(memory=load_memory(memory, model=lm, strict=strict))


def build_prompt(lm, context_file, style: str, reserve: int):
    from ..answer import Prompt, context_ids, tail_tokens
    from ..data.paths import read_text

    ctx = []
    if context_file:
        ctx = tail_tokens(context_ids(lm.tokenizer, read_text(context_file)), lm.max_length - reserve, lm.tokenizer)
    return Prompt.build(lm.tokenizer, ctx, style)


def run(args):
    from ..answer import PrefixAnswerer
    from ..errors import LocasError

    if not args.question.strip():
        raise LocasError("the question is empty; give a question in quotes")
    lm = load_lm(args)
    state = load_state(lm, args.memory, strict=not args.no_strict)
    prompt = build_prompt(lm, args.context, args.prompt_style, reserve=512 + args.max_new_tokens)
    with state.apply(lm) as model:
        answerer = PrefixAnswerer(model, lm.tokenizer, prompt.prefix_ids, max_new_tokens=args.max_new_tokens,
                                  batch_size=1)
        print(answerer.answer([prompt.suffix_ids(args.question)])[0])

