"""MetaLearner: MAML, Multi-MAML and MuMoMAML over one batched inner loop.

* MAML: the base network's own parameters are the meta-parameters.
* Multi-MAML: one base network per mode, parameters stacked ``[M, ...]`` and
  gathered per task by the ground-truth mode (``modes``), still one batched
  computation. Its fast weights are dense (the gathered initial weights are not
  shared, so there is no shared ``W`` for the low-rank form).
* MuMoMAML: a task encoder embeds the support set once, modulation heads turn the
  embedding into FiLM vectors tau (not updated in the inner loop), then MAML's inner
  loop adapts the modulated base network.

``fast_weights``: "dense" keeps per-task ``[T, OUT, IN]`` weights for every layer;
"lowrank" keeps every FiLMLinear layer in the exact low-rank form; "auto" uses the
low-rank form for linear layers whose final rank ``steps * K`` is below both of
their dimensions. With ``inner_grad_clamp`` the low-rank form stays exact: the clamp's
correction is a few more rank-1 terms, or the layer switches to dense weights where that
is cheaper (see ``fast_weights``).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import MLP, Conv4
from .batch import TaskBatch, check_modes
from .config import resolve_config
from .encoders import ImageEncoder, SequenceEncoder
from .fast_weights import forward, init_fast_weights, lowrank_layers
from .inner_loop import adapt, inner_step
from .modulation import ModulationHeads


def _key(name: str) -> str:
    return name.replace(".", "__")


def build_base(cfg: dict) -> nn.Module:
    if cfg["base"] == "mlp":
        mlp = MLP(
            cfg["in_features"], cfg["out_features"], cfg["hidden_sizes"], backend=cfg["backend"]
        )
        if cfg["base_init"] == "authors-code":
            with torch.no_grad():
                for name, p in mlp.named_parameters():
                    if name.endswith("weight"):
                        p.normal_(0.0, 0.01)
                    else:
                        p.zero_()
        return mlp
    return Conv4(
        cfg["in_channels"],
        cfg["num_classes"],
        cfg["conv_channels"],
        cfg["num_blocks"],
        cfg["image_size"],
        cfg["bn_affine"],
        backend=cfg["backend"],
    )


def mse_per_task(out: Tensor, y: Tensor) -> Tensor:
    """out, y [T, N, O] -> mean squared error per task [T]."""
    return (out - y).square().flatten(1).mean(1)


def _mse_output_grad(out: Tensor, y: Tensor) -> Tensor:
    """d(sum over tasks of mse_per_task)/d out, written out (no autograd.grad call)."""
    return (out - y) * (2.0 / out[0].numel())


mse_per_task.output_grad = _mse_output_grad  # type: ignore[attr-defined]


def cross_entropy_per_task(out: Tensor, y: Tensor) -> Tensor:
    """logits [T, N, C], labels [T, N] -> mean cross entropy per task [T]."""
    t, n, c = out.shape
    return (
        F.cross_entropy(out.reshape(t * n, c), y.reshape(t * n), reduction="none")
        .reshape(t, n)
        .mean(1)
    )


def _cross_entropy_output_grad(out: Tensor, y: Tensor) -> Tensor:
    """d(sum over tasks of cross_entropy_per_task)/d logits, written out."""
    onehot = F.one_hot(y, out.shape[-1]).to(out.dtype)
    return (torch.softmax(out, -1) - onehot) * (1.0 / out.shape[1])


cross_entropy_per_task.output_grad = _cross_entropy_output_grad  # type: ignore[attr-defined]


class MetaLearner(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        cfg = resolve_config(cfg)
        self._config = cfg
        self.method = cfg["method"]
        base = build_base(cfg)
        self.film_channels = list(base.film_channels)
        self._param_names = [n for n, _ in base.named_parameters()]
        if self.method == "multi-maml":
            copies = [base] + [build_base(cfg) for _ in range(cfg["num_modes"] - 1)]
            self.stacked = nn.ParameterDict(
                {
                    _key(name): nn.Parameter(
                        torch.stack([dict(c.named_parameters())[name].detach() for c in copies])
                    )
                    for name, _ in base.named_parameters()
                }
            )
            # The base only supplies the forward and the layers' settings: its parameters
            # are the per-mode ones in ``stacked``, gathered per task into fast weights.
            for module in base.modules():
                for name, _ in list(module.named_parameters(recurse=False)):
                    module.register_parameter(name, None)
        self.base = base
        if self.method == "mumomaml":
            if cfg["base"] == "mlp":
                self.encoder = SequenceEncoder(
                    cfg["in_features"] + cfg["out_features"],
                    cfg["encoder_hidden"],
                    cfg["encoder_layers"],
                    cfg["encoder"],
                )
            else:
                self.encoder = ImageEncoder(
                    cfg["in_channels"],
                    cfg["image_size"],
                    cfg["num_classes"],
                    cfg["encoder_hidden"],
                    cfg["encoder_channels"],
                    aggregator=cfg["encoder_aggregator"],
                )
            self.modulation = ModulationHeads(
                self.encoder.embedding_size,
                self.film_channels,
                cfg["modulation"],
                cfg["modulation_hidden"],
            )
        names = [n for n, _ in base.named_parameters()]
        if cfg["learn_inner_lr"]:
            self.inner_lrs = nn.ParameterDict(
                {_key(n): nn.Parameter(torch.tensor(cfg["inner_lr"])) for n in names}
            )
        self.loss_fn = mse_per_task if cfg["loss"] == "mse" else cross_entropy_per_task
        self._compile_inner_loop = False

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, cfg: dict) -> MetaLearner:
        """Build a learner from a config dict (see ``mumo_fast.meta.config``)."""
        return cls(cfg)

    @property
    def config(self) -> dict[str, Any]:
        """The full, resolved configuration (JSON-serialisable; round-trips)."""
        return copy.deepcopy(self._config)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """ "base", "encoder", "modulation" (MuMoMAML), "inner_lr" (if learnable)."""
        groups: dict[str, list[nn.Parameter]] = {}
        groups["base"] = (
            list(self.stacked.values())
            if self.method == "multi-maml"
            else list(self.base.parameters())
        )
        if self.method == "mumomaml":
            groups["encoder"] = list(self.encoder.parameters())
            groups["modulation"] = list(self.modulation.parameters())
        if self._config["learn_inner_lr"]:
            groups["inner_lr"] = list(self.inner_lrs.values())
        return groups

    # ------------------------------------------------------------------ pieces
    def _lr(self, name: str) -> float | Tensor:
        if self._config["learn_inner_lr"]:
            return self.inner_lrs[_key(name)]
        return self._config["inner_lr"]

    def _check_inputs(self, x: Tensor, y: Tensor | None, xname: str, yname: str) -> None:
        cfg = self._config
        if not isinstance(x, Tensor):
            raise TypeError(f"{xname} must be a torch.Tensor, got {type(x).__name__}")
        if cfg["base"] == "mlp":
            want_x = f"[T, N, {cfg['in_features']}]"
            ok = x.dim() == 3 and x.shape[-1] == cfg["in_features"]
        else:
            c, s = cfg["in_channels"], cfg["image_size"]
            want_x = f"[T, N, {c}, {s}, {s}]"
            ok = x.dim() == 5 and tuple(x.shape[2:]) == (c, s, s)
        if not ok:
            raise ValueError(f"{xname} must have shape {want_x}, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{xname} must be a floating-point tensor, got {x.dtype}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(
                f"{xname} must hold at least one task and one point per task, "
                f"got shape {tuple(x.shape)}"
            )
        dtype = next(self.parameters()).dtype
        if x.dtype != dtype:
            raise TypeError(
                f"{xname} must have dtype {dtype} (the dtype of this model's parameters), "
                f"got {x.dtype}"
            )
        if cfg["input_range"] is not None and x.numel():
            lo, hi = cfg["input_range"]
            x_lo, x_hi = (float(v) for v in torch.aminmax(x.detach()))
            if not (lo <= x_lo and x_hi <= hi):
                raise ValueError(
                    f"{xname} must hold values in [{lo:g}, {hi:g}] (this model's input range), "
                    f"got values in [{x_lo:g}, {x_hi:g}]"
                )
        if y is None:
            return
        if not isinstance(y, Tensor):
            raise TypeError(f"{yname} must be a torch.Tensor, got {type(y).__name__}")
        t, n = x.shape[:2]
        if cfg["loss"] == "mse":
            o = cfg["out_features"] if cfg["base"] == "mlp" else cfg["num_classes"]
            if tuple(y.shape) != (t, n, o):
                raise ValueError(f"{yname} must have shape [{t}, {n}, {o}], got {tuple(y.shape)}")
        else:
            if tuple(y.shape) != (t, n) or y.dtype != torch.long:
                raise ValueError(
                    f"{yname} must be class labels of shape [{t}, {n}] and dtype long, "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
            classes = cfg["out_features"] if cfg["base"] == "mlp" else cfg["num_classes"]
            if y.numel():
                y_lo, y_hi = (int(v) for v in torch.aminmax(y))
                if y_lo < 0 or y_hi >= classes:
                    raise ValueError(
                        f"{yname} must hold class labels in [0, {classes}), "
                        f"got values in [{y_lo}, {y_hi}]"
                    )

    def _check_batch(self, batch: TaskBatch) -> None:
        if not isinstance(batch, TaskBatch):
            raise TypeError(f"batch must be a TaskBatch, got {type(batch).__name__}")
        self._check_inputs(batch.support_x, batch.support_y, "support_x", "support_y")
        self._check_inputs(batch.query_x, batch.query_y, "query_x", "query_y")

    def _film(self, sx: Tensor, sy: Tensor):
        if self.method != "mumomaml":
            return None
        return self.modulation(self.encoder(sx, sy))

    def _initial(
        self,
        num_tasks: int,
        k: int,
        steps: int,
        modes: Tensor | None,
        detach: bool,
        backend: str | None = None,
    ):
        if self.method == "multi-maml":
            if modes is None:
                raise ValueError(
                    "modes is required for method 'multi-maml' (one ground-truth mode per task)"
                )
            modes = check_modes(modes, num_tasks)
            m = self._config["num_modes"]
            if int(modes.min()) < 0 or int(modes.max()) >= m:
                raise ValueError(
                    f"modes must lie in [0, {m}), got values in [{int(modes.min())}, {int(modes.max())}]"
                )
            params = {n: self.stacked[_key(n)][modes] for n in self._param_names}
            lowrank = set()
        else:
            params = dict(self.base.named_parameters())
            lowrank = lowrank_layers(self.base, steps * k, self._config["fast_weights"])
        return init_fast_weights(
            self.base, params, num_tasks, lowrank, detach=detach, backend=backend
        )

    def _adapted_query(self, batch: TaskBatch, steps: int, first_order: bool):
        """Query output after ``steps`` inner steps, and the film used (with graph)."""
        if not self._compile_inner_loop:
            film = self._film(batch.support_x, batch.support_y)
            args = (self, film, batch.support_x, batch.support_y, batch.query_x, batch.modes)
            return _adapt_and_query(*args, steps, first_order, None), film
        device_type = batch.support_x.device.type
        # (Dynamo skips RNN modules unless told: the encoder's GRU is then traced into
        # small GEMMs and pointwise ops, which inductor fuses forward and backward)
        with torch._dynamo.config.patch(allow_rnn=True):
            film = _compiled(_film_of, device_type)(self, batch.support_x, batch.support_y)
        args = (self, film, batch.support_x, batch.support_y, batch.query_x, batch.modes)
        # the reference ops: inductor fuses the plain torch ops itself
        out = _compiled(_adapt_and_query, device_type)(*args, steps, first_order, "reference")
        return out, film

    def use_compiled_inner_loop(self, enabled: bool = True) -> None:
        """Run :meth:`meta_train_step`'s task encoder, modulation heads, inner loop and
        query forward through ``torch.compile`` (inductor). The inner
        gradients of an MLP base are written out as plain differentiable ops (no
        ``autograd.grad``), so the meta-gradient is one ordinary backward through the
        compiled graph: same values as eager up to float rounding, second order
        included. The first step of each new shape compiles (tens of seconds on CPU;
        needs a C++ compiler). Only the ``mlp`` base with the ``reference`` ops (the
        default ``auto`` picks them for linear layers on CPU) is supported. Measured and tested
        on CPU only; on CUDA inductor would generate Triton kernels instead (untested)."""
        if enabled:
            cfg = self._config
            if cfg["base"] != "mlp":
                raise ValueError(
                    f"use_compiled_inner_loop needs config['base']='mlp', got {cfg['base']!r} "
                    "(the conv base's inner gradients go through autograd.grad, which "
                    "compiled graphs cannot differentiate twice)"
                )
            if cfg["backend"] not in (None, "auto", "reference"):
                raise ValueError(
                    "use_compiled_inner_loop needs config['backend'] None, 'auto' or "
                    f"'reference' (inductor generates the fused kernels), got {cfg['backend']!r}"
                )
        # (a flag, not a compiled bound method: copies and pickles of the learner must not
        # carry a function bound to this instance)
        self._compile_inner_loop = bool(enabled)

    # ------------------------------------------------------------------ public API
    def meta_train_step(self, batch: TaskBatch, post_mod_loss: bool = True) -> dict[str, float]:
        """Mean post-adaptation query loss over tasks; calls ``.backward()`` (chunked
        over tasks if ``chunk_size``: gradients accumulate to the unchunked ones).
        Returns {"loss", "post_mod_loss"} (post-modulation: 0 inner steps; an extra
        forward pass, skipped with ``post_mod_loss=False``, which returns {"loss"})."""
        self._check_batch(batch)
        cfg = self._config
        t = batch.num_tasks
        size = cfg["chunk_size"] or t
        total = post = 0.0
        for start in range(0, t, size):
            chunk = batch.slice(start, min(start + size, t))
            out, film = self._adapted_query(chunk, cfg["inner_steps"], cfg["first_order"])
            losses = self.loss_fn(out, chunk.query_y)
            (losses.sum() / t).backward()
            total += float(losses.detach().sum())
            if post_mod_loss:
                with torch.no_grad():
                    post += float(self._query_losses(chunk, _detach_film(film)).sum())
        if not post_mod_loss:
            return {"loss": total / t}
        return {"loss": total / t, "post_mod_loss": post / t}

    def _query_losses(self, batch: TaskBatch, film) -> Tensor:
        fw = self._initial(batch.num_tasks, batch.support_x.shape[1], 0, batch.modes, True)
        return self.loss_fn(forward(self.base, fw, batch.query_x, film), batch.query_y)

    def _chunks(self, num_tasks: int) -> list[slice]:
        size = self._config["chunk_size"] or num_tasks
        return [slice(s, min(s + size, num_tasks)) for s in range(0, num_tasks, size)]

    def _steps(self, steps: int | None) -> int:
        if steps is None:
            return self._config["eval_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int or None, got {steps!r}")
        return steps

    def _rollout(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, modes, steps: int
    ) -> list[Tensor]:
        """Query outputs after 0..steps inner steps (no meta-gradient)."""
        with torch.no_grad():
            film = _detach_film(self._film(support_x, support_y))
        fw = self._initial(support_x.shape[0], support_x.shape[1], steps, modes, True)
        outs = []
        for s in range(steps + 1):
            with torch.no_grad():
                outs.append(forward(self.base, fw, query_x, film))
            if s < steps:
                with torch.enable_grad():
                    fw = inner_step(
                        self.base,
                        fw,
                        film,
                        support_x,
                        support_y,
                        self.loss_fn,
                        self._lr,
                        self._config["inner_grad_clamp"],
                        create_graph=False,
                    )
                fw = fw.detached()
        return outs

    def evaluate(self, batch: TaskBatch, steps: int | None = None) -> dict[str, Tensor]:
        """Query loss after 0..steps inner steps, no meta-gradient.

        Returns {"per_step": [steps+1, T]} and, for classification,
        {"accuracy_per_step": [steps+1, T]}; row 0 is post-modulation."""
        self._check_batch(batch)
        steps = self._steps(steps)

        def run(chunk: TaskBatch):
            outs = self._rollout(
                chunk.support_x, chunk.support_y, chunk.query_x, chunk.modes, steps
            )
            loss = torch.stack([self.loss_fn(o, chunk.query_y) for o in outs])
            acc = None
            if self._config["loss"] == "cross_entropy":
                acc = torch.stack(
                    [(o.argmax(-1) == chunk.query_y).to(o.dtype).mean(1) for o in outs]
                )
            return loss, acc

        parts = [run(batch.slice(c.start, c.stop)) for c in self._chunks(batch.num_tasks)]
        result = {"per_step": torch.cat([p[0] for p in parts], dim=1)}
        if parts[0][1] is not None:
            result["accuracy_per_step"] = torch.cat([p[1] for p in parts], dim=1)
        return result

    def predict(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        steps: int | None = None,
        modes: Tensor | None = None,
    ) -> Tensor:
        """Query predictions [T, Q, ...] after ``steps`` inner steps (None: eval_steps;
        0: post-modulation). Multi-MAML needs ``modes``."""
        self._check_inputs(support_x, support_y, "support_x", "support_y")
        self._check_inputs(query_x, None, "query_x", "query_y")
        if self.method == "multi-maml" and modes is None:
            raise ValueError(
                "modes is required for method 'multi-maml' (one ground-truth mode per task)"
            )
        t = support_x.shape[0]
        if query_x.shape[0] != t:
            raise ValueError(
                f"query_x must have T={t} tasks like support_x, got shape {tuple(query_x.shape)}"
            )
        steps = self._steps(steps)
        modes = check_modes(modes, t)
        parts = [
            self._rollout(
                support_x[c], support_y[c], query_x[c], None if modes is None else modes[c], steps
            )[-1]
            for c in self._chunks(t)
        ]
        return torch.cat(parts, dim=0)

    def embed(self, support_x: Tensor, support_y: Tensor) -> Tensor:
        """Task embeddings [T, E] (MuMoMAML only), without gradient."""
        if self.method != "mumomaml":
            raise ValueError(
                f"embed needs method 'mumomaml' (a task encoder); this learner is {self.method!r}"
            )
        self._check_inputs(support_x, support_y, "support_x", "support_y")
        with torch.no_grad():
            return self.encoder(support_x, support_y)


def _adapt_and_query(
    learner: MetaLearner,
    film,
    support_x,
    support_y,
    query_x,
    modes,
    steps: int,
    first_order: bool,
    backend: str | None,
) -> Tensor:
    """Query output after ``steps`` inner steps from the learner's initial fast weights
    (``backend``: the ops backend of every layer, None: each layer's own)."""
    k = support_x.shape[1]
    fw = learner._initial(support_x.shape[0], k, steps, modes, False, backend)
    fw = adapt(
        learner.base,
        fw,
        film,
        support_x,
        support_y,
        learner.loss_fn,
        steps,
        learner._lr,
        learner._config["inner_grad_clamp"],
        first_order,
    )
    return forward(learner.base, fw, query_x, film)


def _film_of(learner: MetaLearner, support_x: Tensor, support_y: Tensor):
    return learner._film(support_x, support_y)


@functools.cache
def _compiled(fn, device_type: str):
    """``fn`` through torch.compile (created once per function and device type, on first
    use). On CPU the graph's wrapper is generated as C++ (inductor's ``cpp_wrapper``):
    the step launches hundreds of small kernels, and without the Python wrapper's
    per-kernel overhead the second-order meta-step measured about 10% faster
    (BENCHMARKS.md)."""
    options = {"cpp_wrapper": True} if device_type == "cpu" else None
    return torch.compile(fn, dynamic=False, options=options)


def _detach_film(film):
    if film is None:
        return None
    return [tuple(None if v is None else v.detach() for v in pair) for pair in film]
