"""Which of Lightning's per-step hook dispatches a training step can skip: those nobody listens to.

``manual_backward`` and ``LightningOptimizer.step`` route through the strategy and the precision plugin, which
call ``on_before_backward``/``on_after_backward``/``on_before_optimizer_step`` on every callback and on the
module, each inside a profiler record. When no callback and no module overrides those hooks, nothing records
the profile, and the strategy and precision methods on the way are Lightning's defaults, the dispatch does
nothing but cost about 0.1 ms a step (a third of the framework's cost on a small model). ``HFModule`` then runs
the same calls directly: the strategy's own ``pre_backward``/``post_backward`` (DDP's backward preparation stays),
``loss.backward``, its own ``on_before_optimizer_step`` (clipping, transformers' ``on_pre_optimizer_step``)
and ``optimizer.step()`` between Lightning's progress counters.

Any listener, a non-default strategy or precision method, or a real profiler keeps Lightning's full dispatch.
The decision is taken once per fit (``plan_step_dispatch``), from the classes involved.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning_utilities.core.overrides import is_overridden
from typing_extensions import override

__all__ = ["QuietProfiler", "StepDispatch", "plan_step_dispatch"]

BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")
OPTIMIZER_STEP_HOOKS = ("on_before_optimizer_step",)


class QuietProfiler(PassThroughProfiler):
    """Lightning's default profiler, which measures nothing, without a generator-based context around every hook
    (a few Python calls per hook, some twenty hooks per step). Pass ``profiler=`` to profile."""

    _nothing = contextlib.nullcontext()

    @override
    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._nothing


_QUIET_PROFILERS = (PassThroughProfiler, QuietProfiler)


@dataclasses.dataclass(frozen=True)
class StepDispatch:
    """How a training step reaches the backward and the optimizer step."""

    direct_backward: bool = False
    """Call the strategy's ``pre_backward``, ``loss.backward`` and ``post_backward`` without Lightning's hook dispatch."""
    direct_optimizer_step: bool = False
    """Call the module's ``on_before_optimizer_step``, then ``optimizer.step()``, without the closure and hook dispatch."""


LIGHTNING_DISPATCH = StepDispatch()
"""Lightning's full dispatch for both (the default, and whenever something listens)."""


# MixedPrecision methods that, without a scaler, only call Precision's.
_MIXED_WITHOUT_SCALER = frozenset({"pre_backward", "optimizer_step"})


def _default_precision(plugin: Any, names: tuple[str, ...]) -> bool:
    """``plugin``'s ``names`` are ``Precision``'s, or ``MixedPrecision``'s without a grad scaler (which defer to them)."""
    without_scaler = isinstance(plugin, MixedPrecision) and getattr(plugin, "scaler", None) is None
    return all(
        not is_overridden(name, plugin, Precision)
        or (without_scaler and name in _MIXED_WITHOUT_SCALER and not is_overridden(name, plugin, MixedPrecision))
        for name in names
    )


def _default_optimizer_step(strategy: Any) -> bool:
    if not is_overridden("optimizer_step", strategy, Strategy):
        return True
    # DDP's only adds model averaging (post-local SGD), off unless configured.
    return isinstance(strategy, DDPStrategy) and not is_overridden("optimizer_step", strategy, DDPStrategy) and (
        getattr(strategy, "_model_averager", None) is None
    )


def plan_step_dispatch(
    *,
    callbacks: list[Callback],
    module: pl.LightningModule,
    module_base: type,
    strategy: Strategy,
    precision: Any,
    profiler: Any,
) -> StepDispatch:
    """Decide, from the classes in play, which per-step dispatches a fit can skip.

    Args:
        callbacks: the trainer's callbacks (a hook overridden by any of them keeps the dispatch).
        module: the LightningModule being trained.
        module_base: the class whose hooks the direct calls stand for (``HFModule``: its own
            ``on_before_optimizer_step`` is called directly; a subclass overriding it keeps the dispatch).
        strategy: the trainer's strategy.
        precision: the trainer's precision plugin.
        profiler: the trainer's profiler (anything but a pass-through one records the hooks).
    """
    if type(profiler) not in _QUIET_PROFILERS:
        return LIGHTNING_DISPATCH

    def unheard(hooks: tuple[str, ...]) -> bool:
        return not any(is_overridden(hook, cb, Callback) for cb in callbacks for hook in hooks)

    direct_backward = (
        unheard(BACKWARD_HOOKS)
        and not any(is_overridden(hook, module, pl.LightningModule) for hook in BACKWARD_HOOKS)
        and not is_overridden("backward", module, pl.LightningModule)
        and not is_overridden("manual_backward", module, pl.LightningModule)
        and not is_overridden("backward", strategy, Strategy)
        and _default_precision(precision, ("pre_backward", "backward", "post_backward"))
    )
    direct_optimizer_step = (
        unheard(OPTIMIZER_STEP_HOOKS)
        and not is_overridden("on_before_optimizer_step", module, module_base)
        and _default_optimizer_step(strategy)
        and _default_precision(precision, ("optimizer_step", "_wrap_closure", "_after_closure", "_clip_gradients"))
    )
    return StepDispatch(direct_backward=direct_backward, direct_optimizer_step=direct_optimizer_step)
