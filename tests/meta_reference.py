"""A per-task Python-loop reference of the meta-objective, written with plain torch ops
(F.linear, F.conv2d, F.batch_norm): the oracle for the batched inner loop."""

import torch
import torch.nn.functional as F


def mlp_forward(names, params, x, film):
    """x [N, in]; film: list of (gamma [C], beta [C] or None) or None."""
    p = dict(zip(names, params))
    layers = sorted({n.rsplit(".", 1)[0] for n in names if n.startswith("hidden.")})
    for i, layer in enumerate(layers):
        x = F.linear(x, p[f"{layer}.weight"], p[f"{layer}.bias"])
        if film is not None:
            gamma, beta = film[i]
            x = x * gamma
            if beta is not None:
                x = x + beta
        x = torch.relu(x)
    return F.linear(x, p["out.weight"], p["out.bias"])


def conv4_forward(names, params, x, film):
    p = dict(zip(names, params))
    i = 0
    while f"convs.{i}.weight" in p:
        x = F.conv2d(x, p[f"convs.{i}.weight"], None, stride=2, padding=1)
        x = F.batch_norm(
            x, None, None, p.get(f"norms.{i}.weight"), p.get(f"norms.{i}.bias"), training=True
        )
        if film is not None:
            gamma, beta = film[i]
            x = x * gamma[:, None, None]
            if beta is not None:
                x = x + beta[:, None, None]
        x = torch.relu(x)
        i += 1
    return F.linear(x.flatten(1), p["head.weight"], p["head.bias"])


def meta_loss(learner, batch, steps=None):
    """Mean over tasks of the post-adaptation query loss, one task at a time (the
    authors' style): per task, functional params and autograd.grad inner steps."""
    cfg = learner.config
    steps = cfg["inner_steps"] if steps is None else steps
    fwd = mlp_forward if cfg["base"] == "mlp" else conv4_forward
    if cfg["loss"] == "mse":
        loss_fn = F.mse_loss
    else:
        loss_fn = F.cross_entropy
    names = learner._param_names
    clamp = cfg["inner_grad_clamp"]
    total = 0
    for t in range(batch.num_tasks):
        sx, sy = batch.support_x[t], batch.support_y[t]
        qx, qy = batch.query_x[t], batch.query_y[t]
        if cfg["method"] == "multi-maml":
            m = int(batch.modes[t])
            params = [learner.stacked[n.replace(".", "__")][m] for n in names]
        else:
            params = [dict(learner.base.named_parameters())[n] for n in names]
        film = None
        if cfg["method"] == "mumomaml":
            emb = learner.encoder(sx[None], sy[None])
            film = [(g[0], None if b is None else b[0]) for g, b in learner.modulation(emb)]
        for _ in range(steps):
            loss = loss_fn(fwd(names, params, sx, film), sy)
            grads = torch.autograd.grad(loss, params, create_graph=not cfg["first_order"])
            new = []
            for n, p, g in zip(names, params, grads):
                if clamp is not None:
                    g = g.clamp(-clamp, clamp)
                new.append(p - learner._lr(n) * g)
            params = new
        total = total + loss_fn(fwd(names, params, qx, film), qy)
    return total / batch.num_tasks
