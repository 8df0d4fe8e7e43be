"""The labels of a catalogue's categories: split, root labels (names of the whole dataset), shown labels.

Used by the tools' aggregates (:mod:`recrepro.tools.toolkit`), the user profiles and the agent prompt,
so that all three show an item with the same labels.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from recrepro.data.schema import CATEGORY_SEPARATOR

ROOT_LABEL_SHARE = 0.5  # [G] a label on more than this share of the catalogue names the dataset, not the item


def split_labels(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str) or not value:
        return ()
    return tuple(part.strip() for part in value.split(CATEGORY_SEPARATOR) if part.strip())


def catalogue_labels(categories: Iterable[Any], root_label_share: float = ROOT_LABEL_SHARE
                     ) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], frozenset[str]]:
    """(all labels, labels used in aggregates, root labels) per catalogue row.

    A label carried by more than ``root_label_share`` of the catalogue names the dataset ("Office
    Products"), not the item, so aggregates leave it out; of the rest the three most specific (the
    schema orders labels general to specific) are kept, as the agent prompt shows them.
    """
    labels = [split_labels(c) for c in categories]
    share = Counter(label for item_labels in labels for label in set(item_labels))
    limit = root_label_share * len(labels)
    root = frozenset(label for label, n in share.items() if n > limit)
    shown = [tuple(label for label in item_labels if label not in root)[-3:] for item_labels in labels]
    return labels, shown, root
