"""The MetaLearner configuration: defaults, validation, JSON-serialisable round trip."""

from __future__ import annotations

import math
from typing import Any

METHODS = ("maml", "multi-maml", "mumomaml")
# the methods a domain without mode labels can train (multi-maml needs each task's mode)
METHODS_WITHOUT_MODES = ("maml", "mumomaml")
BASES = ("mlp", "conv4")
LOSSES = ("mse", "cross_entropy")
FAST_WEIGHTS = ("auto", "dense", "lowrank")
# "torch": nn.Linear's / nn.Conv2d's own initialisation; "authors-code": the authors'
# released regression code's, weights N(0, 0.01^2) and zero biases (MLP base only)
BASE_INITS = ("torch", "authors-code")

BASE_KEYS: dict[str, dict[str, Any]] = {
    "mlp": {"in_features": 1, "out_features": 1, "hidden_sizes": [100, 100, 100]},
    "conv4": {
        "in_channels": 1,
        "image_size": 28,
        "num_classes": 5,
        "conv_channels": 64,
        "num_blocks": 4,
        "bn_affine": True,
    },
}

COMMON: dict[str, Any] = {
    "method": "mumomaml",
    "modulation": "film",
    "num_modes": 1,
    "encoder": None,  # "gru" | "lstm" (mlp), "conv" (conv4); None: by base
    "encoder_hidden": 40,
    "encoder_layers": 1,
    "encoder_aggregator": "mean",  # conv encoder: "mean" | "gru"
    "encoder_channels": 32,
    "modulation_hidden": 128,  # None: a single linear layer per modulated layer
    "inner_steps": 5,
    "eval_steps": None,  # None: inner_steps
    "inner_lr": 0.001,
    "learn_inner_lr": False,  # True: one learnable scalar per base parameter tensor, init inner_lr
    "inner_grad_clamp": None,  # element-wise clamp of every inner gradient (exact with low-rank)
    "first_order": False,
    "loss": None,  # None: "mse" for mlp, "cross_entropy" for conv4
    "fast_weights": "auto",
    "base_init": "torch",
    "chunk_size": None,
    "backend": None,  # ops backend of the base network's layers; None: the global default
    "input_range": None,  # [low, high]: inputs outside it are refused (None: any value)
}


def _choice(cfg: dict, key: str, allowed: tuple) -> None:
    if cfg[key] not in allowed:
        raise ValueError(f"config[{key!r}] must be one of {allowed}, got {cfg[key]!r}")


def _int(cfg: dict, key: str, minimum: int, optional: bool = False) -> None:
    v = cfg[key]
    if optional and v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"config[{key!r}] must be an int >= {minimum}, got {v!r}")


def _flatten(cfg: dict) -> dict:
    """Accept the nested spelling too: ``"base": {"type": "mlp", "sizes": [1, 100, 100,
    100, 1]}`` (or conv4 keys), ``"encoder": {"type": "gru", "hidden": 40, "layers": 1,
    "bidirectional": True, "aggregator": ..., "channels": ...}``, ``"modulation":
    {"type": "film", "hidden": 128}``."""
    cfg = dict(cfg)
    base = cfg.get("base")
    if isinstance(base, dict):
        base = dict(base)
        cfg["base"] = base.pop("type", "mlp")
        sizes = base.pop("sizes", None)
        if sizes is not None:
            if not isinstance(sizes, (list, tuple)) or len(sizes) < 3:
                raise ValueError(
                    f"config['base']['sizes'] must be [in, hidden..., out], got {sizes!r}"
                )
            cfg["in_features"], cfg["out_features"] = sizes[0], sizes[-1]
            cfg["hidden_sizes"] = list(sizes[1:-1])
        cfg.update(base)
    enc = cfg.get("encoder")
    if isinstance(enc, dict):
        enc = dict(enc)
        if enc.pop("bidirectional", True) is not True:
            raise ValueError(
                "config['encoder']['bidirectional'] must be True (the encoder is bidirectional)"
            )
        cfg["encoder"] = enc.pop("type", None)
        for short in ("hidden", "layers", "aggregator", "channels"):
            if short in enc:
                cfg[f"encoder_{short}"] = enc.pop(short)
        if enc:
            raise ValueError(f"unknown config['encoder'] keys {sorted(enc)}")
    mod = cfg.get("modulation")
    if isinstance(mod, dict):
        mod = dict(mod)
        cfg["modulation"] = mod.pop("type", "film")
        if "hidden" in mod:
            cfg["modulation_hidden"] = mod.pop("hidden")
        if mod:
            raise ValueError(f"unknown config['modulation'] keys {sorted(mod)}")
    return cfg


def resolve_config(cfg: dict) -> dict:
    """Defaults filled in, every value checked; raises ValueError naming the key.
    The result is the canonical flat form (see :func:`_flatten` for the nested one)."""
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg must be a dict, got {type(cfg).__name__}")
    cfg = _flatten(cfg)
    base = cfg.get("base", "mlp")
    if base not in BASES:
        raise ValueError(f"config['base'] must be one of {BASES}, got {base!r}")
    known = {"base"} | set(COMMON) | {k for keys in BASE_KEYS.values() for k in keys}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known keys: {sorted(known)}")
    out: dict[str, Any] = {"base": base}
    for key, default in {**BASE_KEYS[base], **COMMON}.items():
        out[key] = cfg.get(key, default)
    _choice(out, "method", METHODS)
    from .modulation import MODULATIONS

    _choice(out, "modulation", MODULATIONS)
    _choice(out, "fast_weights", FAST_WEIGHTS)
    _choice(out, "base_init", BASE_INITS)
    if out["base_init"] != "torch" and base != "mlp":
        raise ValueError(
            f"config['base_init']={out['base_init']!r} is for the 'mlp' base only, got base {base!r}"
        )
    if out["encoder"] is None:
        out["encoder"] = "gru" if base == "mlp" else "conv"
    _choice(out, "encoder", ("gru", "lstm") if base == "mlp" else ("conv",))
    _choice(out, "encoder_aggregator", ("mean", "gru"))
    if out["loss"] is None:
        out["loss"] = "mse" if base == "mlp" else "cross_entropy"
    _choice(out, "loss", LOSSES)
    for key in ("num_modes", "encoder_hidden", "encoder_layers", "encoder_channels"):
        _int(out, key, 1)
    _int(out, "modulation_hidden", 1, optional=True)
    _int(out, "inner_steps", 0)
    _int(out, "eval_steps", 0, optional=True)
    if out["eval_steps"] is None:
        out["eval_steps"] = out["inner_steps"]
    _int(out, "chunk_size", 1, optional=True)
    lr = out["inner_lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < math.inf:
        raise ValueError(f"config['inner_lr'] must be a finite non-negative number, got {lr!r}")
    out["inner_lr"] = float(lr)
    clamp = out["inner_grad_clamp"]
    if clamp is not None and (
        isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not clamp > 0
    ):
        raise ValueError(
            f"config['inner_grad_clamp'] must be None or a positive number, got {clamp!r}"
        )
    rng = out["input_range"]
    if rng is not None:
        if (
            not isinstance(rng, (list, tuple))
            or len(rng) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)
            or not float(rng[0]) < float(rng[1])
        ):
            raise ValueError(
                f"config['input_range'] must be None or [low, high] with low < high, got {rng!r}"
            )
        out["input_range"] = [float(rng[0]), float(rng[1])]
    for key in ("learn_inner_lr", "first_order"):
        if not isinstance(out[key], bool):
            raise ValueError(f"config[{key!r}] must be a bool, got {out[key]!r}")
    if out["method"] == "multi-maml" and out["fast_weights"] == "lowrank":
        raise ValueError(
            "config['fast_weights']='lowrank' is not possible with method 'multi-maml' "
            "(per-mode initial weights are not shared); use 'auto' or 'dense'"
        )
    if base == "mlp":
        _int(out, "in_features", 1)
        _int(out, "out_features", 1)
        hs = out["hidden_sizes"]
        if (
            not isinstance(hs, (list, tuple))
            or not hs
            or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hs)
        ):
            raise ValueError(
                f"config['hidden_sizes'] must be a non-empty list of positive ints, got {hs!r}"
            )
        out["hidden_sizes"] = list(hs)
    else:
        for key in ("in_channels", "image_size", "num_classes", "conv_channels", "num_blocks"):
            _int(out, key, 1)
        if not isinstance(out["bn_affine"], bool):
            raise ValueError(f"config['bn_affine'] must be a bool, got {out['bn_affine']!r}")
    return out
