"""``interp chat``: a terminal chat with a steering direction you can change between turns."""
from __future__ import annotations

import argparse
import sys

HELP = """commands between turns:
  /alpha X    steering strength (add mode: x + X·r at the layer; ablate mode ignores it)
  /layer L    layer for add mode
  /mode M     ablate or add
  /off, /on   turn the intervention off or on
  /reset      forget the conversation so far
  /status     show the current setting
  /quit       leave"""


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model, optionally ablating or adding a direction",
                       description="Interactive chat (greedy). With --direction, every reply is generated under "
                       "the intervention; change it between turns with /alpha, /layer, /mode, /on, /off.\n\n" + HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="packaged model name, .gguf file, local folder or hub id")
    p.add_argument("--direction", help="direction.safetensors (e.g. from interp refusal)")
    p.add_argument("--mode", choices=["ablate", "add"], default="ablate",
                   help="ablate: remove the direction everywhere; add: add alpha·r at one layer (default ablate)")
    p.add_argument("--alpha", type=float, default=1.0, help="strength in add mode (default 1.0)")
    p.add_argument("--layer", type=int, default=None, help="layer for add mode (default: the direction's layer)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per reply (default 128)")
    p.set_defaults(func=run)


class Steering:
    """The chat's current intervention setting."""

    def __init__(self, model, direction, mode: str, alpha: float, layer: int | None):
        self.model, self.direction, self.mode, self.alpha = model, direction, mode, alpha
        self.layer = layer if layer is not None else model.n_layers // 2
        self.on = direction is not None

    def interventions(self) -> dict:
        from ..interventions import Add, everywhere

        if not self.on or self.direction is None:
            return {}
        if self.mode == "ablate":
            return everywhere(self.model, self.direction)
        return {f"resid_pre.{self.layer}": Add(self.direction, self.alpha)}

    def status(self) -> str:
        if self.direction is None:
            return "no direction loaded"
        return f"{'on' if self.on else 'off'}: {self.mode}, alpha {self.alpha}, layer {self.layer}"

    def command(self, line: str) -> str | None:
        """Apply a /command; return a message, or None to quit."""
        parts = line.split()
        cmd, arg = parts[0], (parts[1] if len(parts) > 1 else None)
        try:
            if cmd == "/quit":
                return None
            if cmd == "/alpha":
                self.alpha = float(arg)
            elif cmd == "/layer":
                layer = int(arg)
                if not 0 <= layer < self.model.n_layers:
                    return f"layer must be in 0..{self.model.n_layers - 1}"
                self.layer = layer
            elif cmd == "/mode":
                if arg not in ("ablate", "add"):
                    return "mode is ablate or add"
                self.mode = arg
            elif cmd in ("/on", "/off"):
                if self.direction is None:
                    return "no direction loaded (start with --direction FILE)"
                self.on = cmd == "/on"
            elif cmd in ("/status", "/reset", "/help"):
                return HELP if cmd == "/help" else self.status()
            else:
                return f"unknown command {cmd}; /help lists them"
        except (TypeError, ValueError):
            return f"{cmd} needs a number"
        return self.status()


def check_args(args) -> None:
    """Reject bad arguments before the model loads."""
    import math
    from pathlib import Path

    from ..errors import InterpError

    if args.direction and not Path(args.direction).is_file():
        raise InterpError(f"--direction {args.direction} does not exist")
    if args.layer is not None and args.layer < 0:
        raise InterpError(f"--layer must be a layer index (0 or more), got {args.layer}")
    if not math.isfinite(args.alpha):
        raise InterpError(f"--alpha must be a finite number, got {args.alpha}")
    if args.max_new_tokens < 1:
        raise InterpError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")


def run(args) -> int:
    from ..directions import load_direction
    from ..errors import InterpError
    from ..loading import load_model

    check_args(args)
    model = load_model(args.model)
    direction, meta = (load_direction(args.direction, model) if args.direction else (None, {}))
    layer = args.layer if args.layer is not None else meta.get("layer")
    if layer is not None and not 0 <= int(layer) < model.n_layers:
        raise InterpError(f"--layer must be in 0..{model.n_layers - 1} for {model.name}, got {layer}")
    steer = Steering(model, direction, args.mode, args.alpha, layer)
    print(f"{model.name} — {steer.status()}. Type /help for commands, /quit to leave.", flush=True)
    history: list[dict] = []
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if line.split()[0] == "/reset":
                history.clear()
            message = steer.command(line)
            if message is None:
                break
            print(f"[{message}]", flush=True)
            continue
        history.append({"role": "user", "content": line})
        reply = _reply(model, history, steer, args.max_new_tokens)
        history.append({"role": "assistant", "content": reply})
        print(f"assistant: {reply}", flush=True)
    return 0


def _reply(model, history: list[dict], steer: Steering, max_new_tokens: int) -> str:
    """Generate the next assistant turn for the whole conversation under the current setting."""
    from ..generation import generate_from_ids

    text = model.tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return generate_from_ids(model, [ids], max_new_tokens, interventions=steer.interventions())[0].strip()
