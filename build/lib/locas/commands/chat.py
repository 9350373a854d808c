"""``locas chat [MEMORY]``: interactive questions with a memory file, tokens streamed as they are generated.

    $ locas chat runs/locomo/memories/conv-26.locas
    > What did Melanie paint?
"""

from __future__ import annotations

from .ask import build_prompt, load_state
from .common import add_model_args, load_lm

HELP = "interactive chat with a memory file (streams tokens); empty line or Ctrl-D quits"


def add_arguments(p):
    p.add_argument("memory", nargs="?", default="none", help="memory file (.locas), or 'none'")
    p.add_argument("--context", default=None, help="text file to keep in the prompt (cut from the front to fit)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--history", type=int, default=4, help="earlier exchanges kept in the prompt")
    p.add_argument("--prompt-style", default="auto", choices=["auto", "chat", "plain"])
    p.add_argument("--no-strict", action="store_true", help="load a memory made for different weights anyway")
    add_model_args(p)


def run(args, input_fn=input):
    from transformers import TextStreamer

    from ..answer import PrefixAnswerer

    lm = load_lm(args)
    state = load_state(lm, args.memory, strict=not args.no_strict)
    prompt = build_prompt(lm, args.context, args.prompt_style, reserve=1024 + args.max_new_tokens)
    history: list[tuple[str, str]] = []
    streamer = TextStreamer(lm.tokenizer, skip_prompt=False, skip_special_tokens=True)
    with state.apply(lm) as model:
        answerer = PrefixAnswerer(model, lm.tokenizer, prompt.prefix_ids, max_new_tokens=args.max_new_tokens,
                                  batch_size=1, stop_at_newline=False)
        print(f"memory: {args.memory}; ask a question (empty line quits)")
        while True:
            try:
                question = input_fn("> ").strip()
            except EOFError:
                break
            if not question:
                break
            ids = answerer.answer_ids([prompt.suffix_ids(question, history[-args.history:] if args.history else [])],
                                      streamer=streamer)[0]
            history.append((question, lm.tokenizer.decode(ids, skip_special_tokens=True).strip()))
