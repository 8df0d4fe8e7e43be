"""Make RecBole 1.2.1 usable on numpy 2.4, pandas 2.3 and torch 2.13 (every workaround lives here).

Import this module before anything from ``recbole``; importing it applies the patches, and
:func:`apply` is idempotent. RecBole 1.2.1 (the latest) breaks on the current stack, so every
workaround sits in this one module, imported first (facts measured here, DESIGN.md section 4).
Points: 1 restore numpy 2's removed aliases (``np.float``, ...); 2 replace
``Config.compatibility_settings``; 3 ignore ``sys.argv`` in ``Config``; 4 restore
``CUDA_VISIBLE_DEVICES``; 5 never import ``quick_start`` (ray), no stub; 6 no RecBole checkpoints,
so no ``torch.load`` patch; 7 a copy-on-write-safe ``Dataset._fill_nan``; 8 a scoped filter for the
per-epoch ``GradScaler`` FutureWarning; 9 undo the anomaly mode ``sine.py`` switches on at import;
10 ``Interaction.sort`` without numpy's ``__array_wrap__`` warning. pandas 3 is pinned out, not patched.

Details (what each point fixes, and why): docs/protocol.md, "RecBole compatibility (recbole_compat.py)".
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Iterator

import numpy as np

# Alias -> the type numpy 1.x gave it (np.float was the builtin float, i.e. float64, and so on).
_NUMPY_ALIASES: dict[str, type] = {
    "float": np.float64,
    "int": np.int_,
    "object": np.object_,
    "str": np.str_,
    "complex": np.complex128,
    "unicode": np.str_,
    "bool": np.bool_,
    "long": np.int_,
}

_applied = False


def _numpy_has(name: str) -> bool:
    """True when numpy still provides ``name`` (numpy 2 raises AttributeError for removed aliases)."""
    import warnings

    with warnings.catch_warnings():
        # numpy 2 emits a FutureWarning on np.object / np.str lookups before raising.
        warnings.simplefilter("ignore", FutureWarning)
        try:
            getattr(np, name)
        except AttributeError:
            return False
    return True


def restore_numpy_aliases() -> list[str]:
    """Add the numpy 1.x aliases RecBole uses that this numpy lacks; returns the names added."""
    added = []
    for name, target in _NUMPY_ALIASES.items():
        if not _numpy_has(name):
            setattr(np, name, target)
            added.append(name)
    return added


def _compatibility_settings(self: Any) -> None:
    """Replacement for ``Config.compatibility_settings`` (see point 2 of the module docstring)."""
    restore_numpy_aliases()


def _load_cmd_line(self: Any) -> dict[str, Any]:
    """Replacement for ``Config._load_cmd_line``: never read ``sys.argv`` (point 3)."""
    return {}


def _wrap_init_device(original: Any) -> Any:
    """Run RecBole's device setup but keep the process-wide CUDA_VISIBLE_DEVICES unchanged (point 4)."""

    def _init_device(self: Any) -> None:
        before = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            original(self)
        finally:
            if before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = before

    _init_device.__wrapped__ = original  # type: ignore[attr-defined]
    return _init_device


def _fill_nan(self: Any) -> None:
    """Replacement for ``Dataset._fill_nan`` that assigns instead of filling in place (point 7).

    Same rules as RecBole: token fields get 0 (the ``[PAD]`` id), float fields their mean, and
    missing sequence entries an empty array.
    """
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field_name in feat:
            ftype = self.field2type[field_name]
            column = feat[field_name]
            if ftype == FeatureType.TOKEN:
                feat[field_name] = column.fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field_name] = column.fillna(value=column.mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field_name] = column.apply(
                    lambda x, dtype=dtype: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


@contextlib.contextmanager
def known_warnings_silenced() -> Iterator[None]:
    """Hide the per-epoch GradScaler deprecation warning (point 8) inside this block only.

    A scoped filter rather than a global one, so nobody else's warnings are affected.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", category=FutureWarning
        )
        yield


def _import_sequential_models_without_anomaly_mode() -> None:
    """Import RecBole's sequential models, undoing the global anomaly mode ``sine.py`` turns on (point 9)."""
    import sys

    import torch

    if "recbole.model.sequential_recommender.sine" in sys.modules:
        # Imported before this module: the switch is most likely RecBole's, not the caller's.
        torch.autograd.set_detect_anomaly(False)
        return
    enabled, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    try:
        import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py's side effect once)
    finally:
        torch.autograd.set_detect_anomaly(enabled, check_nan=check_nan)


def _interaction_sort(self: Any, by: str | list[str] | tuple[str, ...], ascending: Any = True) -> None:
    """Replacement for ``Interaction.sort`` that never passes a tensor to numpy (point 10).

    Same contract as RecBole's: sort in place by one or more fields (the first field is the primary
    key), each ascending or descending, stable, using the first column of multi-column fields.
    """
    import torch

    if not isinstance(by, (str, list, tuple)):
        raise TypeError(f"Wrong type of by [{by}].")
    keys = [by] if isinstance(by, str) else list(by)
    for key in keys:
        if key not in self.interaction:
            raise ValueError(f"[{key}] is not exist in interaction [{self}].")
    orders = [ascending] if isinstance(ascending, bool) else list(ascending)
    if not all(isinstance(order, bool) for order in orders):
        raise TypeError(f"Wrong type of ascending [{ascending}].")
    if len(orders) == 1:
        orders = orders * len(keys)
    if len(orders) != len(keys):
        raise ValueError(f"by [{by}] and ascending [{ascending}] should have same length.")
    # Least significant key first; each stable pass keeps the order of the previous ones on ties.
    for key, order in zip(keys[::-1], orders[::-1]):
        column = self.interaction[key]
        values = (column if column.dim() == 1 else column[..., 0]).detach().cpu().numpy()
        index = np.argsort(values, kind="stable")
        if not order:
            index = index[::-1].copy()
        self._reindex(torch.from_numpy(index))


def apply() -> None:
    """Apply every patch once; later calls do nothing."""
    global _applied
    if _applied:
        return
    restore_numpy_aliases()
    # Imported here, after the aliases exist, because the patches target these classes.
    from recbole.config.configurator import Config
    from recbole.data.dataset.dataset import Dataset
    from recbole.data.interaction import Interaction

    Config.compatibility_settings = _compatibility_settings  # points 1-2
    Config._load_cmd_line = _load_cmd_line  # point 3
    if not hasattr(Config._init_device, "__wrapped__"):
        Config._init_device = _wrap_init_device(Config._init_device)  # point 4
    Dataset._fill_nan = _fill_nan  # point 7
    Interaction.sort = _interaction_sort  # point 10
    _import_sequential_models_without_anomaly_mode()  # point 9
    _applied = True


def is_applied() -> bool:
    return _applied


apply()
