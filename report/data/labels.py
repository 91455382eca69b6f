"""Label maps: a data set's own labels -> the model's classes.

Every source has a default map; `--label-map FILE.yaml` overrides entries of it. A source
label is looked up as a whole, then by its last part, then by ever shorter prefixes, so
hierarchical labels like Cohen's `Pneumonia/Viral/COVID-19` can be mapped at any level.
At each level of lookup the user's map wins, then a model class of the same name, then the
default map. Labels that reach no model class are skipped and counted, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml

from report.data.containment import file_refusal, printable
from report.errors import UserError

LabelMap = Mapping[str, str | None]


def load_label_map(path: str | Path) -> dict[str, str | None]:
    """Read `source label: model class` (or null to drop the label) from a YAML file."""
    path = Path(path).expanduser()
    refusal = file_refusal(path)  # not a FIFO, a device or a huge file read whole
    if refusal is not None:
        raise UserError(f"cannot read label map '{printable(str(path))}': {refusal}")
    try:
        content = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise UserError(f"cannot read label map '{path}': {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise UserError(f"label map '{printable(str(path))}' is not UTF-8 text (byte "
                        f"{error.start}); save it as UTF-8") from error
    except yaml.YAMLError as error:
        raise UserError(f"label map '{path}' is not valid YAML: {error}") from error
    if not isinstance(content, dict) or not content:
        raise UserError(
            f"label map '{path}' must be a YAML mapping of source label to model class "
            "(or null), e.g. `PNEUMONIA: OTHER_INFECTION`"
        )
    bad = [k for k, value in content.items() if value is not None and not isinstance(value, str)]
    if bad:
        raise UserError(f"label map '{path}': the value for {bad[0]!r} must be a class or null")
    return {str(key): value for key, value in content.items()}


class LabelResolver:
    """Source label -> index of a model class, or None when it maps to none."""

    def __init__(
        self, class_names: tuple[str, ...], defaults: LabelMap, user: LabelMap | None = None
    ):
        self.class_names = class_names
        self._classes = {name.lower(): i for i, name in enumerate(class_names)}
        self._defaults = {_key(k): v for k, v in defaults.items()}
        self._user = _normalised_user_map(user or {})
        self._user_keys_used: set[str] = set()
        self._check_user_targets()

    def __call__(self, label: str) -> int | None:
        levels = _levels(label)
        for level in levels:
            if level in self._user:
                self._user_keys_used.add(level)
                return self._class_index(self._user[level])
        for level in levels:
            if level in self._classes:
                return self._classes[level]
        for level in levels:
            if level in self._defaults:
                return self._class_index(self._defaults[level])
        return None

    def knows(self, label: str) -> bool:
        """Whether the user's map, the model's classes or the default map say anything about
        `label`: a label none of them knows is a typo, not one to drop (labels -> None)."""
        tables = (self._user, self._classes, self._defaults)
        return any(level in table for level in _levels(label) for table in tables)

    def unused_entries(self) -> list[str]:
        """Entries of the user's map that matched no label: likely typos, worth a note."""
        return sorted(set(self._user) - self._user_keys_used)

    def _class_index(self, target: str | None) -> int | None:
        return None if target is None else self._classes.get(target.strip().lower())

    def _check_user_targets(self) -> None:
        for label, target in self._user.items():
            if target is not None and target.strip().lower() not in self._classes:
                raise UserError(
                    f"label map sends '{label}' to '{target}', which is not one of the model's "
                    f"classes ({', '.join(self.class_names)}); use one of those or null"
                )


def _normalised_user_map(user: LabelMap) -> dict[str, str | None]:
    """The user's entries by normalised label; two entries that become the same label and
    send it to different classes are a UserError (one would silently win)."""
    normalised: dict[str, str | None] = {}
    spelled: dict[str, object] = {}
    for label, target in user.items():
        key = _key(label)
        if key in normalised and _target(normalised[key]) != _target(target):
            raise UserError(
                f"label map has '{spelled[key]}' and '{label}', which are the same label "
                f"(case and spaces around '/' do not count), sending it to "
                f"'{normalised[key]}' and '{target}'; keep one"
            )
        normalised[key], spelled[key] = target, label
    return normalised


def _target(target: str | None) -> str | None:
    return None if target is None else target.strip().lower()


def _key(label: object) -> str:
    """Case and the spaces around '/' do not matter: `A / B` is `a/b`."""
    return "/".join(part.strip() for part in str(label).strip().lower().split("/"))


def _levels(label: str) -> list[str]:
    """`a/b/c` -> [a/b/c, c, a/b, a]: the whole label, its leaf, then its ancestors."""
    parts = _key(label).split("/")
    levels = ["/".join(parts), parts[-1]]
    levels += ["/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]
    return list(dict.fromkeys(levels))


def unmapped_reason(label: str) -> str:
    return f"label '{label}' maps to no model class"


def unused_note(resolver: LabelResolver) -> list[str]:
    return unused_entries_note(resolver.unused_entries())


def unused_entries_note(unused: list[str]) -> list[str]:
    if not unused:
        return []
    return [f"label map entries that matched no label: {', '.join(unused)}"]
