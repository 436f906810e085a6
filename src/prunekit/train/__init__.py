"""prunekit.train: one training loop (with callbacks, checkpoint/resume and DDP) reused by every method.

Public API::

    TrainConfig, parse_train_config                 # validated recipe
    build_optimizer, param_groups, build_scheduler, lr_factor_fn, total_steps, build_criterion
    fit(model, train_loader, cfg, ...) -> FitResult  # the loop
    evaluate(model, loader, device) -> {"top1", "top5", "loss", "n"}
    score_metrics(model, loader, device, eval_fn)    # evaluate, or the user's eval_fn score as "top1"
    Callback, TrainState                            # hooks for pruning methods
    init_from_env, is_main, cleanup, all_reduce_mean, ...  # torchrun helpers
"""

from prunekit.distributed import (  # the torchrun helpers live below train (cost uses them too)
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    all_reduce_sum,
    barrier,
    broadcast_module,
    broadcast_object,
    check_agreement,
    cleanup,
    get_rank,
    get_world_size,
    init_from_env,
    is_distributed,
    is_main,
)
from prunekit.train.loop import (
    CKPT_FORMAT,
    Callback,
    FitResult,
    TrainState,
    evaluate,
    fit,
    progress_enabled,
    score_metrics,
    user_score,
)
from prunekit.train.recipes import (
    SMOKE_DATA,
    SMOKE_EPOCHS,
    TrainConfig,
    build_criterion,
    build_optimizer,
    build_scheduler,
    lr_factor_fn,
    param_groups,
    parse_train_config,
    smoke_recipe,
    total_steps,
)

__all__ = [
    "SMOKE_DATA",
    "SMOKE_EPOCHS",
    "smoke_recipe",
    "CKPT_FORMAT",
    "Callback",
    "DistInfo",
    "FitResult",
    "TrainConfig",
    "TrainState",
    "all_gather_objects",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "check_agreement",
    "build_criterion",
    "build_optimizer",
    "build_scheduler",
    "cleanup",
    "evaluate",
    "score_metrics",
    "user_score",
    "fit",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_distributed",
    "is_main",
    "lr_factor_fn",
    "param_groups",
    "parse_train_config",
    "progress_enabled",
    "total_steps",
]
