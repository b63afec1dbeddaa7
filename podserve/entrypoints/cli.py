"""The ``podserve`` command: generate, chat, serve (and later bench, simulate, ...)."""
from __future__ import annotations

import argparse
import sys

from podserve.entrypoints.engine_args import add_engine_args, engine_config_from_args


def _sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=max_tokens, help=f"most tokens to generate per prompt (default: {max_tokens})")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default: 0.7)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default: 1.0)")
    g.add_argument("--top-k", type=int, default=-1, help="keep the k most likely tokens; -1 = all (default)")
    g.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def _sampling_params(args):
    from podserve.request import SamplingParams

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,  # the engine seed doubles as each request's: reruns give the same text
        stop=args.stop,
    )


def _build_llm(args):
    from podserve.engine.llm import LLM

    return LLM.from_config(engine_config_from_args(args))


def cmd_generate(args) -> int:
    params = _sampling_params(args)
    with _build_llm(args) as llm:  # stops tensor/pipeline-parallel workers on the way out
        if args.chat:
            outs = llm.chat([[{"role": "user", "content": p}] for p in args.prompts], params, use_tqdm=len(args.prompts) > 8)
        else:
            outs = llm.generate(args.prompts, params, use_tqdm=len(args.prompts) > 8)
    for prompt, out in zip(args.prompts, outs):
        if len(args.prompts) > 1:
            print(f"### {prompt}")
        print(out.outputs[0].text)
    return 0


def cmd_chat(args) -> int:
    params = _sampling_params(args)
    with _build_llm(args) as llm:
        return _chat_loop(args, llm, params)


def _chat_loop(args, llm, params) -> int:
    history: list[dict] = []
    if args.system:
        history.append({"role": "system", "content": args.system})
    print("podserve chat — empty line or Ctrl-D to quit", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line.strip():
            break
        history.append({"role": "user", "content": line})
        text = _stream_reply(llm, history, params)
        history.append({"role": "assistant", "content": text})
    return 0


def _stream_reply(llm, history, params) -> str:
    engine = llm.engine
    tok = engine.tokenizer
    ids = tok.encode(tok.apply_chat_template(history, add_generation_prompt=True), add_special_tokens=False)
    rid = engine.add_request(ids, params).request_id
    text = ""
    try:
        while True:
            for out in engine.step():
                if out.request_id == rid:
                    print(out.delta_text, end="", flush=True)
                    text = out.outputs[0].text
                    if out.finished:
                        print()
                        return text
    except KeyboardInterrupt:
        engine.abort_request(rid)
        print()
        return text


def cmd_serve(args) -> int:
    from podserve.entrypoints.openai.server import run_server

    return run_server(args)


# --- replicas on Ray (podserve serve --replicas N; issue #9) -------------------------------------
def add_replica_args(p: argparse.ArgumentParser) -> None:
    """Flags of ``podserve serve`` that run engine replicas on Ray behind one endpoint."""
    g = p.add_argument_group("replicas (on Ray; needs: pip install 'podserve[distributed]')")
    g.add_argument("--replicas", type=int, default=None, metavar="N",
                   help="serve N engine replicas, each in a Ray actor, behind this one endpoint (default: one in-process engine, no Ray)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="connect to this Ray cluster ('auto', 'HOST:PORT') instead of starting a local one; implies --replicas 1 if not given")
    g.add_argument("--routing", default="least-outstanding", choices=["round-robin", "least-outstanding"],
                   help="how the front end picks a replica per request (default: least-outstanding)")
    g.add_argument("--replica-num-cpus", type=float, default=1.0,
                   help="CPUs (and torch threads) per replica on CPU; on CUDA each replica takes tensor-parallel-size GPUs (default: 1)")
    g.add_argument("--replica-restart", default="auto", choices=["auto", "manual"],
                   help="auto: restart a dead replica after a back-off; manual: only via POST /admin/replicas/ID/restart (default: auto)")
    g.add_argument("--replica-restart-delay", type=float, default=1.0,
                   help="seconds before an automatic restart, doubling while restarts fail (default: 1)")
    g.add_argument("--health-check-interval", type=float, default=1.0, help="seconds between replica health checks (default: 1)")
    g.add_argument("--health-check-timeout", type=float, default=5.0,
                   help="a replica that does not answer a health check this long stops being routed to (default: 5)")
# --- end of replica flags -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="podserve", description="LLM inference engine with hybrid batching, POD attention and a simulator.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate completions for prompts and print them")
    gen.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt text (several run as one batch)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the model's chat template")
    add_engine_args(gen)
    _sampling_args(gen, max_tokens=128)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat on the terminal")
    chat.add_argument("--system", default=None, help="system prompt")
    add_engine_args(chat)
    _sampling_args(chat, max_tokens=512)
    chat.set_defaults(func=cmd_chat)

    serve = sub.add_parser("serve", help="serve the OpenAI API (completions, chat, models, metrics) over HTTP")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, localhost only)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    serve.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*, /tokenize, /detokenize")
    serve.add_argument("--served-model-name", default=None, help="model name clients must use (default: the model's own)")
    serve.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                       help="run the engine in its own process, so model steps never wait on HTTP work for "
                            "the interpreter lock (default: on; --no-engine-process steps it on a thread here)")
    serve.add_argument("--max-queue-len", type=int, default=1024, help="most requests waiting for admission; more get 503 + Retry-After (default: 1024)")
    serve.add_argument("--shutdown-timeout", type=float, default=10.0, help="seconds in-flight requests may finish after SIGINT/SIGTERM before being aborted (default: 10)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn log level (default: info)")
    add_engine_args(serve)
    add_replica_args(serve)
    serve.set_defaults(func=cmd_serve)

    from podserve.entrypoints import bench_cli

    bench_cli.register(sub)
    from podserve.entrypoints import sim_cli

    sim_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"podserve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
