"""Tests describe a stage run as one flat table of options; these split it into the typed
settings objects the entry points take."""
from dataclasses import fields


def pop_settings(cls, options: dict):
    """An instance of the settings dataclass `cls` from the keys of `options` it knows (removed
    from `options`); the rest stays for the entry point's own keyword arguments."""
    names = {f.name for f in fields(cls)}
    return cls(**{name: options.pop(name) for name in list(options) if name in names})


def with_settings(entry, *settings_classes):
    """`entry` called with one flat table of keywords: `entry(*args, *settings, **rest)`, one
    settings object per class, in order."""
    def call(*args, **options):
        return entry(*args, *(pop_settings(cls, options) for cls in settings_classes), **options)
    return call
