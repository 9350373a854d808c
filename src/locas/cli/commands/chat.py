"""``locas chat --memory MEMORY``: interactive questions with a memory file, tokens streamed as they come.

    $ locas chat --memory runs/locomo/memories/conv-26.locas
    > What did Melanie paint?
"""

from __future__ import annotations

from ..flags import Number
from .ask import add_answer_args

HELP = "interactive chat with a memory file (streams tokens); empty line or Ctrl-D quits"
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"--memory": "{memory}", "--max-new-tokens": "2", "--model": "{model}", "--device": "cpu"}


def add_arguments(p):
    add_answer_args(p, 96)
    p.add_argument("--history", type=Number(int, minimum=0), default=4,
                   help="earlier exchanges kept in the prompt (default: 4)")


def run(args, input_fn=input):
    from transformers import TextStreamer

    from ...errors import LocasError
    from ...text.decoding import Decoder
    from ..flags import load_lm
    from .ask import build_prompt, check_answer_args, model_state

    check_answer_args(args)
    if args.history < 0:
        raise LocasError(f"--history must not be negative, got {args.history}")
    lm = load_lm(args)
    state = model_state(lm, args)
    prompt = build_prompt(lm, args, reserve=1024 + args.max_new_tokens)
    history: list[tuple[str, str]] = []
    streamer = TextStreamer(lm.tokenizer, skip_prompt=False, skip_special_tokens=True)
    with state.apply(lm) as model:
        decoder = Decoder(model, lm.tokenizer, prompt.prefix_ids, max_new_tokens=args.max_new_tokens, batch_size=1,
                          newline=False)
        print(f"memory: {args.memory or 'none'}; ask a question (empty line quits)")
        while True:
            try:
                question = input_fn("> ").strip()
            except EOFError:
                break
            if not question:
                break
            ids = decoder.answer_ids([prompt.suffix_ids(question, history[-args.history:] if args.history else [])],
                                     streamer=streamer, min_new_tokens=1)[0]
            answer = lm.tokenizer.decode(ids, skip_special_tokens=True).strip()
            if not answer:
                print(f"(no answer within {args.max_new_tokens} tokens; raise --max-new-tokens or try the other "
                      "--prompt-style)")
            history.append((question, answer))
